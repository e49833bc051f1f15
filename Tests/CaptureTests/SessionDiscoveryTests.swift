import CaptureCore
import CaptureX11
import Foundation
import TestSupport
import Testing

/// `X11SessionDiscovery` on real Xvfb servers run by real users (useradd), with their cookies
/// in their homes: from the sockets, from logind's session files (real format, a directory of
/// the test's own: logind does not run here), from a fixed list.
@Suite("Session discovery", .serialized)
struct SessionDiscoveryTests {
    func requireRoot() throws {
        guard getuid() == 0 else {
            if isCI { throw TestSupportError("session tests need root (useradd)") }
            throw TestSupportError("skipped: session tests need root (useradd)")
        }
    }

    @Test("display=auto from the sockets: each user's display with the user and the cookie in their home; the sessions connect")
    func sockets() throws {
        try requireRoot()
        let users = try ["a", "b"].map { try TestUser("d\($0)") }
        var servers = try users.map { try Xvfb(user: $0) }
        defer { servers.forEach { $0.stop() }; users.forEach { $0.remove() } }
        let emptyLogind = try TempDir("no-logind")
        defer { emptyLogind.remove() }
        let discovery = X11SessionDiscovery(displays: nil, credentials: nil,
                                            paths: .init(logindSessions: emptyLogind.path), logger: testLogger("sessions"))
        let found = discovery.sessions()
        for (user, server) in zip(users, servers) {
            let session = try #require(found.first { $0.display == server.name }, "\(server.name) not found in \(found)")
            #expect(session.user == user.name && session.uid == user.uid && session.origin == .socket)
            #expect(session.credentials == user.home + "/.Xauthority")
            // The cookie found opens the display (the server refuses connections without it).
            let capturer = try ScreenCapturer(display: session.display, xauthority: session.credentials, encoding: .png(level: 1),
                                              logger: testLogger("t"))
            #expect(capturer.connectError == nil, "\(String(describing: capturer.connectError))")
            #expect(try capturer.captureAll().count == 1)
        }
        // A root-run server nobody else uses (a login screen, or another test's Xvfb) is not recorded.
        let rootServer = try Xvfb(width: 64, height: 64, depth: 24)
        defer { rootServer.stop() }
        #expect(!discovery.sessions().contains { $0.display == rootServer.name })
        // A server that ends is gone from the next answer (also when it was killed and left its
        // socket behind: its lock file names a pid that is gone).
        servers[0].stop()
        let after = discovery.sessions()
        #expect(!after.contains { $0.display == servers[0].name }, "\(after)")
        servers.removeFirst()
        // A fixed list names the display's user too, and uses xauthority= when given.
        let fixed = X11SessionDiscovery(displays: [servers[0].name, rootServer.name], credentials: nil,
                                        paths: .init(logindSessions: emptyLogind.path), logger: testLogger("sessions")).sessions()
        #expect(fixed.map(\.display) == [servers[0].name, rootServer.name])
        #expect(fixed[0].user == users[1].name && fixed[0].origin == .configured && fixed[0].credentials == users[1].home + "/.Xauthority")
        #expect(fixed[1].user == "root")
        let forced = X11SessionDiscovery(displays: [servers[0].name], credentials: "/dev/null",
                                         paths: .init(logindSessions: emptyLogind.path), logger: testLogger("sessions")).sessions()
        #expect(forced.first?.credentials == "/dev/null" && forced.first?.user == users[1].name)
    }

