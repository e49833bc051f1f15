import Foundation
import Synchronization

/// A throwaway PostgreSQL cluster for tests: Debian's server binaries (`postgresql` in the
/// Makefile's `DEB_PACKAGES`), `initdb` into a temp dir, `pg_ctl start` on a free port of
/// 127.0.0.1 and on a Unix socket in that dir, stopped and removed by ``shutdown()`` or deinit.
///
/// Authentication is real: `initdb -A scram-sha-256` makes every connection (socket and TCP)
/// give a password, the superuser `postgres`'s from a password file; ``createRole(_:)`` makes
/// login roles with their own passwords. PostgreSQL refuses to run as root, so as root every
/// server command runs as the `postgres` user (`runuser -u postgres --`, man 1 runuser); the
/// temp dir is made traversable for it. Debian's layout: `/usr/lib/postgresql/VERSION/bin`.
///
/// One cluster per suite, one database per test (``createDatabase(owner:)``): tests in a suite
/// run in parallel on their own databases. Nothing of this is a mock.
public final class PostgresCluster: Sendable {
    /// The server's directory of binaries, e.g. `/usr/lib/postgresql/15/bin`.
    public let binDirectory: String
    /// Loopback address the server listens on.
    public let host = "127.0.0.1"
    /// Its TCP port (free when the cluster started).
    public let port: Int
    /// The superuser (`initdb -U`).
    public let superuser = "postgres"
    /// Whether the server syncs its writes to disk (`-c fsync=`).
    public let fsync: Bool
    /// The superuser's password (also in `PGPASSWORD` of ``psql(_:database:user:password:)``).
    public let superuserPassword: String
    /// Folder of the cluster: `data/` (PGDATA), `sock/` (the Unix socket), `server.log`.
    public let directory: String
    public var dataDirectory: String { directory + "/data" }
    public var socketDirectory: String { directory + "/sock" }
    public var logPath: String { directory + "/server.log" }

    private let state = Mutex<(running: Bool, databases: Int, roles: [String: String])>((false, 0, [:]))
    /// Held while a role is made, so tests asking for the same role at once make it once.
    private let roleCreation = Mutex(())

    /// Whether tests that need PostgreSQL can run here: its server binaries are installed, or
    /// `CI=true` (where a missing server then fails the test instead of skipping it).
    public static var isAvailable: Bool { findBinDirectory() != nil || isCI }

