import Testing
@testable import Envelope
@Test func placeholder() { #expect(1 + 1 == 2) }
