import CollectorStorage
import CustosBase
import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// ``CollectorStorage`` on PostgreSQL (postgres-nio): several collector instances on one
/// database, each stateless. Schema, migrations, roles and the seed's SQL: docs/STORAGE.md.
///
/// Lifecycle: `init` does no I/O. The owner runs ``run()`` in a long-lived task — the
/// collector puts the storage in its `ServiceGroup`, before the HTTP server so it stops after
/// it — which runs the connection pool (`PostgresClient.run()`) and the `LISTEN` connection of
/// ``kekChanges()``; calls made while ``run()`` is not running fail `.unavailable` (after about
/// a second). The first call (or ``prepare()``) brings the schema up to date. ``close()``
/// (or cancelling ``run()``, or a graceful shutdown of the group) closes every connection.
///
/// Errors: a database that cannot be reached (connection refused, server down or restarting,
/// connection lost mid-call, no answer within ``Configuration/operationTimeout``) is
/// `.unavailable` — transient: retry, nothing was half-stored (a batch is one transaction);
/// wrong password, unknown database or role, TLS failures, a newer schema are `.failed`.
/// Messages name `user@host:port/dbname` and never the password; text from the server is escaped.
/// After a restart of the server, calls work again without restarting this process.
public final class PostgresStorage: CollectorStorage, Service {
    /// What to connect to and how patiently.
    public struct Configuration: Sendable {
        /// Where the database is (its ``PostgresLocation/passwordFile`` is not read here).
        public var location: PostgresLocation
        /// The role's password (``PostgresLocation/readPassword()``); nil: none (the server
        /// trusts this client).
        public var password: Secret?
        /// How long one call may wait for a connection and its answer before it fails
        /// `.unavailable` (default 10 s). After a second without a connection, a probe
        /// connection tells a server that is down (`.unavailable` at once) or refuses the
        /// password (`.failed`) from one that is only slow.
        public var operationTimeout: Duration
        /// Most pooled connections of this instance (default 10), plus one for `LISTEN`.
        public var maximumConnections: Int
        /// Retry schedule of the `LISTEN` connection.
        public var listenerBackoff: Backoff
        /// `blob-dir=`: the directory (shared by every instance, e.g. an NFS mount) where sealed
        /// blobs of ``SharedBlobDirectory/minBytes`` or more go to blob files, the row keeping a
        /// ``BlobRef``; nil: every blob stays in `captures.blob` (docs/STORAGE.md "Blobs").
        /// Reading a blob stored through a reference needs it too.
        public var blobDirectory: String?
        /// Retention deletes a blob file no row points into only when it has not changed for this
        /// long (default 15 minutes): far longer than a batch appended just before its writer
        /// moved to its next file can take to commit its rows (the operation timeout), plus
        /// clock differences between hosts and the file server (docs/STORAGE.md "Retention").
        public var blobFileQuietPeriod: Duration
        /// How long ``authenticate(_:token:)`` trusts the database's acceptance of an agent's
        /// token before asking again (default 5 s; zero: every call asks): a token rotated or an
        /// agent removed by another process is refused within this time (docs/STORAGE.md
        /// "Agent tokens: the look-up cache").
        public var tokenCacheTTL: Duration

        public init(location: PostgresLocation, password: Secret?, operationTimeout: Duration = .seconds(10),
                    maximumConnections: Int = 10,
                    listenerBackoff: Backoff = Backoff(initial: .milliseconds(200), cap: .seconds(10)),
                    blobDirectory: String? = nil, blobFileQuietPeriod: Duration = .seconds(15 * 60),
                    tokenCacheTTL: Duration = .seconds(5)) {
            self.location = location
            self.password = password
            self.operationTimeout = operationTimeout
            self.maximumConnections = maximumConnections
            self.listenerBackoff = listenerBackoff
            self.blobDirectory = blobDirectory
            self.blobFileQuietPeriod = blobFileQuietPeriod
            self.tokenCacheTTL = tokenCacheTTL
        }
    }

    public let configuration: Configuration
    /// `user@host:port/dbname` (escaped), how errors name the database.
    public var location: String { configuration.location.named }

    let client: PostgresClient
    /// For the probe and the `LISTEN` connection (outside the pool).
    let connectionConfiguration: PostgresConnection.Configuration
    let logger: Logger
    /// postgres-nio's own logging is off: it would print server text unescaped and, at debug,
    /// bound values. This type logs what matters itself.
    static let quiet = Logger(label: "custos.storage.postgres.driver", factory: { _ in SwiftLogNoOpLogHandler() })