    /// The newest `/usr/lib/postgresql/*/bin` holding `initdb` and `pg_ctl`, or nil.
    public static func findBinDirectory() -> String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .compactMap { v -> (Int, String)? in Int(v).map { ($0, v) } }
            .sorted { $0.0 > $1.0 }
        for (_, v) in versions {
            let bin = "\(root)/\(v)/bin"
            if FileManager.default.isExecutableFile(atPath: bin + "/initdb"),
               FileManager.default.isExecutableFile(atPath: bin + "/pg_ctl") { return bin }
        }
        return nil
    }

    /// Makes and starts a new cluster (about 1–2 s).
    /// - Throws: ``TestSupportError`` when PostgreSQL is not installed (run `make deps`) or a
    ///   server command fails (with its output and the server log).
    /// - Parameter fsync: PostgreSQL's `fsync` (off for tests: faster, and a crash of the test
    ///   machine loses nothing that matters; on for benchmarks, as in production).
    public init(fsync: Bool = false) throws {
        self.fsync = fsync
        guard let bin = Self.findBinDirectory() else {
            throw TestSupportError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (run `make deps`, which installs Debian's postgresql)")
        }
        try requireTool("psql")
        binDirectory = bin
        superuserPassword = Self.newPassword()
        port = try freeLocalPort()
        let dir = try TempDir("custos-pg")
        directory = dir.path
        do {
            // The postgres user must reach data/ and sock/ through the temp dir (mkdtemp makes it 0700).
            guard chmod(directory, 0o755) == 0 else { throw TestSupportError("chmod \(directory) failed") }
            let fm = FileManager.default
            for d in [dataDirectory, socketDirectory] {
                try fm.createDirectory(atPath: d, withIntermediateDirectories: false,
                                       attributes: [.posixPermissions: 0o700])
            }
            let pwfile = directory + "/superuser.pw"
            try Data((superuserPassword + "\n").utf8).write(to: URL(fileURLWithPath: pwfile))
            chmod(pwfile, 0o600)
            if getuid() == 0 {
                try runChecked(["chown", "-R", "postgres:postgres", dataDirectory, socketDirectory, pwfile])
            }
            try runChecked(Self.asServerUser([bin + "/initdb", "-D", dataDirectory, "-U", superuser,
                                              "-A", "scram-sha-256", "--pwfile=" + pwfile,
                                              "-E", "UTF8", "--no-locale", "--no-sync"]), timeout: 120)
            try? fm.removeItem(atPath: pwfile)
            try startWatchdog()
            try start()
        } catch {
            shutdown()
            throw error
        }
    }

    /// A detached shell that stops the server and removes the folder once this process is gone
    /// (killed, crashed, or exited without deinit: a static cluster's deinit never runs), and
    /// ends by itself when the folder is removed by ``shutdown()``.
    private func startWatchdog() throws {
        let stop = Self.asServerUser([binDirectory + "/pg_ctl", "-D", dataDirectory, "-m", "immediate", "-w", "stop"])
            .map { "'\($0)'" }.joined(separator: " ")
        let script = """
            while kill -0 \(getpid()) 2>/dev/null && [ -d '\(directory)' ]; do sleep 1; done
            if [ -f '\(dataDirectory)/postmaster.pid' ]; then \(stop) >/dev/null 2>&1; fi
            rm -rf '\(directory)'
            """
        try runChecked(Self.closingInheritedDescriptors(["setsid", "sh", "-c", "(\n" + script + "\n) &"]))
    }

    /// `command` run by bash after closing every descriptor but 0-2 (and with those on
    /// /dev/null when `detached`), for commands that leave a process running (`pg_ctl start`,
    /// the watchdog). Foundation's `Process` learns that a child ended when a socket it hands
    /// the child is closed by every holder; a server that inherited it keeps `waitUntilExit`
    /// waiting for as long as the server runs.
    static func closingInheritedDescriptors(_ command: [String]) -> [String] {
        let close = #"for fd in /proc/$$/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done 2>/dev/null; "#
        return ["bash", "-c", close + #"exec "$@" </dev/null >/dev/null 2>&1"#, "bash"] + command
    }

    /// `command` as the `postgres` user when this process is root (PostgreSQL refuses root).
    static func asServerUser(_ command: [String]) -> [String] {
        getuid() == 0 ? ["runuser", "-u", "postgres", "--"] + command : command
    }

    /// A random password of 24 letters and digits.
    public static func newPassword() -> String {
        let chars = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        var rng = SystemRandomNumberGenerator()
        return String((0..<24).map { _ in chars[Int(rng.next() % UInt64(chars.count))] })
    }

    /// Starts the server (`pg_ctl … -w start`: returns once it accepts connections).
    public func start() throws {
        if getuid() == 0, !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            _ = try? runCommand(["chown", "postgres:postgres", logPath])
        }
        let options = "-k \(socketDirectory) -p \(port) -c listen_addresses=\(host) -c fsync=\(fsync ? "on" : "off") -c max_connections=200"
        let r = try runCommand(Self.closingInheritedDescriptors(Self.asServerUser(
            [binDirectory + "/pg_ctl", "-D", dataDirectory, "-o", options, "-l", logPath, "-w", "-t", "60", "start"])),
            timeout: 90)
        guard r.status == 0 else {
            throw TestSupportError("pg_ctl start exited \(r.status); server log:\n\(serverLog)")
        }
        state.withLock { $0.running = true }
    }

    /// Stops the server at once (`pg_ctl stop -m fast`: sessions are ended, the shutdown
    /// checkpoint written). A fault test's "database down".
    public func stop() throws {
        let r = try runCommand(Self.asServerUser([binDirectory + "/pg_ctl", "-D", dataDirectory, "-m", "fast",
                                                  "-w", "-t", "60", "stop"]), timeout: 90)
        guard r.status == 0 else {
            throw TestSupportError("pg_ctl stop exited \(r.status): \(r.stdoutString)\(r.stderrString)")
        }
        state.withLock { $0.running = false }
    }

    /// ``stop()`` then ``start()``: the server comes back on the same port with the same data.
    public func restart() throws {
        try stop()
        try start()
    }

    public var isRunning: Bool { state.withLock { $0.running } }

    /// The server log so far.
    public var serverLog: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Runs `sql` with the real `psql` over TCP as `user` (default: the superuser) and returns
    /// its output (`-X -q -A -t`: unaligned tuples only, `-v ON_ERROR_STOP=1`).
    /// - Throws: ``TestSupportError`` with psql's standard error when it exits non-zero.
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres", user: String? = nil,
                     password: String? = nil, tuplesOnly: Bool = true) throws -> String {
        let r = try psqlResult(sql, database: database, user: user, password: password, tuplesOnly: tuplesOnly)
        guard r.status == 0 else {
            throw TestSupportError("psql exited \(r.status) on \(database): \(r.stderrString)")
        }
        return r.stdoutString
    }

    /// ``psql(_:database:user:password:tuplesOnly:)`` without the exit check.
    public func psqlResult(_ sql: String, database: String = "postgres", user: String? = nil,
                           password: String? = nil, tuplesOnly: Bool = true) throws -> CommandResult {
        let role = user ?? superuser
        let pw = password ?? (role == superuser ? superuserPassword : state.withLock { $0.roles[role] } ?? "")
        var args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", "\(port)", "-U", role, "-d", database]
        if tuplesOnly { args += ["-A", "-t"] }
        return try runCommand(args, stdin: Data(sql.utf8), environment: ["PGPASSWORD": pw, "PGCONNECT_TIMEOUT": "10"],
                              timeout: 60)
    }

    /// Creates a login role with a new password (scram-sha-256, the server's
    /// `password_encryption` default); returns the password.
    @discardableResult
    public func createRole(_ name: String) throws -> String {
        try roleCreation.withLock { _ in
            if let pw = state.withLock({ $0.roles[name] }) { return pw }
            let pw = Self.newPassword()
            try psql("CREATE ROLE \"\(name)\" LOGIN PASSWORD '\(pw)';")
            state.withLock { $0.roles[name] = pw }
            return pw
        }
    }

    /// The password of a role made by ``createRole(_:)``.
    public func password(of role: String) -> String? {
        role == superuser ? superuserPassword : state.withLock { $0.roles[role] }
    }

    /// Creates a fresh database `custos_test_N` owned by `owner` (a role of
    /// ``createRole(_:)``, or the superuser when nil); returns its name.
    public func createDatabase(owner: String? = nil) throws -> String {
        let n = state.withLock { s in s.databases += 1; return s.databases }
        let name = "custos_test_\(n)"
        try psql("CREATE DATABASE \(name)" + (owner.map { " OWNER \"\($0)\"" } ?? "") + ";")
        return name
    }

    /// A connection URL for `database` as `user`, with `sslmode=disable` (the password is
    /// given separately, as in production).
    public func url(database: String, user: String) -> String {
        "postgres://\(user)@\(host):\(port)/\(database)?sslmode=disable"
    }

    /// Stops the server when running (`-m immediate`: no wait for a checkpoint) and removes
    /// the cluster's folder. Safe to call twice; deinit calls it.
    public func shutdown() {
        if FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") {
            _ = try? runCommand(Self.asServerUser([binDirectory + "/pg_ctl", "-D", dataDirectory, "-m", "immediate",
                                                   "-w", "-t", "30", "stop"]), timeout: 60)
        }
        state.withLock { $0.running = false }
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { shutdown() }
}

extension PostgresCluster {
    /// ``init()`` on a Dispatch thread: `initdb` and `pg_ctl` take a second or two, which
    /// must not hold one of the concurrency pool's threads (two on a 2-core machine).
    public static func make() async throws -> PostgresCluster {
        try await offPool { try PostgresCluster() }
    }

    /// ``stop()`` off the concurrency pool.
    public func stopAsync() async throws { try await offPool { try self.stop() } }
    /// ``start()`` off the concurrency pool.
    public func startAsync() async throws { try await offPool { try self.start() } }

    /// ``psql(_:database:user:password:tuplesOnly:)`` off the concurrency pool.
    @discardableResult
    public func psqlAsync(_ sql: String, database: String = "postgres", user: String? = nil,
                          password: String? = nil) async throws -> String {
        try await offPool { try self.psql(sql, database: database, user: user, password: password) }
    }

    /// ``createDatabase(owner:)`` off the concurrency pool.
    public func createDatabaseAsync(owner: String? = nil) async throws -> String {
        try await offPool { try self.createDatabase(owner: owner) }
    }
}

/// Runs blocking `body` on a Dispatch thread and returns its result.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
    }
}
