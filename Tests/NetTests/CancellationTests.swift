import CustosBase
import Foundation
import Testing
import TestSupport
import Transport

/// Every wait in the transport ends at once when its task is cancelled (issue 12: a hung
/// upload outlived the service group's cancellation limit and the agent crashed with SIGILL).
@Suite struct CancellationTests {
    /// A port that accepts TCP and never answers the TLS handshake: the first request waits in
    /// the handshake, the second for its turn. Cancelling each ends it with `.cancelled` well
    /// before the (here 60 s) connect limit: within 30 s, since a full test run on 2 cores can
    /// starve the concurrency pool for many seconds (13.8 s seen); without the fix each wait
    /// lasts the whole 60 s.
    @Test func handshakeAndTurnWaitsAreCancellable() async throws {
        // The suite's shared certificates are made by blocking openssl runs that can hold every
        // thread of the concurrency pool for seconds: let that happen before anything is timed.
        _ = try sharedMaterial.get()
        let silent = try LoopbackListener()
        defer { silent.close() }
        var transport = try testTransport(serverURL: "https://127.0.0.1:\(silent.port)", agentID: "a", agentToken: "t",
                                          pins: ["sha256/" + Data(count: 32).base64EncodedString()], caFile: nil)
        transport.connectTimeout = .seconds(60)
        let client = try CollectorClient(configuration: transport, logger: LogCapture().logger("t"))
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
        #expect(clock.now - start < .seconds(30), "the turn wait took \(clock.now - start) to cancel")
        #expect(secondError?.code == .cancelled, "\(String(describing: secondError))")
        start = clock.now
        first.cancel()
        let firstError = await first.value
        #expect(clock.now - start < .seconds(30), "the handshake wait took \(clock.now - start) to cancel")
        #expect(firstError?.code == .cancelled, "\(String(describing: firstError))")
        await client.close()
    }
}