    struct State {
        var running = false
        var closed = false
        var schemaReady = false
        var subscribers: [Int: AsyncStream<Void>.Continuation] = [:]
        var nextSubscriber = 0
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
        var runEnded = false
        /// Made at the first use of the blob directory (it needs the database's id).
        var blobStore: SharedBlobDirectory?
        /// Whether `blob_store.marked_at` was seen set (a blob directory was marked).
        var blobDirectoryMarked = false
    }
    /// This instance's random id (32 hex digits, new at each start): the blob files it writes
    /// are named with it, so instances sharing a blob directory never write the same file.
    public let blobInstance = SharedBlobDirectory.newInstanceID()
    let state = Mutex(State())
    let stop = AsyncStream<Void>.makeStream()
    let probe: Probe
    let listenerErrors = RepeatedErrorLog()
    let connectionIDs = Atomic<Int>(1)
    let verifiedTokens: VerifiedTokens

    /// - Throws: `.failed` when the TLS configuration cannot be made (an unreadable
    ///   `sslrootcert` file). No connection is made here.
    public init(_ configuration: Configuration, logger: Logger) throws(StorageError) {
        self.configuration = configuration
        self.logger = logger
        let url = configuration.location
        let password = configuration.password?.revealed
        var clientConfig: PostgresClient.Configuration
        var connConfig: PostgresConnection.Configuration
        switch url.sslMode {
        case .disable:
            clientConfig = .init(host: url.host, port: url.port, username: url.user,
                                 password: password, database: url.database, tls: .disable)
            connConfig = .init(host: url.host, port: url.port, username: url.user,
                               password: password, database: url.database, tls: .disable)
        case .require, .verifyFull:
            var tls = TLSConfiguration.makeClientConfiguration()
            if url.sslMode == .require {
                // libpq's `require`: encrypted, the certificate not checked.
                tls.certificateVerification = .none
            } else if let root = url.sslRootCert {
                tls.trustRoots = .file(root)
            }
            let context: NIOSSLContext
            do {
                context = try NIOSSLContext(configuration: tls)
            } catch {
                throw StorageError(.failed, "\(url.named): cannot set up TLS (sslmode=\(url.sslMode.rawValue)"
                                   + (url.sslRootCert.map { ", sslrootcert \(SafeText.quoted($0))" } ?? "")
                                   + "): \(SafeText.escaped(String(describing: error)))")
            }
            clientConfig = .init(host: url.host, port: url.port, username: url.user,
                                 password: password, database: url.database, tls: .require(tls))
            connConfig = .init(host: url.host, port: url.port, username: url.user,
                               password: password, database: url.database,
                               tls: .require(context))
        }
        // Times read as text (`encryption_kek.created_at`) are in UTC whatever the server's zone.
        clientConfig.options.additionalStartupParameters = [("TimeZone", "UTC"), ("application_name", "custos-collector")]
        connConfig.options.additionalStartupParameters = [("TimeZone", "UTC"), ("application_name", "custos-collector")]
        clientConfig.options.maximumConnections = max(1, configuration.maximumConnections)
        clientConfig.options.connectTimeout = min(configuration.operationTimeout, .seconds(10))
        connConfig.options.connectTimeout = Self.timeAmount(min(configuration.operationTimeout, .seconds(5)))
        connectionConfiguration = connConfig
        client = PostgresClient(configuration: clientConfig, backgroundLogger: Self.quiet)
        probe = Probe()
        verifiedTokens = VerifiedTokens(ttl: max(.zero, configuration.tokenCacheTTL))
    }

    static func timeAmount(_ d: Duration) -> TimeAmount {
        .nanoseconds(d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000)
    }

    // MARK: Lifecycle

