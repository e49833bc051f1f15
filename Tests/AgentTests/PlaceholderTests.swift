import Testing
@Test func agentPlaceholder() { #expect(1 + 1 == 2) }
