import Testing
@Test func capturePlaceholder() { #expect(1 + 1 == 2) }
