import Foundation
import Testing
import TestSupport

/// Activity through the whole pipeline: focus changes and an idle stretch on a real Xvfb are
/// sealed as kind `activity`, stored by the collector, listed by kind and decrypted into the
/// timeline with the right titles.
@Suite(.serialized) struct ActivityAgentTests {
    @Test func focusChangesAndIdleBecomeATimeline() throws {
        try requireTool("xmessage")
        let rig = try AgentRig(name: "activity")
        rig.extraConfig = "activity-interval-seconds=10\nidle-threshold-seconds=1\n"
        try rig.writeConfig(encryption: true)
        let windows = try rig.xvfb.openMessageWindows([("alpha", "Alpha Window"), ("beta", "Beta Window")])
        defer { windows.close() }
        let (alpha, beta) = (windows.ids[0], windows.ids[1])
        try rig.startCollector()
        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        try rig.xvfb.run(["xdotool", "windowfocus", "--sync", alpha])
        try rig.startAgent()
        #expect(try waitUntil(timeout: 30) { try rig.count("select count(*) from captures where kind='screen'") > 0 },
                "agent log: \(rig.agent!.log.suffix(2000))")
        try rig.xvfb.run(["xdotool", "key", "a"])
        usleep(1_000_000)
        try rig.xvfb.run(["xdotool", "windowfocus", "--sync", beta])
        try rig.xvfb.run(["xdotool", "key", "b"])
        usleep(2_500_000)  // idle: no input for more than idle-threshold-seconds=1
        try rig.xvfb.run(["xdotool", "key", "c"])
        usleep(700_000)
        rig.agent!.send(SIGTERM)
        #expect(rig.agent!.waitExit(timeout: 10) == 0)
        // Drain what the stop's final flush left (an agent that captures nothing).
        rig.extraConfig = "activity-interval-seconds=0\n"
        try rig.writeConfig(encryption: true, screenIntervalMs: 0, keystrokeIdleMs: 0)
        try rig.startAgent()
        let drained = try waitUntil(timeout: 20) {
            let s = try runChecked([try builtProduct("custos-agent"), "status", "--config", rig.configPath])
            let stored = try rig.count("select count(*) from captures where kind='activity'")
            return EndToEndTests.spoolEmpty(s) && stored > 0
        }
        #expect(drained, "agent log: \(rig.agent!.log.suffix(1500))")
        rig.agent!.send(SIGTERM)
        _ = rig.agent!.waitExit(timeout: 10)

        let listed = try runChecked([try builtProduct("custos"), "captures", "list", "--db", rig.db, "--kind", "activity"])
        #expect(listed.contains("activity") && listed.contains("<Encrypted>"), "\(listed)")
        let (status, out) = try rig.decrypt(key: rig.e2e, name: "decrypted")
        #expect(status == 0)
        let rows = try String(contentsOfFile: out + "/activity.csv", encoding: .utf8).components(separatedBy: "\r\n")
            .dropFirst().filter { !$0.isEmpty }.map { Array($0.components(separatedBy: ",").dropFirst(2)) }  // user, display follow the agent
        let focus = rows.filter { $0[1] == "focus" }
        #expect(focus.map { $0[6] } == ["Alpha Window", "Beta Window"], "\(rows)")
        #expect(focus.map { $0[5] } == ["alpha.Xmessage", "beta.Xmessage"])
        #expect(focus.allSatisfy { (Int($0[4]) ?? 0) > 0 })
        // The 2.5 s without input is one idle period (the user may also have been idle when recording began).
        let idle = rows.filter { $0[1] == "idle" }
        #expect(idle.filter { (Int($0[4]) ?? 0) >= 2000 }.count == 1, "\(rows)")
        #expect(rows.filter { $0[1] == "active" }.count >= 2, "\(rows)")
        // Time order: the focus on beta starts where alpha's ends.
        #expect(focus.count == 2 && focus[0][3] == focus[1][2], "\(focus)")
    }
}