    @Test("logind: x11 sessions with their user and the leader's XAUTHORITY; greeter, closing and tty sessions are not recorded")
    func logind() throws {
        try requireRoot()
        let user = try TestUser("dl")
        let server = try Xvfb(user: user)
        let greeter = try Xvfb(width: 64, height: 64, depth: 24)
        defer { server.stop(); greeter.stop(); user.remove() }
        // The session leader: a process whose environment names a cookie file of its own.
        let dir = try TempDir("logind")
        defer { dir.remove() }
        let leaderCookie = dir.file("leader.auth")
        try FileManager.default.copyItem(atPath: user.home + "/.Xauthority", toPath: leaderCookie)
        let leader = Process()
        leader.executableURL = URL(fileURLWithPath: "/bin/sleep")
        leader.arguments = ["60"]
        leader.environment = ["XAUTHORITY": leaderCookie, "DISPLAY": server.name]
        try leader.run()
        // SIGKILL: a child of the test runner may start with SIGTERM blocked.
        defer { kill(leader.processIdentifier, SIGKILL); leader.waitUntilExit() }
        let sessions = dir.file("sessions")
        try FileManager.default.createDirectory(atPath: sessions, withIntermediateDirectories: true)
        func write(_ id: String, _ lines: [String]) throws {
            try ("# This is private data. Do not parse.\n" + lines.joined(separator: "\n") + "\n")
                .write(toFile: sessions + "/" + id, atomically: true, encoding: .utf8)
        }
        try write("3", ["UID=\(user.uid)", "USER=\(user.name)", "ACTIVE=1", "STATE=active", "REMOTE=0", "TYPE=x11",
                        "CLASS=user", "DISPLAY=\(server.name)", "LEADER=\(leader.processIdentifier)"])
        try write("c1", ["UID=0", "USER=root", "STATE=online", "TYPE=x11", "CLASS=greeter", "DISPLAY=\(greeter.name)"])
        try write("7", ["UID=\(user.uid)", "USER=\(user.name)", "STATE=closing", "TYPE=x11", "CLASS=user", "DISPLAY=:64999"])
        try write("8", ["UID=\(user.uid)", "USER=\(user.name)", "STATE=active", "TYPE=tty", "CLASS=user"])
        // logind's FIFO beside the file is not a session.
        mkfifo(sessions + "/3.ref", 0o600)
        let found = X11SessionDiscovery(displays: nil, credentials: nil, paths: .init(logindSessions: sessions),
                                        logger: testLogger("sessions")).sessions()
        let session = try #require(found.first { $0.display == server.name }, "\(found)")
        #expect(session.user == user.name && session.uid == user.uid && session.origin == .logind("3"))
        #expect(session.credentials == leaderCookie, "the leader's XAUTHORITY first")
        // The greeter's display is logind's too: not recorded, and not taken from its socket either.
        #expect(!found.contains { $0.display == greeter.name || $0.display == ":64999" })
        let capturer = try ScreenCapturer(display: session.display, xauthority: session.credentials, encoding: .png(level: 1),
                                          logger: testLogger("t"))
        #expect(capturer.connectError == nil)
    }

