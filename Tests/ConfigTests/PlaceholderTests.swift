import Testing
@Test func configPlaceholder() { #expect(1 + 1 == 2) }
