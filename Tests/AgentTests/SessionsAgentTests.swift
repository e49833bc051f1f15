import Foundation
import Testing
import TestSupport

/// `display=auto` through the whole pipeline: three users (useradd), each with an Xvfb of their
/// own and its cookie in their home, one starting only after the agent did. Every session is
/// recorded, each capture names the right user and display (the collector's rows, from the
/// sealed header), a session that ends is let go, and decrypt puts each user's captures in a
/// folder named after the user, with that user's screen in it.
@Suite(.serialized) struct SessionsAgentTests {
    @Test func everySessionIsRecordedUnderItsUser() throws {
        guard getuid() == 0 else { throw TestSupportError("needs root (useradd)") }
        let rig = try AgentRig(name: "sessions")
        let users = try ["a", "b", "c"].map { try TestUser("s\($0)") }
        var servers: [Xvfb] = []
        defer {
            rig.agent = nil
            servers.forEach { $0.stop() }
            users.forEach { $0.remove() }
        }
        let colors = ["#aa0000", "#00aa00", "#0000aa"]
        func startServer(_ i: Int) throws {
            let x = try Xvfb(width: 160, height: 120, depth: 24, user: users[i])
            try x.run(["xsetroot", "-solid", colors[i]])
            servers.append(x)
        }
        try startServer(0)
        try startServer(1)
        rig.displaySetting = "auto"
        try rig.writeConfig(encryption: true)
        try rig.startCollector()
        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        // --check-config names each session with its user and the cookie found in their home,
        // and reads it through that cookie.
        // A root-owned server nobody uses (a login screen) is listed as not recorded, with the
        // daemon's reason.
        let loginScreen = try Xvfb(width: 64, height: 64, depth: 24)
        defer { loginScreen.stop() }
        let check = try runCommand([try builtProduct("custos-agent"), "--config", rig.configPath, "--check-config"]).stdoutString
        #expect(check.contains("ok   display: \(loginScreen.name): not recorded: its socket belongs to root and no process uses it (a login screen)"),
                "\(check)")
        for i in 0..<2 {
            let want = "ok   display: \(servers[i].name): 1 monitor(s) readable (user \(users[i].name), socket, cookie \(users[i].home)/.Xauthority (~/.Xauthority of user \(users[i].name)))"
            #expect(check.contains(want), "\(check)")
        }
        try rig.startAgent()
        func usersOf(_ display: String) throws -> [String] {
            try rig.sql("select distinct user_name from captures where display = '\(display)'").split(separator: "\n").map(String.init)
        }
        #expect(try waitUntil(timeout: 30) { try usersOf(servers[0].name) == [users[0].name] && (try usersOf(servers[1].name)) == [users[1].name] },
                "agent log: \(rig.agent!.log.suffix(2500))")
        // A session that starts later is found without a restart (sessions are looked up every 5 s).
        try startServer(2)
        #expect(try waitUntil(timeout: 30) { try usersOf(servers[2].name) == [users[2].name] }, "agent log: \(rig.agent!.log.suffix(2500))")
        // Keys and activity carry the session too.
        try servers[1].run(["xdotool", "type", "--delay", "20", "hello"])
        #expect(try waitUntil(timeout: 20) {
            try rig.count("select count(*) from captures where kind='keystrokes' and user_name='\(users[1].name)' and display='\(servers[1].name)'") > 0
        })
        // A session that ends is let go.
        servers[0].stop()
        #expect(waitUntil(timeout: 20) { rig.agent!.log.contains("session ended") }, "agent log: \(rig.agent!.log.suffix(2500))")
        rig.agent!.send(SIGTERM)
        #expect(rig.agent!.waitExit(timeout: 15) == 0)
        // No capture without a session, none of another user under these displays (other tests'
        // servers may be recorded too: they are other displays).
        for (i, x) in servers.enumerated() { #expect(try usersOf(x.name) == [users[i].name]) }
        #expect(try rig.count("select count(*) from captures where user_name is null or display is null") == 0)
        let listed = try runChecked([try builtProduct("custos"), "captures", "list", "--db", rig.db, "--user", users[2].name])
        #expect(listed.contains(users[2].name) && !listed.contains(users[1].name), "\(listed)")

        let (status, out) = try rig.decrypt(key: rig.e2e, name: "decrypted")
        #expect(status == 0)
        for (i, user) in users.enumerated() {
            let videos = rig.files(in: out + "/\(rig.agentID)/users/\(user.name)", suffix: ".webm")
            try #require(!videos.isEmpty, "no video in \(out)/\(rig.agentID)/users/\(user.name)")
            // The user's folder holds their own screen: the last picture is their root colour (the
            // first may precede xsetroot: a session is recorded as soon as it is found).
            let rgb = [UInt8](try rig.rgbOfLastPicture(videos.sorted().last!, pictureBytes: 160 * 120 * 3))
            let want = [UInt8](arrayLiteral: colors[i] == "#aa0000" ? 0xaa : 0, colors[i] == "#00aa00" ? 0xaa : 0,
                                             colors[i] == "#0000aa" ? 0xaa : 0)
            let off = rgb.indices.first { abs(Int(rgb[$0]) - Int(want[$0 % 3])) > 12 }
            #expect(rgb.count == 160 * 120 * 3 && off == nil, "\(user.name): byte \(off ?? -1) of \(rgb.count)")
        }
        let keys = try String(contentsOfFile: out + "/keystrokes.jsonl", encoding: .utf8)
        #expect(keys.contains("\"user\":\"\(users[1].name)\"") && keys.contains("\"text\":\"hello\""), "\(keys)")
    }
}
