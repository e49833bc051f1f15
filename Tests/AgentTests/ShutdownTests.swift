import Foundation
import Testing
import TestSupport

/// SIGTERM stops the agent cleanly within its graceful period whatever the network does
/// (issue 12: SIGTERM during a hung upload crashed it with SIGILL, exit 132, about 5 s later,
/// because swift-service-lifecycle's cancellation took longer than allowed).
@Suite(.serialized) struct ShutdownTests {
    /// The collector is stopped (SIGSTOP) while the agent uploads: the request hangs. SIGTERM
    /// ends the agent with status 0 within 3 s; every record not acknowledged is still spooled
    /// and arrives once the collector runs again.
    @Test func sigtermDuringAHungUploadExitsCleanly() throws {
        let rig = try AgentRig(name: "hung-upload")
        try rig.startCollector()
        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        try rig.startAgent()
        #expect(try waitUntil(timeout: 30) { try rig.count("select count(*) from captures") > 0 },
                "agent log: \(rig.agent!.log.suffix(1500))")
        let collector = try #require(rig.collector)
        collector.send(SIGSTOP)
        defer { collector.send(SIGCONT) }
        // New frames are sealed and their upload hangs on the stopped collector.
        for color in ["#aa0000", "#00aa00", "#0000aa", "#aaaa00", "#00aaaa"] {
            try rig.xvfb.run(["xsetroot", "-solid", color])
            usleep(400_000)
        }
        Self.expectCleanStop(rig.agent!)
        let held = try runChecked([try builtProduct("custos-agent"), "status", "--config", rig.configPath])
        #expect(!EndToEndTests.spoolEmpty(held), "the unacknowledged frames are still spooled: \(held)")

        // Once the collector runs again, everything arrives: per DEK, sequences 0..<count, no gaps.
        collector.send(SIGCONT)
        // (Capture stays on, slowly: with nothing to capture the capture service ends, and the group with it.)
        try rig.writeConfig(encryption: true, screenIntervalMs: 86_400_000, keystrokeIdleMs: 0)
        try rig.startAgent()
        let drained = try waitUntil(timeout: 30) {
            EndToEndTests.spoolEmpty(try runChecked([try builtProduct("custos-agent"), "status", "--config", rig.configPath]))
        }
        rig.agent!.send(SIGTERM)
        #expect(rig.agent!.waitExit(timeout: 10) == 0)
        #expect(drained, "log: \(rig.agent!.log.suffix(1500))")
        let gaps = try rig.sql("select count(*) from (select dek_id from captures group by dek_id having max(sequence) + 1 != count(*))")
        let perDEK = try rig.sql("select dek_id, count(*), max(sequence) from captures group by dek_id")
        #expect(gaps == "0", "per DEK (id, count, max sequence): \(perDEK)")
    }

    /// The collector's port accepts TCP but never answers the TLS handshake: SIGTERM while the
    /// agent waits for it ends the agent with status 0 within 3 s.
    @Test func sigtermDuringAHungConnectExitsCleanly() throws {
        let rig = try AgentRig(name: "hung-connect")
        let silent = try LoopbackListener()  // listens, never accepts, never answers
        defer { silent.close() }
        let text = try String(contentsOfFile: rig.configPath, encoding: .utf8)
            .replacingOccurrences(of: "https://localhost:\(rig.port)", with: "https://localhost:\(silent.port)")
        try text.write(toFile: rig.configPath, atomically: true, encoding: .utf8)
        try rig.startAgent()
        // Frames are sealed, so the uploader connects and waits for the handshake (10 s limit).
        #expect(waitUntil(timeout: 20) {
            let status = try? runChecked([try builtProduct("custos-agent"), "status", "--config", rig.configPath])
            return status.map { !EndToEndTests.spoolEmpty($0) } ?? false
        }, "log: \(rig.agent!.log.suffix(1500))")
        usleep(1_000_000)
        Self.expectCleanStop(rig.agent!)
    }

    /// SIGTERM ends `agent` with status 0 within 4.5 s (its own budget is 1.8 s graceful + 0.5 s
    /// cancellation; slack for a loaded machine), with no cancellation overrun (which
    /// swift-service-lifecycle turns into a SIGILL crash).
    static func expectCleanStop(_ agent: BackgroundProcess) {
        let start = Date()
        agent.send(SIGTERM)
        let status = agent.waitExit(timeout: 10)
        let took = Date().timeIntervalSince(start)
        #expect(status == 0, "exit \(String(describing: status)) after \(took) s; log: \(agent.log.suffix(2500))")
        #expect(took < 4.5, "SIGTERM took \(took) s")
        #expect(!agent.log.contains("Cancellation took longer"))
    }
}
