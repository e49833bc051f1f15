import Foundation
import Testing
import TestSupport

/// Records spooled under one `agent-id` after the administrator changed `agent-id=`: the
/// collector refuses them `agent-mismatch` for good. The agent says so once (naming both ids and
/// what to do), `status` and `--check-config` show them, and setting the old id back drains them.
@Suite(.serialized) struct StrandedRecordsTests {
    /// The rig's config with another agent id and token.
    func writeConfig(_ rig: AgentRig, agentID: String, token: String) throws {
        var text = try String(contentsOfFile: rig.configPath, encoding: .utf8)
        text = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            if line.hasPrefix("agent-id=") { return "agent-id=\(agentID)" }
            if line.hasPrefix("agent-token=") { return "agent-token=\(token)" }
            return String(line)
        }.joined(separator: "\n")
        try text.write(toFile: rig.configPath, atomically: true, encoding: .utf8)
    }

    func stopAgent(_ rig: AgentRig) {
        rig.agent!.send(SIGTERM)
        let status = rig.agent!.waitExit(timeout: 10)
        #expect(status == 0, "agent exit: \(String(describing: status)); log: \(rig.agent!.log.suffix(1500))")
    }

    func status(_ rig: AgentRig) throws -> String {
        try runChecked([try builtProduct("custos-agent"), "status", "--config", rig.configPath])
    }

    func checkConfig(_ rig: AgentRig) throws -> String {
        String(decoding: try runCommand([try builtProduct("custos-agent"), "--config", rig.configPath, "--check-config"]).stdout,
               as: UTF8.self)
    }

    @Test func recordsSealedUnderAnOldAgentIDAreReportedOnceShownAndDrainWhenTheIDIsSetBack() throws {
        let rig = try AgentRig(name: "stranded")
        let old = "old-pc"
        let oldToken = try runChecked([try builtProduct("custos"), "agents", "add", "--db", rig.db, "--id", old])
            .trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "\n").last ?? ""

        // 1. Agent "old-pc", collector down: captures spool under "old-pc".
        try writeConfig(rig, agentID: old, token: oldToken)
        try rig.startAgent()
        let spooled = waitUntil(timeout: 20) {
            // Exits 1 until the agent has made the spool.
            guard let s = try? status(rig) else { return false }
            return s.contains("spool by kind:") && !s.contains("spooled:          0 records")
        }
        #expect(spooled, "status: \((try? status(rig)) ?? "")")
        stopAgent(rig)

        // 2. The administrator renames the agent to the rig's id; the collector is up with the KEK.
        try rig.startCollector()
        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        try writeConfig(rig, agentID: rig.agentID, token: rig.token)
        try rig.startAgent()
        let refusedOnce = waitUntil(timeout: 30) { rig.agent!.log.contains("agent-mismatch") }
        #expect(refusedOnce, "agent log: \(rig.agent!.log.suffix(2000))")
        // New captures under the new id still upload.
        let uploads = try waitUntil(timeout: 30) {
            try rig.count("select count(*) from captures where agent_id='\(rig.agentID)'") > 0
        }
        #expect(uploads)
        stopAgent(rig)
        #expect(try rig.count("select count(*) from captures where agent_id='\(old)'") == 0)

        let log = rig.agent!.log
        // Exactly one loud line (repeats are debug), naming both ids and what to do.
        let loud = log.split(separator: "\n").filter { $0.contains("agent-mismatch") && !$0.contains("debug:") }
        #expect(loud.count == 1, "\(loud)")
        let line = String(loud.first ?? "")
        #expect(line.contains("error:"), "\(line)")
        #expect(line.contains("sealed under agent-id '\(old)'"), "\(line)")
        #expect(line.contains("agent-id is now '\(rig.agentID)'"), "\(line)")
        #expect(line.contains("set agent-id=\(old) again"), "\(line)")

        // status shows them (from the spool's state table), --check-config warns.
        let shown = try status(rig)
        let strandedLine = shown.split(separator: "\n").first { $0.hasPrefix("stranded:") }.map(String.init) ?? ""
        #expect(strandedLine.contains("records ("), "\(shown)")
        #expect(strandedLine.contains("sealed under agent-id '\(old)' (the collector refuses them for '\(rig.agentID)')"), "\(shown)")
        #expect(!strandedLine.contains("stranded:         0"), "\(shown)")
        let checked = try checkConfig(rig)
        #expect(checked.contains("warn spool: "), "\(checked)")
        #expect(checked.contains("sealed under agent-id '\(old)'"), "\(checked)")

        // 3. Setting the old id back (with its token) drains them now, not an hour later.
        try writeConfig(rig, agentID: old, token: oldToken)
        try rig.startAgent()
        let drained = try waitUntil(timeout: 30) {
            try rig.count("select count(*) from captures where agent_id='\(old)'") > 0
                && !(try checkConfig(rig)).contains("sealed under agent-id '\(old)'")
        }
        #expect(drained, "agent log: \(rig.agent!.log.suffix(2000))")
        stopAgent(rig)
        #expect(!(try status(rig)).contains("sealed under agent-id '\(old)'"))
    }
}
