import Testing
@Test func netPlaceholder() { #expect(1 + 1 == 2) }
