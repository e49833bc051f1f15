import Testing
@Test func spoolPlaceholder() { #expect(1 + 1 == 2) }
