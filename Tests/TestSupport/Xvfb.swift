import Foundation

/// A private `Xvfb` X server for one test.
///
/// The display number is chosen by Xvfb itself (`-displayfd`: it takes the first free number
/// and reports it once it accepts connections), so parallel tests never collide and the
/// server is ready when `init` returns. `stop()` (or `deinit`) kills it; `restart()` starts it
/// again on the same number, as a display server restart looks to clients.
///
/// Usage: `let x = try Xvfb(width: 1023, height: 768, depth: 16, extraArgs: ["-extension", "MIT-SHM"])`,
/// then pass `x.name` (":N") as the display, or run X clients with `x.run([...])`.
public final class Xvfb: @unchecked Sendable {
    // @unchecked Sendable: the mutable `process` is only touched under `lock`.
    public let width: Int
    public let height: Int
    public let depth: Int
    public let extraArgs: [String]
    /// The user the server runs as (its socket is theirs), or nil for this process's.
    public let user: TestUser?
    /// The cookie file clients use (`XAUTHORITY`), for a server started with one.
    public let authFile: String?
    /// The display number (`:number`).
    public private(set) var number: Int = -1
    private var process: Process?
    private let lock = NSLock()

    /// `":N"`, to pass as DISPLAY.
    public var name: String { ":\(number)" }

    /// Starts Xvfb with one screen of `width`×`height` pixels at `depth` bits (8, 16, 24),
    /// plus `extraArgs` (for example `["-extension", "MIT-SHM"]`).
    /// - Throws: when Xvfb is not installed (see `requireTool`) or does not come up within 10 s.
    public init(width: Int = 640, height: Int = 480, depth: Int = 24, extraArgs: [String] = []) throws {
        try requireTool("Xvfb")
        self.width = width
        self.height = height
        self.depth = depth
        self.extraArgs = extraArgs
        user = nil
        authFile = nil
        try start(display: nil)
    }

    /// Starts Xvfb as `user` (`setpriv`, so the process is the server itself and its socket
    /// `/tmp/.X11-unix/XN` is the user's), with access control: a fresh MIT-MAGIC-COOKIE-1
    /// (`mcookie`) in the user's `~/.Xauthority`, owned by them, as a display manager leaves it.
    /// The server reads the cookie at start (an entry for a placeholder display: its number is
    /// known only once it runs); the entry for `:N` is added after.
    public init(width: Int = 320, height: Int = 240, depth: Int = 24, user: TestUser) throws {
        for tool in ["Xvfb", "xauth", "mcookie", "setpriv"] { try requireTool(tool) }
        self.width = width
        self.height = height
        self.depth = depth
        self.user = user
        let file = user.home + "/.Xauthority"
        authFile = file
        let cookie = try runChecked(["mcookie"]).trimmingCharacters(in: .whitespacesAndNewlines)
        try runChecked(["xauth", "-f", file, "add", ":65000", ".", cookie])
        try runChecked(["chown", "\(user.name):\(user.name)", file])
        extraArgs = ["-auth", file]
        try start(display: nil)
        try runChecked(["xauth", "-f", file, "add", name, ".", cookie])
        try runChecked(["chown", "\(user.name):\(user.name)", file])
    }

    deinit { stop() }

    /// Kills the server (SIGTERM, then SIGKILL after 2 s) and waits for it to exit.
    public func stop() {
        lock.lock()
        defer { lock.unlock() }
        guard let process else { return }
        self.process = nil
        if process.isRunning {
            process.terminate()
            let deadline = Date().addingTimeInterval(2)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
    }

    /// Stops the server and starts a new one on the same display number (retrying for up to
    /// 10 s while the old one's lock file and socket go away).
    public func restart() throws {
        stop()
        let deadline = Date().addingTimeInterval(10)
        var lastError: (any Error)?
        while Date() < deadline {
            do {
                try start(display: number)
                return
            } catch {
                lastError = error
                usleep(100_000)
            }
        }
        throw lastError ?? TestSupportError("Xvfb :\(number) did not restart")
    }

    /// Whether the server process is running.
    public var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return process?.isRunning ?? false
    }

    /// Environment for X clients of this server.
    public var environment: [String: String] { ["DISPLAY": name, "XAUTHORITY": authFile ?? "/dev/null"] }

    /// Runs an X client (`xsetroot`, `xdotool`, `setxkbmap` …) against this server; throws
    /// unless it exits 0; returns its standard output.
    @discardableResult
    public func run(_ arguments: [String], timeout: TimeInterval = 30) throws -> String {
        try runChecked(arguments, environment: environment, timeout: timeout)
    }

