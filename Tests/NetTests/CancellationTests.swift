import CustosBase
import Foundation
import Testing
import TestSupport
import Transport

/// Every wait in the transport ends at once when its task is cancelled (issue 12: a hung
/// upload outlived the service group's cancellation limit and the agent crashed with SIGILL).
@Suite struct CancellationTests {
    /// A port that accepts TCP and never answers the TLS handshake: the first request waits in
    /// the handshake, the second for its turn. Cancelling each ends it within a second with
    /// `.cancelled`, long before the 10 s connect limit.
    @Test func handshakeAndTurnWaitsAreCancellable() async throws {
        let silent = try LoopbackListener()
        defer { silent.close() }
        let client = try CollectorClient(
            configuration: try testTransport(serverURL: "https://127.0.0.1:\(silent.port)", agentID: "a", agentToken: "t",
                                             pins: ["sha256/" + Data(count: 32).base64EncodedString()], caFile: nil),
            logger: LogCapture().logger("t"))
        let first = Task { () async -> TransportError? in
            do throws(TransportError) { _ = try await client.upload(Data("x".utf8)); return nil } catch { return error }
        }
        try await Task.sleep(for: .milliseconds(300))
        let second = Task { () async -> TransportError? in
            do throws(TransportError) { _ = try await client.upload(Data("y".utf8)); return nil } catch { return error }
        }
        try await Task.sleep(for: .milliseconds(300))
        let clock = ContinuousClock()
        var start = clock.now
        second.cancel()
        let secondError = await second.value
        #expect(clock.now - start < .seconds(1), "the turn wait took \(clock.now - start) to cancel")
        #expect(secondError?.code == .cancelled, "\(String(describing: secondError))")
        start = clock.now
        first.cancel()
        let firstError = await first.value
        #expect(clock.now - start < .seconds(1), "the handshake wait took \(clock.now - start) to cancel")
        #expect(firstError?.code == .cancelled, "\(String(describing: firstError))")
        await client.close()
    }
}