    /// Runs the connection pool and the `LISTEN` connection until ``close()``, cancellation
    /// or a graceful shutdown of the service group; then every connection is closed and later
    /// calls fail `.unavailable`. Call it once.
    public func run() async throws {
        let start = state.withLock { s -> Bool in
            guard !s.running, !s.closed else { return false }
            s.running = true
            return true
        }
        guard start else { return }
        logger.info("storage: PostgreSQL at \(location) (sslmode=\(configuration.location.sslMode.rawValue))")
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.client.run() }
            group.addTask { await self.listenForKEKChanges() }
            group.addTask { for await _ in self.stop.stream {} }
            _ = await group.next()
            group.cancelAll()
        }
        let (subscribers, waiters) = state.withLock { s in
            s.closed = true
            s.runEnded = true
            defer { s.subscribers = [:]; s.stopWaiters = [] }
            return (Array(s.subscribers.values), s.stopWaiters)
        }
        stop.continuation.finish()
        subscribers.forEach { $0.finish() }
        waiters.forEach { $0.resume() }
    }

    /// Closes every connection (``run()`` returns) and ends the ``kekChanges()`` streams; later
    /// calls throw `.unavailable`. Returns once ``run()`` has ended (at once when it never ran).
    public func close() async {
        // This instance's blob files will not grow any more: say so (their end marker), so that
        // retention may delete its last file once no row points into it.
        if let store = state.withLock({ $0.blobStore }) { await store.finish() }
        let (wait, subscribers) = state.withLock { s -> (Bool, [AsyncStream<Void>.Continuation]) in
            s.closed = true
            let subs = Array(s.subscribers.values)
            s.subscribers = [:]
            return (s.running && !s.runEnded, subs)
        }
        subscribers.forEach { $0.finish() }
        stop.continuation.finish()
        guard wait else { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.runEnded { return true }
                s.stopWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    public func health() async -> StorageHealth {
        do {
            _ = try await withClient("health check") { client in
                try await client.query("SELECT 1", logger: Self.quiet).collect().count
            }
            return StorageHealth(backend: "postgresql", location: configuration.location.shown, reachable: true)
        } catch {
            return StorageHealth(backend: "postgresql", location: configuration.location.shown, reachable: false, problem: error.message)
        }
    }

    // MARK: Calls

    /// Runs `body` with the pool, after the schema is ready, within the operation timeout;
    /// every error becomes a ``StorageError`` (see the type's comment).
    func withClient<T: Sendable>(_ what: String, migrate: Bool = true, timeout: Duration? = nil,
                                 _ body: @escaping @Sendable (PostgresClient) async throws -> T) async throws(StorageError) -> T {
        let closed = state.withLock { $0.closed }
        if closed { throw StorageError(.unavailable, "\(location): \(what): the storage is closed") }
        if migrate { try await ensureSchema() }
        let client = self.client
        let timeout = timeout ?? configuration.operationTimeout
        do {
            return try await withDeadline(timeout) { try await body(client) }
        } catch is DeadlineExceeded {
            // Read now, not before the call: under load `run()` may start only while we wait.
            let why = state.withLock({ $0.running }) ? "no answer within \(timeout)"
                : "PostgresStorage.run() is not running (the owner must run it)"
            throw StorageError(.unavailable, "\(location): \(what): \(why)")
        } catch {
            throw await storageError(error, what)
        }
    }

    /// Runs `body` on one pooled connection (in autocommit: each statement is a transaction of
    /// its own). A serialization failure or deadlock (SQLSTATE 40001, 40P01) is retried twice
    /// with the whole body.
    func onConnection<T: Sendable>(_ what: String, migrate: Bool = true, timeout: Duration? = nil,
                                   _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws(StorageError) -> T {
        try await withClient(what, migrate: migrate, timeout: timeout) { client in
            var attempt = 0
            while true {
                attempt += 1
                do {
                    return try await client.withConnection { conn in try await body(conn) }
                } catch let e as PSQLError where attempt < 3 && ["40001", "40P01"].contains(e.serverInfo?[.sqlState] ?? "") {
                    continue
                }
            }
        }
    }

    /// Runs `body` in one transaction on one pooled connection (BEGIN … COMMIT; ROLLBACK when
    /// it throws). A serialization failure or deadlock (SQLSTATE 40001, 40P01) is retried
    /// twice with the whole body.
    func inTransaction<T: Sendable>(_ what: String, migrate: Bool = true, timeout: Duration? = nil,
                                    _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws(StorageError) -> T {
        try await onConnection(what, migrate: migrate, timeout: timeout) { conn in
            try await conn.query("BEGIN", logger: Self.quiet)
            do {
                let value = try await body(conn)
                try await conn.query("COMMIT", logger: Self.quiet)
                return value
            } catch {
                do { try await conn.query("ROLLBACK", logger: Self.quiet) } catch { try? await conn.close() }
                throw error
            }
        }
    }

    // MARK: Deadline

    struct DeadlineExceeded: Error {}

    /// `body`'s result, or ``DeadlineExceeded`` after `timeout`, or the probe's error when no
    /// connection can be made (checked once `body` has run a second). On time-out `body` is
    /// cancelled and left to end by itself (a query in flight cannot be recalled; a batch
    /// committed after its caller gave up is answered `duplicate` when the agent retries).
    func withDeadline<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let race = Race<T>()
        let probeAfter = min(.seconds(1), timeout / 2)
        let probe = self.probe
        let storage = self
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Result<T, any Error>, Never>) in
                race.start(c)
                race.add(Task {
                    do { race.finish(.success(try await body())) } catch { race.finish(.failure(error)) }
                })
                race.add(Task {
                    do { try await Task.sleep(for: probeAfter) } catch { return }
                    if let problem = await probe.check(storage) {
                        race.finish(.failure(problem))
                        return
                    }
                    do { try await Task.sleep(for: timeout - probeAfter) } catch { return }
                    race.finish(.failure(DeadlineExceeded()))
                })
            }
        } onCancel: {
            race.finish(.failure(CancellationError()))
        }
        return try result.get()
    }

    // MARK: Errors

    /// `error` as a ``StorageError`` naming the database and `what`; for errors that may mean
    /// "cannot connect", a probe connection says which.
    func storageError(_ error: any Error, _ what: String) async -> StorageError {
        if let e = error as? StorageError { return e }
        if error is CancellationError { return StorageError(.unavailable, "\(location): \(what): cancelled") }
        if let e = error as? PostgresDecodingError {
            return StorageError(.corrupt, "\(location): \(what): column \(SafeText.quoted(e.columnName)) does not read as \(e.targetType) (\(e.postgresType))")
        }
        if let e = error as? PSQLError, let mapped = Self.classify(e, location: location, what: what) { return mapped }
        if state.withLock({ $0.closed }) { return StorageError(.unavailable, "\(location): \(what): the storage is closed") }
        // Not a server answer (a pool error, a closed connection): ask the server directly.
        if let problem = await probe.check(self) { return problem }
        if let e = error as? PSQLError {
            return StorageError(.unavailable, "\(location): \(what): connection lost (\(e.code))")
        }
        let text = String(describing: error)
        if text.contains("CircuitBreakerTripped") {
            // postgres-nio's pool after 60 s without a connection: it fails calls at once until its
            // next attempt (at most a minute away) succeeds.
            return StorageError(.unavailable, "\(location): \(what): the connection pool is waiting to reconnect after an outage")
        }
        return StorageError(.unavailable, "\(location): \(what): \(SafeText.escaped(text))")
    }

    /// A server's or a connection's error as a ``StorageError``; nil when only a probe can tell.
    static func classify(_ e: PSQLError, location: String, what: String) -> StorageError? {
        switch e.code {
        case .server:
            let sqlState = e.serverInfo?[.sqlState] ?? ""
            let message = SafeText.escaped(e.serverInfo?[.message] ?? "")
            let detail = "\(message) (SQLSTATE \(SafeText.escaped(sqlState)))"
            switch sqlState {
            case "28P01", "28000":
                return StorageError(.failed, "\(location): \(what): the server refused the login: \(detail); check the user in the URL and the password file")
            case "3D000":
                return StorageError(.failed, "\(location): \(what): no such database: \(detail)")
            case "42501":
                return StorageError(.failed, "\(location): \(what): permission denied: \(detail)")
            case "57P01", "57P02", "57P03", "55P03", "40001", "40P01", "25006":
                return StorageError(.unavailable, "\(location): \(what): the server is not available now: \(detail)")
            default:
                if sqlState.hasPrefix("08") || sqlState.hasPrefix("53") || sqlState.hasPrefix("58") {
                    return StorageError(.unavailable, "\(location): \(what): the server is not available now: \(detail)")
                }
                return StorageError(.failed, "\(location): \(what): \(detail)")
            }
        case .sslUnsupported:
            return StorageError(.failed, "\(location): \(what): the server does not offer TLS, which the URL's sslmode requires (sslmode=disable only for a server you reach over a trusted network)")
        case .authMechanismRequiresPassword:
            return StorageError(.failed, "\(location): \(what): the server asks for a password and none was given")
        case .unsupportedAuthMechanism, .saslError:
            return StorageError(.failed, "\(location): \(what): authentication failed (\(e.code)); check the password file")
        case .connectionError:
            guard let underlying = e.underlying else {
                return StorageError(.unavailable, "\(location): \(what): cannot connect")
            }
            if underlying is NIOSSLError || underlying is NIOSSLExtraError || underlying is BoringSSLError {
                return StorageError(.failed, "\(location): \(what): TLS failed: \(SafeText.escaped(String(describing: underlying)))")
            }
            return StorageError(.unavailable, "\(location): \(what): cannot connect: \(connectFailure(underlying))")
        case .serverClosedConnection, .uncleanShutdown, .clientClosedConnection, .poolClosed, .queryCancelled:
            return nil
        default:
            return StorageError(.failed, "\(location): \(what): \(e.code)")
        }
    }

    /// The reason in a connect error: the system's text for an errno (`connection refused`),
    /// else the error's description, escaped.
    static func connectFailure(_ error: any Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)) }
        let text = String(describing: error)
        // NIOConnectionError lists each address tried; keep the first errno text it names.
        for known in ["Connection refused", "Connection reset by peer", "No route to host", "Network is unreachable",
                      "Connection timed out", "connectTimeout"] where text.contains(known) {
            return known == "connectTimeout" ? "connection timed out" : known
        }
        if text.contains("dnsAError") && !text.contains("connectionErrors: [") { return "cannot resolve the host name" }
        return SafeText.escaped(text)
    }

    // MARK: Probe

    /// One direct connection attempt, shared by the calls waiting at the same time and
    /// remembered for half a second, that says why the pool has no connection (or that
    /// ``run()`` is not running, so the pool cannot make any).
    final class Probe: Sendable {
        private let state = Mutex<(task: Task<StorageError?, Never>?, at: ContinuousClock.Instant?, result: StorageError?)>((nil, nil, nil))

        func check(_ storage: PostgresStorage) async -> StorageError? {
            if !storage.state.withLock({ $0.running }) {
                return StorageError(.unavailable, "\(storage.location): PostgresStorage.run() is not running (the owner must run it)")
            }
            let task = state.withLock { s -> Task<StorageError?, Never> in
                if let t = s.task { return t }
                if let at = s.at, at.duration(to: .now) < .milliseconds(500) {
                    let r = s.result
                    return Task { r }
                }
                let t = Task { await storage.connectOnce() }
                s.task = t
                return t
            }
            let result = await task.value
            state.withLock { s in
                if s.task == task { s = (nil, .now, result) }
            }
            return result
        }
    }

    /// Opens and closes one connection; nil when it worked, else why not.
    func connectOnce() async -> StorageError? {
        do {
            let conn = try await PostgresConnection.connect(configuration: connectionConfiguration,
                                                            id: connectionIDs.add(1, ordering: .relaxed).oldValue,
                                                            logger: Self.quiet)
            try? await conn.close()
            return nil
        } catch let e as PSQLError {
            return Self.classify(e, location: location, what: "connect")
                ?? StorageError(.unavailable, "\(location): connect: the server closed the connection (\(e.code))")
        } catch {
            return StorageError(.unavailable, "\(location): connect: \(Self.connectFailure(error))")
        }
    }
}

/// The first of several tasks to finish resumes the continuation; the others are cancelled.
final class Race<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Result<T, any Error>, Never>?
        var result: Result<T, any Error>?
        var tasks: [Task<Void, Never>] = []
    }
    private let state = Mutex(State())

    func start(_ c: CheckedContinuation<Result<T, any Error>, Never>) {
        let early = state.withLock { s -> Result<T, any Error>? in
            if let r = s.result { return r }
            s.continuation = c
            return nil
        }
        if let early { c.resume(returning: early) }
    }

    func add(_ task: Task<Void, Never>) {
        let done = state.withLock { s -> Bool in
            if s.result != nil { return true }
            s.tasks.append(task)
            return false
        }
        if done { task.cancel() }
    }

    func finish(_ result: Result<T, any Error>) {
        let (c, tasks) = state.withLock { s -> (CheckedContinuation<Result<T, any Error>, Never>?, [Task<Void, Never>]) in
            guard s.result == nil else { return (nil, []) }
            s.result = result
            defer { s.continuation = nil; s.tasks = [] }
            return (s.continuation, s.tasks)
        }
        c?.resume(returning: result)
        tasks.forEach { $0.cancel() }
    }
}