    /// Bytes this process has read through read(2) and the like (`rchar` of /proc/self/io, proc(5)).
    func bytesRead() throws -> Int {
        let text = try String(contentsOfFile: "/proc/self/io", encoding: .utf8)
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("rchar:") })
        return try #require(Int(line.dropFirst("rchar:".count).trimmingCharacters(in: .whitespaces)))
    }

    @Test("a user's sparse 1 GiB ~/.Xauthority and a FIFO in its place are refused unread, logged once each; the display is still found")
    func hugeCookieFile() throws {
        try requireRoot()
        let user = try TestUser("dh")
        let server = try Xvfb(user: user)
        defer { server.stop(); user.remove() }
        let emptyLogind = try TempDir("no-logind")
        defer { emptyLogind.remove() }
        // The server has read its cookie; the user now swaps the file for a 1 GiB sparse one.
        let cookie = user.home + "/.Xauthority"
        try FileManager.default.removeItem(atPath: cookie)
        let fd = open(cookie, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        #expect(ftruncate(fd, 1 << 30) == 0 && fchown(fd, user.uid, gid_t.max) == 0)
        close(fd)
        let log = LogCapture()
        let discovery = X11SessionDiscovery(displays: nil, credentials: nil, paths: .init(logindSessions: emptyLogind.path),
                                            logger: log.logger("sessions"))
        let before = try bytesRead()
        for _ in 0..<3 {
            let session = try #require(discovery.sessions().first { $0.display == server.name })
            #expect(session.user == user.name && session.credentials == nil)
        }
        // Three discoveries read far less than one copy of the file would (1 GiB).
        let read = try bytesRead() - before
        #expect(read < 256 << 20, "read \(read) bytes")
        let refusal = "cookie file refused for display \(server.name): '\(cookie)' is 1073741824 bytes, more than the 1048576 bytes allowed; not read"
        #expect(log.count(refusal) == 1, "\(log.text)")
        // A FIFO would block a plain open (nobody writes it): refused without blocking.
        try FileManager.default.removeItem(atPath: cookie)
        #expect(mkfifo(cookie, 0o600) == 0)
        #expect(discovery.sessions().contains { $0.display == server.name && $0.credentials == nil })
        #expect(log.count("'\(cookie)' is a FIFO, not a regular file") == 1, "\(log.text)")
    }

    @Test("a root-owned display goes to a user only through a cookie file that user owns and the display accepts; DISPLAY and root's XAUTHORITY in a user's process are not enough")
    func rootDisplayAttribution() throws {
        try requireRoot()
        let user = try TestUser("dr")
        let dir = try TempDir("rootx")
        defer { dir.remove() }
        // Root's server with access control, its cookie in a file of root's (mode 644: readable,
        // as a careless display manager may leave it).
        let rootCookie = dir.file("root.xauth")
        let cookie = try runChecked(["mcookie"]).trimmingCharacters(in: .whitespacesAndNewlines)
        try runChecked(["xauth", "-f", rootCookie, "add", ":65000", ".", cookie])
        chmod(rootCookie, 0o644)
        let server = try Xvfb(width: 64, height: 64, depth: 24, extraArgs: ["-auth", rootCookie])
        try runChecked(["xauth", "-f", rootCookie, "add", server.name, ".", cookie])
        // The user's process claims the display and names root's cookie file.
        let claimer = Process()
        claimer.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        claimer.arguments = ["--reuid=\(user.name)", "--regid=\(user.name)", "--init-groups", "/bin/sleep", "60"]
        claimer.environment = ["DISPLAY": server.name, "XAUTHORITY": rootCookie]
        try claimer.run()
        defer { kill(claimer.processIdentifier, SIGKILL); claimer.waitUntilExit(); server.stop(); user.remove() }
        let emptyLogind = try TempDir("no-logind")
        defer { emptyLogind.remove() }
        let log = LogCapture()
        let discovery = X11SessionDiscovery(displays: nil, credentials: nil, paths: .init(logindSessions: emptyLogind.path),
                                            logger: log.logger("sessions"))
        // Wait until the claimer runs as the user (setpriv has switched and exec'd sleep).
        var reason = ""
        for _ in 0..<50 {
            #expect(!discovery.sessions().contains { $0.display == server.name })
            reason = discovery.notRecorded().first { $0.display == server.name }?.reason ?? ""
            if reason.contains("processes of") { break }
            usleep(100_000)
        }
        #expect(reason.contains("its socket belongs to root; processes of \(user.name) use it, but no cookie file they own is accepted by the display"), "\(reason)")
        #expect(reason.contains("'\(rootCookie)' belongs to uid 0, not uid \(user.uid); not read"), "\(reason)")
        #expect(log.count("display \(server.name) is not recorded: its socket belongs to root; processes of") == 1, "\(log.text)")
        // A file of the user's own with a wrong cookie: the display refuses it.
        let own = user.home + "/.Xauthority"
        try runChecked(["xauth", "-f", own, "add", server.name, ".", "00112233445566778899aabbccddeeff"])
        try runChecked(["chown", "\(user.name):\(user.name)", own])
        #expect(!discovery.sessions().contains { $0.display == server.name })
        reason = discovery.notRecorded().first { $0.display == server.name }?.reason ?? ""
        #expect(reason.contains("'\(own)' refused by the display"), "\(reason)")
        // The user's own file with the real cookie: the display is theirs, with that file.
        try runChecked(["xauth", "-f", own, "add", server.name, ".", cookie])
        try runChecked(["chown", "\(user.name):\(user.name)", own])
        let session = try #require(discovery.sessions().first { $0.display == server.name }, "\(discovery.notRecorded())")
        #expect(session.user == user.name && session.uid == user.uid && session.credentials == own)
        #expect(!discovery.notRecorded().contains { $0.display == server.name })
    }

    @Test("a root-owned display only root's processes use is not recorded, and the reason says so")
    func rootOnlyDisplay() throws {
        try requireRoot()
        let server = try Xvfb(width: 64, height: 64, depth: 24)
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/bin/sleep")
        client.arguments = ["60"]
        client.environment = ["DISPLAY": server.name]
        try client.run()
        defer { kill(client.processIdentifier, SIGKILL); client.waitUntilExit(); server.stop() }
        let emptyLogind = try TempDir("no-logind")
        defer { emptyLogind.remove() }
        let discovery = X11SessionDiscovery(displays: nil, credentials: nil, paths: .init(logindSessions: emptyLogind.path),
                                            logger: testLogger("sessions"))
        #expect(!discovery.sessions().contains { $0.display == server.name })
        let reason = discovery.notRecorded().first { $0.display == server.name }?.reason ?? ""
        #expect(reason.hasPrefix("its socket belongs to root and only root's processes use it (pid ") && reason.contains("\(client.processIdentifier)"),
                "\(reason)")
    }

    @Test("cookie errors name where the cookie came from and the files tried: a wrong cookie in the user's home, no cookie of the user at all")
    func cookieErrorsNameTheirSource() throws {
        try requireRoot()
        let user = try TestUser("dc")
        let server = try Xvfb(user: user)
        defer { server.stop(); user.remove() }
        let emptyLogind = try TempDir("no-logind")
        defer { emptyLogind.remove() }
        let discovery = X11SessionDiscovery(displays: nil, credentials: nil, paths: .init(logindSessions: emptyLogind.path),
                                            logger: testLogger("sessions"))
        let own = user.home + "/.Xauthority"
        // A wrong cookie named by XAUTHORITY of the user's process on the display (the server
        // re-reads ~/.Xauthority when it resets, so the wrong one cannot go there): found there,
        // and the refusal names that source, not xauthority=.
        let dir = try TempDir("wrongcookie")
        defer { dir.remove() }
        let wrongFile = dir.file("wrong.xauth")
        try runChecked(["xauth", "-f", wrongFile, "add", server.name, ".", "00112233445566778899aabbccddeeff"])
        try runChecked(["chown", "\(user.name):\(user.name)", wrongFile])
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        client.arguments = ["--reuid=\(user.name)", "--regid=\(user.name)", "--init-groups", "/bin/sleep", "60"]
        client.environment = ["DISPLAY": server.name, "XAUTHORITY": wrongFile]
        try client.run()
        defer { kill(client.processIdentifier, SIGKILL); client.waitUntilExit() }
        let source = "XAUTHORITY of a process of user \(user.name) on \(server.name)"
        // Discovery keeps a cookie it found while it still works: look only once the client runs
        // as the user (setpriv has switched and exec'd sleep), or ~/.Xauthority is found first.
        #expect(waitUntil(timeout: 10) {
            var st = stat()
            let comm = (try? String(contentsOfFile: "/proc/\(client.processIdentifier)/comm", encoding: .utf8)) ?? ""
            return stat("/proc/\(client.processIdentifier)", &st) == 0 && st.st_uid == user.uid && comm.hasPrefix("sleep")
        })
        let wrong = try #require(discovery.sessions().first { $0.display == server.name })
        #expect(wrong.credentials == wrongFile && wrong.credentialsSource == source)
        let refused = try ScreenCapturer(display: wrong.display, xauthority: wrong.credentials, xauthoritySource: wrong.credentialsSource,
                                         encoding: .png(level: 1), logger: testLogger("t"))
        let refusal = String(describing: try #require(refused.connectError))
        #expect(refusal.contains("cookie file '\(wrongFile)' (from \(source)): its cookie for \(server.name) was refused"), "\(refusal)")
        #expect(!refusal.contains("xauthority="), "\(refusal)")
        kill(client.processIdentifier, SIGKILL)
        client.waitUntilExit()
        try FileManager.default.removeItem(atPath: wrongFile)
        // No cookie of the user anywhere: the files tried are named, then the agent's own defaults.
        try FileManager.default.removeItem(atPath: own)
        let none = try #require(discovery.sessions().first { $0.display == server.name })
        #expect(none.credentials == nil)
        let tried = try #require(none.credentialsSource)
        #expect(tried.hasPrefix("no cookie file of user \(user.name) for \(server.name) (tried '\(own)' missing, '/run/user/\(user.uid)/gdm/Xauthority' missing"),
                "\(tried)")
        let missing = try ScreenCapturer(display: none.display, xauthority: nil, xauthoritySource: none.credentialsSource,
                                         encoding: .png(level: 1), logger: testLogger("t"))
        let message = String(describing: try #require(missing.connectError))
        #expect(message.contains(tried + "; then the agent's own: "), "\(message)")
    }
}
