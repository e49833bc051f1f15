import Foundation

/// A long-running child process (collector, agent) whose standard error goes to a log file.
/// `deinit` kills it, so a failing test leaves nothing running.
public final class BackgroundProcess: @unchecked Sendable {
    // @unchecked Sendable: `process` is set once in init; Process itself is thread-safe for these calls.
    public let process: Process
    public let logPath: String

    /// Starts `executable` with `arguments`; the environment is this process's plus `environment`.
    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], logPath: String) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        guard FileManager.default.createFile(atPath: logPath, contents: nil) else {
            throw TestSupportError("cannot create log file \(logPath) for \(executable)")
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardError = log
        process.standardOutput = log
        process.standardInput = FileHandle.nullDevice
        self.logPath = logPath
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// Sends `signal` (e.g. SIGTERM, SIGHUP, SIGKILL).
    public func send(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Waits up to `timeout` seconds for exit; returns the exit status, or nil on time-out.
    @discardableResult
    public func waitExit(timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// The log so far.
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Polls `condition` every 100 ms until it is true or `timeout` seconds pass; returns whether it became true.
public func waitUntil(timeout: TimeInterval, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(100_000)
    }
    return try condition()
}

/// Polls `condition` every `interval` until it is true or `timeout` seconds pass, sleeping
/// without blocking a thread; returns whether it became true.
public func waitUntil(timeout: TimeInterval, every interval: Duration = .milliseconds(100),
                      _ condition: () throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        try await Task.sleep(for: interval)
    }
    return try condition()
}

/// ``waitUntil(timeout:every:_:)`` for a condition that awaits (a storage query). A separate
/// overload: a synchronous closure keeps choosing the one above (in an async context), never
/// the blocking one without `every:`.
public func waitUntil(timeout: TimeInterval, every interval: Duration = .milliseconds(100),
                      _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: interval)
    }
    return try await condition()
}

/// A TCP socket bound to 127.0.0.1 on a port the kernel picks, listening until `close()`
/// (or deinit): a port that is busy for as long as the test holds it.
public final class LoopbackListener: @unchecked Sendable {
    // @unchecked Sendable: `fd` is set once in init and only closed.
    private var fd: Int32
    /// The bound port.
    public let port: Int

    public init() throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket failed") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let fd = self.fd
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, len) == 0 && listen(fd, 1) == 0 && getsockname(fd, sa, &len) == 0
            }
        }
        guard ok else { Glibc.close(fd); throw TestSupportError("bind/listen on 127.0.0.1 failed") }
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    public func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    deinit { close() }
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for a test's own server).
public func freeLocalPort() throws -> Int {
    let listener = try LoopbackListener()
    defer { listener.close() }
    return listener.port
}

/// A `sqlite3` process holding a transaction open on `db` until `release()`.
/// `sql` runs first (e.g. `BEGIN EXCLUSIVE;`); the process prints `held` once it holds it.
public final class HeldTransaction: @unchecked Sendable {  // only used from the test's own task
    let process = Process()
    let input = Pipe()
    let output = Pipe()

    public init(db: String, sql: String) throws {
        try requireTool("sqlite3")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["sqlite3", db]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        input.fileHandleForWriting.write(Data(".timeout 10000\n\(sql)\nSELECT 'held';\n".utf8))
        var seen = Data()
        let deadline = Date().addingTimeInterval(20)
        while !String(decoding: seen, as: UTF8.self).contains("held") {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty || Date() > deadline { throw TestSupportError("sqlite3 did not take the lock on \(db)") }
            seen.append(chunk)
        }
    }

    public func release(commit: String = "COMMIT;") {
        input.fileHandleForWriting.write(Data("\(commit)\n.quit\n".utf8))
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}
