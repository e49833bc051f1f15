import Foundation

/// Shared helpers for Custos tests: run real tools, make temp dirs, require tools.
///
/// Every test starts what it needs itself (Xvfb, openssl keys, a collector, SQLite
/// files in a temp dir); nothing here is a mock.
public enum TestSupport {}

/// The result of running an external command to completion.
public struct CommandResult: Sendable {
    public let status: Int32
    public let stdout: Data
    public let stderr: Data
    public var stdoutString: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrString: String { String(decoding: stderr, as: UTF8.self) }
}

/// Errors from the test helpers.
public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Runs `arguments[0]` (looked up in `PATH`) with the rest as its arguments, feeding
/// `stdin` and collecting standard output and error. Waits at most `timeout` seconds,
/// then kills the process and throws.
@discardableResult
public func runCommand(_ arguments: [String], stdin: Data? = nil, environment: [String: String]? = nil,
                       currentDirectory: String? = nil, timeout: TimeInterval = 120) throws -> CommandResult {
    precondition(!arguments.isEmpty)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    if let environment {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    let outPipe = Pipe(), errPipe = Pipe(), inPipe = Pipe()
    process.standardOutput = outPipe
    process.standardError = errPipe
    process.standardInput = inPipe
    try process.run()
    // Drain both pipes concurrently so a chatty child cannot block on a full pipe.
    let group = DispatchGroup()
    nonisolated(unsafe) var out = Data(), err = Data()
    group.enter()
    DispatchQueue.global().async { out = outPipe.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    group.enter()
    DispatchQueue.global().async { err = errPipe.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    if let stdin { inPipe.fileHandleForWriting.write(stdin) }
    try? inPipe.fileHandleForWriting.close()
    if group.wait(timeout: .now() + timeout) == .timedOut {
        process.terminate()
        process.waitUntilExit()
        throw TestSupportError("\(arguments.joined(separator: " ")) timed out after \(timeout) s")
    }
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, stdout: out, stderr: err)
}

/// Runs a command and throws unless it exits 0; returns its standard output as text.
@discardableResult
public func runChecked(_ arguments: [String], stdin: Data? = nil, environment: [String: String]? = nil,
                       currentDirectory: String? = nil, timeout: TimeInterval = 120) throws -> String {
    let r = try runCommand(arguments, stdin: stdin, environment: environment,
                           currentDirectory: currentDirectory, timeout: timeout)
    guard r.status == 0 else {
        throw TestSupportError("\(arguments.joined(separator: " ")) exited \(r.status): \(r.stderrString)")
    }
    return r.stdoutString
}

/// ``runChecked(_:stdin:environment:currentDirectory:timeout:)`` on a Dispatch thread, not on the
/// Swift concurrency pool: for a command that talks to a server in this process (an in-process
/// collector), whose handlers need that pool's threads (two on a 2-core machine) while it runs.
@discardableResult
public func runCheckedOffPool(_ arguments: [String], timeout: TimeInterval = 120) async throws -> String {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            continuation.resume(with: Result { try runChecked(arguments, timeout: timeout) })
        }
    }
}

/// True when running under CI (`CI=true`): there a missing tool fails the run instead of skipping.
public var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

/// Whether tests that mount a tmpfs (ENOSPC tests) run: as root, and always under `CI=true`,
/// where a non-root run then fails at the mount instead of being skipped. Use it as
/// `@Test(.enabled(if: canMountTmpfs, "needs root to mount a tmpfs"))` so a skip is reported.
public var canMountTmpfs: Bool { getuid() == 0 || isCI }

/// Whether `tool` is on `PATH`.
public func toolExists(_ tool: String) -> Bool {
    (try? runCommand(["sh", "-c", "command -v \(tool)"]).status) == 0
}

/// Throws when `tool` is missing. Tests call this first; under `CI=true` the throw fails
/// the test; elsewhere the message says how to install it (`make deps`).
public func requireTool(_ tool: String) throws {
    if !toolExists(tool) {
        throw TestSupportError("required tool '\(tool)' is not installed (run `make deps`)")
    }
}

/// A fresh directory under the system temp dir, removed by `remove()`.
public struct TempDir: Sendable {
    public let path: String
    public init(_ prefix: String = "custos-test") throws {
        let base = FileManager.default.temporaryDirectory.path
        let template = "\(base)/\(prefix)-XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let p = mkdtemp(&bytes) else { throw TestSupportError("mkdtemp failed for \(template)") }
        path = String(cString: p)
    }
    /// `path` joined with `name`.
    public func file(_ name: String) -> String { path + "/" + name }
    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// The root of the package checkout (the folder holding Package.swift), found from this file.
public let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    while url.path != "/" {
        url.deleteLastPathComponent()
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url.path }
    }
    return FileManager.default.currentDirectoryPath
}()

/// Path of a product built by SwiftPM next to the test bundle (for example `custos`).
public func builtProduct(_ name: String) throws -> String {
    let bundle = Bundle.main.bundleURL  // .build/<triple>/debug
    let candidates = [bundle.appendingPathComponent(name).path,
                      bundle.deletingLastPathComponent().appendingPathComponent(name).path,
                      packageRoot + "/.build/debug/" + name]
    for c in candidates where FileManager.default.isExecutableFile(atPath: c) { return c }
    throw TestSupportError("built product '\(name)' not found (looked in \(candidates)); run `swift build` first")
}

/// `count` random bytes from `/dev/urandom`, fast enough for megabytes of test data in a debug
/// build (a per-byte `UInt8.random` loop is not).
public func randomData(_ count: Int) -> Data {
    guard let urandom = FileHandle(forReadingAtPath: "/dev/urandom") else { fatalError("cannot open /dev/urandom") }
    defer { try? urandom.close() }
    var data = Data()
    while data.count < count {
        guard let chunk = try? urandom.read(upToCount: count - data.count), !chunk.isEmpty else {
            fatalError("cannot read /dev/urandom")
        }
        data.append(chunk)
    }
    return data
}

/// A tmpfs of `size` (mount's `size=` syntax, e.g. `"3m"`, mode 0700) mounted on a fresh temp
/// folder, for disk-full (ENOSPC) tests. Mounting needs root: check `getuid() == 0` first (and
/// under `CI=true` fail rather than skip). `unmount()` unmounts it lazily and removes the folder.
public struct SmallTmpfs: Sendable {
    /// The mount point.
    public let path: String
    let dir: TempDir

    public init(_ name: String, size: String) throws {
        dir = try TempDir(name)
        path = dir.file("fs")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        do {
            try runChecked(["mount", "-t", "tmpfs", "-o", "size=\(size),mode=0700", "tmpfs", path])
        } catch {
            dir.remove()
            throw error
        }
    }

    public func unmount() {
        _ = try? runCommand(["umount", "-l", path])
        dir.remove()
    }
}
