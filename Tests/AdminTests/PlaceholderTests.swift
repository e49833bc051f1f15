import Testing
@Test func adminPlaceholder() { #expect(1 + 1 == 2) }
