import Foundation
import Testing
import TestSupport

/// `--check-config` connects to the collector as the daemon does (TCP, TLS handshake, pin
/// check; no request) and reports what happened (issue 12: the packaged agent could not connect
/// and nothing before starting the service said so).
@Suite(.serialized) struct CheckConfigConnectTests {
    /// Runs `custos-agent --check-config` off the concurrency pool (the collector runs in this process).
    func checkConfig(serverURL: String, pin: String, dir: TempDir) async throws -> (stdout: String, seconds: Double) {
        let r = try await checkConfig(serverURLs: [serverURL], pin: pin, dir: dir)
        return (r.stdout, r.seconds)
    }

    func checkConfig(serverURLs: [String], pin: String, dir: TempDir) async throws -> (stdout: String, seconds: Double, status: Int32) {
        let kek = try makeTestKEK(in: dir.path, name: "kek-\(UUID().uuidString.prefix(6))")
        let config = dir.file("c.cfg")
        try """
            server-kek-file=\(kek.publicKey)
            agent-id=pc-1
            agent-token=t0ken
            \(serverURLs.map { "server-url=\($0)" }.joined(separator: "\n"))
            server-pin=\(pin)
            display=:9999
            xauthority=/dev/null
            spool-dir=\(dir.file("spool"))

            """.write(toFile: config, atomically: true, encoding: .utf8)
        let agent = try builtProduct("custos-agent")
        let start = Date()
        let r = try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async { c.resume(with: Result { try runCommand([agent, "--config", config, "--check-config"], timeout: 60) }) }
        }
        return (r.stdoutString, Date().timeIntervalSince(start), r.status)
    }

    func serverLine(_ out: String) -> String {
        out.split(separator: "\n").first { $0.contains(" server: ") }.map(String.init) ?? "(no server line in: \(out))"
    }

    @Test func rightPinPassesWrongPinNamesThePresentedOne() async throws {
        let dir = try TempDir("custos-check-connect")
        defer { dir.remove() }
        let collector = try await TestCollector.start(in: dir.path)
        let ok = serverLine(try await checkConfig(serverURL: collector.url, pin: try collector.pin, dir: dir).stdout)
        #expect(ok.hasPrefix("ok   server: \(collector.url): TLS handshake and pin check passed"), "\(ok)")

        let wrong = serverLine(try await checkConfig(serverURL: collector.url, pin: try collector.pki.pin("other"), dir: dir).stdout)
        #expect(wrong.hasPrefix("FAIL server: \(collector.url): certificate refused"), "\(wrong)")
        #expect(wrong.contains(try collector.pin), "names the presented pin: \(wrong)")
        await collector.stop()
    }

    /// Several `server-url`s: each is probed and has its line; one that works is enough (the agent
    /// fails over), so the others are warnings; none working is a failure.
    @Test func everyServerURLIsProbedOneWorkingIsEnough() async throws {
        let dir = try TempDir("custos-check-connect")
        defer { dir.remove() }
        let collector = try await TestCollector.start(in: dir.path)
        let dead = "https://127.0.0.1:\(try freeLocalPort())"
        let both = try await checkConfig(serverURLs: [dead, collector.url], pin: try collector.pin, dir: dir)
        let lines = both.stdout.split(separator: "\n").filter { $0.contains(" server: ") }.map(String.init)
        #expect(lines.count == 2, "\(both.stdout)")
        #expect(lines.first?.hasPrefix("warn server: \(dead): cannot connect: Connection refused") == true, "\(lines)")
        #expect(lines.first?.hasSuffix("(uploads go to another server-url meanwhile)") == true, "\(lines)")
        #expect(lines.last?.hasPrefix("ok   server: \(collector.url): TLS handshake and pin check passed") == true, "\(lines)")
        await collector.stop()
        let none = try await checkConfig(serverURLs: [dead, collector.url], pin: try collector.pin, dir: dir)
        #expect(none.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL server: ") }.count == 2, "\(none.stdout)")
        #expect(none.status != 0)
    }

    @Test func nothingListeningAndNoHandshakeFail() async throws {
        let dir = try TempDir("custos-check-connect")
        defer { dir.remove() }
        let pin = "sha256/" + Data(count: 32).base64EncodedString()
        let port = try freeLocalPort()
        let refused = serverLine(try await checkConfig(serverURL: "https://127.0.0.1:\(port)", pin: pin, dir: dir).stdout)
        #expect(refused.hasPrefix("FAIL server: https://127.0.0.1:\(port): cannot connect: Connection refused"), "\(refused)")

        // Accepts TCP, never answers the handshake: FAIL after the 5 s limit, not the daemon's 10 s.
        let silent = try LoopbackListener()
        defer { silent.close() }
        let (out, seconds) = try await checkConfig(serverURL: "https://127.0.0.1:\(silent.port)", pin: pin, dir: dir)
        let hung = serverLine(out)
        #expect(hung.hasPrefix("FAIL server: https://127.0.0.1:\(silent.port): no TLS handshake within 5.0 s"), "\(hung)")
        #expect(seconds < 30, "took \(seconds) s")
    }
}