    /// Small top-level windows (`xmessage -name NAME -title TITLE`, WM_CLASS `NAME`/`Xmessage`)
    /// on this server, for focus, keystroke and exclusion tests. Waits (at most 10 s each) until
    /// `xdotool search --name ^TITLE$` finds each.
    /// - Returns: the clients (kill them with ``MessageWindows/close()``) and the window ids
    ///   (decimal, as `xdotool` takes them), in the order given.
    /// - Throws: `TestSupportError` when a window does not appear.
    public func openMessageWindows(_ windows: [(name: String, title: String)]) throws -> MessageWindows {
        let opened = MessageWindows()
        do {
            for (name, title) in windows {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                p.arguments = ["xmessage", "-name", name, "-title", title, "hello"]
                p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, n in n }
                p.standardError = FileHandle.nullDevice
                try p.run()
                opened.clients.append(p)
            }
            for (_, title) in windows {
                var id = ""
                let deadline = Date().addingTimeInterval(10)
                while id.isEmpty && Date() < deadline {
                    let r = try runCommand(["xdotool", "search", "--name", "^\(title)$"], environment: environment)
                    id = r.status == 0 ? r.stdoutString.split(separator: "\n").first.map(String.init) ?? "" : ""
                    if id.isEmpty { usleep(50_000) }
                }
                if id.isEmpty { throw TestSupportError("window \(title) did not appear on \(name)") }
                opened.ids.append(id)
            }
        } catch {
            opened.close()
            throw error
        }
        return opened
    }

    private func start(display: Int?) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        var args = user.map { ["setpriv", "--reuid=\($0.uid)", "--regid=\($0.uid)", "--init-groups", "--", "Xvfb"] } ?? ["Xvfb"]
        if let display { args.append(":\(display)") }
        args += ["-displayfd", "1", "-screen", "0", "\(width)x\(height)x\(depth)", "-nolisten", "tcp", "-noreset"]
        args += extraArgs
        process.arguments = args
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Xvfb writes "N\n" to the displayfd once it accepts connections.
        let reader = out.fileHandleForReading
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var line = ""
        DispatchQueue.global().async {
            var bytes = Data()
            while true {
                let chunk = reader.availableData
                if chunk.isEmpty { break }
                bytes.append(chunk)
                if bytes.contains(0x0A) { break }
            }
            line = String(decoding: bytes, as: UTF8.self)
            done.signal()
        }
        let ready = done.wait(timeout: .now() + 10) == .success
        guard ready, let number = Int(line.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            throw TestSupportError("Xvfb \(args.joined(separator: " ")) did not report a display (got \"\(line)\")")
        }
        lock.lock()
        self.number = number
        self.process = process
        lock.unlock()
    }
}

/// Windows opened by ``Xvfb/openMessageWindows(_:)``.
public final class MessageWindows: @unchecked Sendable {
    public fileprivate(set) var clients: [Process] = []
    /// Window ids, in the order asked for.
    public fileprivate(set) var ids: [String] = []

    /// Kills the clients and waits for them.
    public func close() {
        clients.forEach { kill($0.processIdentifier, SIGKILL); $0.waitUntilExit() }
        clients = []
    }
}

/// A local user made for one test (`useradd -m`, a home of its own), removed with its home by
/// `remove()` or `deinit` (`userdel -r`). Needs root; names are unique per process and index.
public final class TestUser: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; `removed` only flips once under `lock`.
    public let name: String
    public let uid: UInt32
    public let home: String
    private var removed = false
    private let lock = NSLock()

    /// - Throws: when not root, or `useradd` fails.
    public init(_ tag: String) throws {
        guard getuid() == 0 else { throw TestSupportError("TestUser needs root (useradd)") }
        try requireTool("useradd")
        name = "cst\(getpid())\(tag)"
        _ = try? runCommand(["userdel", "-r", name])  // a leftover of a killed run with the same pid
        try runChecked(["useradd", "-m", "-s", "/usr/sbin/nologin", name])
        guard let pw = getpwnam(name) else { throw TestSupportError("user \(name) was not created") }
        uid = pw.pointee.pw_uid
        home = String(cString: pw.pointee.pw_dir)
    }

    /// Removes the user and their home (`userdel -r`). Stop what runs as the user first (the
    /// test's `Xvfb`): a user with processes is not removed.
    public func remove() {
        lock.lock()
        defer { lock.unlock() }
        guard !removed else { return }
        removed = true
        _ = try? runCommand(["userdel", "-r", name])
    }

    deinit { remove() }
}
