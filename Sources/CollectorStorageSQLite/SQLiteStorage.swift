import CollectorStorage
import CustosBase
import Envelope
import Foundation
import GRDB
import ServiceLifecycle
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// ``CollectorStorage`` on one SQLite file and its blob directory, through GRDB: the embedded
/// default (`make demo`, small sites). Several processes may open the same file (the collector
/// and the `custos` CLI): SQLite's locks serialise their writes.
///
/// The file is in WAL mode with `synchronous=FULL` (an acknowledged record survives a power
/// cut) and created owner-only (0600; SQLite gives its `-wal`/`-shm` files the same mode).
/// Schema: docs/API.md "Storage" (``SQLiteSchema``); the seed's statement
/// `insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/etc/custos/keys/publickey.crt', '/etc/custos/keys/keypair.pem');`
/// works verbatim in the `sqlite3` CLI. Ids are stored as lowercase hex text (readable in
/// `sqlite3`; text order is byte order), capture kinds by name, times as Unix ms.
/// Sealed blobs of ``blobFileMinBytes`` or more go to append-only blob files (``BlobFiles``).
///
/// Errors (``StorageError``, each naming the file): `SQLITE_BUSY`/`SQLITE_LOCKED` (after the
/// busy timeout, 10 s by default), I/O errors (`SQLITE_IOERR`, `SQLITE_FULL`) and every blob-file failure
/// while appending are `.unavailable`; `SQLITE_CORRUPT` and a stored row that does not parse
/// (an id that is not hex of the right length, an agent id `AgentID` refuses, an unknown kind)
/// are `.corrupt` naming the table, row and column; anything else is `.failed`. A listing that
/// meets a row that does not parse throws (it does not skip it): the error names the row to fix
/// or delete, and no row is ever left out of a listing silently.
///
/// Argument checks (``StorageCheck``, as every backend): text with NUL, times outside years
/// 1–9999 and limits outside 1…10,000 are `.invalidArgument`, before anything is written.
///
/// ``kekChanges()`` yields nothing (SQLite has no way to hear another process's INSERT); the
/// stream finishes at ``close()``. The collector's KEK registry re-reads `encryption_kek` when an
/// upload names a KEK id it does not know.
///
/// Lifecycle: usable as soon as `init` returns; ``run()`` is not needed for calls and only
/// waits (suspended, no polling) until ``close()``, cancellation or a graceful shutdown of the
/// service group, then closes the storage: it ties the close to the owner's `ServiceGroup`.
///
/// Thread use: every database access runs on GRDB's own dispatch queues (one writer, a pool of
/// readers), never on the Swift concurrency pool; the initializer blocks (open, migrate).
public final class SQLiteStorage: CollectorStorage {
    /// The database file, as given.
    public let path: String
    /// The directory of blob files: by default the database's real path (symlinks resolved, as
    /// SQLite resolves them for its `-wal` file) plus `.blobs`.
    public let blobDirectory: String
    /// Sealed blobs of at least this many bytes (32 KiB: screen frames) go to blob files;
    /// smaller ones (keystroke chunks) stay inline in `captures.blob`.
    public static let blobFileMinBytes = BlobFiles.minBytes

    /// This database's id (`blob_store.id`, made by the `v2-blob-files` migration, never
    /// changed), the content of its blob directory's marker file.
    let storeID: String
    /// The connections (one writer, readers); tests read pragmas and query plans through it.
    package let pool: DatabasePool
    private let state = Mutex(State())

    private struct State {
        var closed = false
        var running = false
        var nextWatcher = 0
        var kekWatchers: [Int: AsyncStream<Void>.Continuation] = [:]
    }
    /// Finished by ``close()``: ``run()`` waits on it.
    private let closing = AsyncStream<Void>.makeStream()

    /// Opens (creating if needed, mode 0600) the database at `path` and brings its schema up to
    /// date (``SQLiteSchema``).
    /// - Parameters:
    ///   - blobDirectory: where blob files go; nil: beside the database (see ``blobDirectory``).
    ///   - busyTimeout: how long an access waits for another process's lock before it fails
    ///     with `.unavailable` (seconds; `sqlite3_busy_timeout`).
    /// - Throws: ``StorageError`` naming the file: `.failed` when it cannot be opened or migrated,
    ///   or when a newer build migrated it (it records migrations this build does not know);
    ///   `.unavailable` when it is locked or an I/O error occurs.
    public init(path: String, blobDirectory: String? = nil, busyTimeout: TimeInterval = 10) throws(StorageError) {
        self.path = path
        var config = Configuration()
        config.busyMode = .timeout(busyTimeout)
        config.label = "custos-collector"
        // A new database file is created owner-only; SQLite gives its -wal and -shm files the
        // database file's mode (https://www.sqlite.org/tempfiles.html), and blob files are 0600.
        // No O_EXCL: it refuses a symlink to a file not yet there, which SQLite would then create
        // 0644; without it an existing file is only opened, never truncated.
        if !FileManager.default.fileExists(atPath: path) {
            let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY, 0o600)
            if fd >= 0 { _ = Glibc.close(fd) }
        }
        let shownPath = SafeText.escaped(path)
        do {
            pool = try DatabasePool(path: path, configuration: config)
            // GRDB puts WAL databases on synchronous=NORMAL. An acknowledgement makes the agent
            // delete its copy, so a commit must survive power loss: FULL
            // (https://www.sqlite.org/pragma.html#pragma_synchronous). Only the writer commits.
            try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            let migrator = SQLiteSchema.migrator
            let (applied, known) = try pool.read { db in
                (try migrator.appliedIdentifiers(db), Set(migrator.migrations))
            }
            let unknown = applied.subtracting(known)
            guard unknown.isEmpty else {
                throw StorageError(.failed, "\(shownPath): the database was migrated by a newer Custos (migrations \(unknown.sorted().map { SafeText.quoted($0) }.joined(separator: ", ")) are unknown to this build); use that version or newer")
            }
            try migrator.migrate(pool)
            storeID = try pool.read { db in try String.fetchOne(db, sql: "SELECT id FROM blob_store LIMIT 1") } ?? ""
        } catch {
            throw Self.storageError(error, database: shownPath, what: "cannot open or migrate the collector database")
        }
        if let blobDirectory {
            self.blobDirectory = blobDirectory
        } else if let real = realpath(path, nil) {
            self.blobDirectory = String(cString: real) + ".blobs"
            free(real)
        } else {
            self.blobDirectory = path + ".blobs"
        }
    }

    /// Checks, without writing to it, that the SQLite file at `path` is a collector database
    /// (its migrations table records the first migration, `v1`, and it has the tables `agents`
    /// and `captures`: an agent's spool database, also GRDB-migrated, does not), for the commands that must not
    /// turn another SQLite file into one (``StorageOpener`` with `createIfMissing: false`).
    /// - Throws: ``StorageError`` naming the file: `.notFound` when it has no collector schema
    ///   (an empty file, another program's database, or a plain `cp` of a running collector's
    ///   database whose tables are still in its `-wal` file), `.failed` when it is not an SQLite
    ///   file or cannot be read.
    public static func checkCollectorSchema(path: String) throws(StorageError) {
        let shown = SafeText.escaped(path)
        let hasSchema: Bool
        do {
            var config = Configuration()
            config.readonly = true
            let queue = try DatabaseQueue(path: path, configuration: config)
            hasSchema = try queue.read { db in
                try db.tableExists("grdb_migrations") && db.tableExists("captures") && db.tableExists("agents")
                    && (try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM grdb_migrations WHERE identifier = 'v1')") ?? false)
            }
            try queue.close()
        } catch {
            throw storageError(error, database: shown, what: "cannot read it as a collector database")
        }
        guard hasSchema else {
            throw StorageError(.notFound, "\(shown): not a collector database (no Custos schema in it); expected the collector's database or a copy made with sqlite3 collector.db \".backup copy.db\" (a plain cp of a running collector's database leaves its newest data in collector.db-wal)")
        }
    }

    deinit {
        for watcher in state.withLock({ $0.kekWatchers.values }) { watcher.finish() }
        closing.continuation.finish()
    }

    // MARK: Errors and access

    /// Maps any error met while accessing the database to a ``StorageError`` naming `database`
    /// (escaped) and `what` was being done. See the type's documentation for the codes.
    static func storageError(_ error: any Error, database: String, what: String) -> StorageError {
        if let e = error as? StorageError { return e }
        if let e = error as? DatabaseError {
            let code: StorageError.Code = switch e.resultCode {
            case .SQLITE_BUSY, .SQLITE_LOCKED, .SQLITE_IOERR, .SQLITE_FULL, .SQLITE_PROTOCOL: .unavailable
            case .SQLITE_CORRUPT: .corrupt
            default: .failed
            }
            return StorageError(code, "\(database): \(what): \(SafeText.escaped(e.description))")
        }
        if error is CancellationError {
            return StorageError(.unavailable, "\(database): \(what): cancelled")
        }
        return StorageError(.failed, "\(database): \(what): \(SafeText.escaped(String(describing: error)))")
    }

    private func mapped(_ error: any Error, _ what: String) -> StorageError {
        if state.withLock({ $0.closed }), !(error is StorageError) {
            return StorageError(.unavailable, "\(SafeText.escaped(path)): \(what): the storage is closed")
        }
        return Self.storageError(error, database: SafeText.escaped(path), what: what)
    }

    private func checkOpen(_ what: String) throws(StorageError) {
        if state.withLock({ $0.closed }) {
            throw StorageError(.unavailable, "\(SafeText.escaped(path)): \(what): the storage is closed")
        }
    }

    /// Runs `body` on a reader connection (GRDB's queue); maps errors.
    func read<T: Sendable>(_ what: String, _ body: @escaping @Sendable (Database) throws -> T) async throws(StorageError) -> T {
        try checkOpen(what)
        do { return try await pool.read(body) } catch { throw mapped(error, what) }
    }

    /// Runs `body` in a write transaction on the writer connection (GRDB's queue); maps errors.
    func write<T: Sendable>(_ what: String, _ body: @escaping @Sendable (Database) throws -> T) async throws(StorageError) -> T {
        try checkOpen(what)
        do { return try await pool.write(body) } catch { throw mapped(error, what) }
    }

    /// Runs `body` on the writer connection outside any transaction (it opens its own); maps errors.
    func writeWithoutTransaction<T: Sendable>(_ what: String,
                                              _ body: @escaping @Sendable (Database) throws -> T) async throws(StorageError) -> T {
        try checkOpen(what)
        do { return try await pool.writeWithoutTransaction(body) } catch { throw mapped(error, what) }
    }

    /// The database named in messages (escaped).
    var shownPath: String { SafeText.escaped(path) }

    static func nowMs() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    func checkLimit(_ limit: Int, _ what: String) throws(StorageError) {
        try StorageCheck.limit(limit, what, context: shownPath)
    }

    // MARK: Lifecycle

    /// Waits, suspended, until ``close()``, cancellation of the calling task or a graceful
    /// shutdown of the service group; then closes the storage (when not closed yet) and
    /// returns. Calls work whether or not it runs. A second call while one runs returns at once.
    public func run() async throws {
        let start = state.withLock { s -> Bool in
            guard !s.running else { return false }
            s.running = true
            return true
        }
        guard start else { return }
        let closing = self.closing.stream
        // An AsyncStream's iteration ends when it finishes (close) or the task is cancelled.
        await cancelWhenGracefulShutdown {
            for await _ in closing {}
        }
        await close()
    }

    public func health() async -> StorageHealth {
        do {
            _ = try await read("check the database") { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM blob_store") }
            return StorageHealth(backend: "sqlite", location: path, reachable: true)
        } catch {
            return StorageHealth(backend: "sqlite", location: path, reachable: false, problem: error.message)
        }
    }

    /// Closes the database connections (waiting for accesses under way) and finishes every
    /// ``kekChanges()`` stream; later calls throw `.unavailable`. Closing twice does nothing.
    public func close() async {
        let watchers: [AsyncStream<Void>.Continuation]? = state.withLock { s in
            if s.closed { return nil }
            s.closed = true
            defer { s.kekWatchers = [:] }
            return Array(s.kekWatchers.values)
        }
        guard let watchers else { return }
        for w in watchers { w.finish() }
        closing.continuation.finish()
        // close() waits for accesses under way: off the concurrency pool.
        let pool = self.pool
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                try? pool.close()
                done.resume()
            }
        }
    }

    // MARK: Agents

    public func addAgent(_ id: AgentID) async throws(StorageError) -> Secret {
        let token = AgentToken.new()
        let hash = AgentToken.hash(token)
        let now = Self.nowMs()
        try await write("add agent \(id)") { db in
            if try Bool.fetchOne(db, sql: "SELECT 1 FROM agents WHERE agent_id = ?", arguments: [id.rawValue]) != nil {
                throw StorageError(.alreadyExists, "agent '\(id)' exists already (rotate its token instead)")
            }
            try db.execute(sql: "INSERT INTO agents (agent_id, token_hash, created_at) VALUES (?, ?, ?)",
                           arguments: [id.rawValue, hash, now])
        }
        return token
    }

    public func rotateToken(_ id: AgentID) async throws(StorageError) -> Secret {
        let token = AgentToken.new()
        let hash = AgentToken.hash(token)
        try await write("rotate token of agent \(id)") { db in
            try db.execute(sql: "UPDATE agents SET token_hash = ? WHERE agent_id = ?", arguments: [hash, id.rawValue])
            if db.changesCount == 0 { throw StorageError(.notFound, "no agent '\(id)'") }
        }
        return token
    }

    public func removeAgent(_ id: AgentID) async throws(StorageError) {
        try await write("remove agent \(id)") { db in
            try db.execute(sql: "DELETE FROM agents WHERE agent_id = ?", arguments: [id.rawValue])
            if db.changesCount == 0 { throw StorageError(.notFound, "no agent '\(id)'") }
        }
    }

    public func agents() async throws(StorageError) -> [AgentInfo] {
        let database = shownPath
        return try await read("list agents") { db in
            try Row.fetchAll(db, sql: "SELECT agent_id, created_at FROM agents ORDER BY agent_id").map { row in
                let r = RowReader(row, database: database, table: "agents", key: "agent_id")
                return AgentInfo(id: try r.agentID("agent_id"), createdAtMs: try r.int("created_at"))
            }
        }
    }

    public func agents(after: AgentID?, limit: Int) async throws(StorageError) -> [AgentInfo] {
        try checkLimit(limit, "agents")
        let database = shownPath
        let (sql, arguments) = Self.agentPageSQL(after: after, limit: limit)
        return try await read("list agents") { db in
            try Row.fetchAll(db, sql: sql, arguments: arguments).map { row in
                let r = RowReader(row, database: database, table: "agents", key: "agent_id")
                return AgentInfo(id: try r.agentID("agent_id"), createdAtMs: try r.int("created_at"))
            }
        }
    }

    /// The statement of one page of ``agents(after:limit:)``: a range of the primary key's
    /// index (`agent_id` is TEXT with SQLite's BINARY collation: byte order, as `AgentID`
    /// compares). Used by the method and its query-plan test.
    package static func agentPageSQL(after: AgentID?, limit: Int) -> (String, StatementArguments) {
        if let after {
            return ("SELECT agent_id, created_at FROM agents WHERE agent_id > ? ORDER BY agent_id LIMIT ?", [after.rawValue, limit])
        }
        return ("SELECT agent_id, created_at FROM agents ORDER BY agent_id LIMIT ?", [limit])
    }

    /// ``AgentToken/matches(_:storedHash:)``: constant-time, the same work for an unknown agent.
    public func authenticate(_ id: AgentID, token: Secret) async throws(StorageError) -> Bool {
        let stored = try await read("look up agent \(id)") { db in
            try Data.fetchOne(db, sql: "SELECT token_hash FROM agents WHERE agent_id = ?", arguments: [id.rawValue])
        }
        return AgentToken.matches(token, storedHash: stored)
    }

    // MARK: KEKs

    /// Empty strings count as absent. - Throws: `.invalidArgument` when neither a path nor a
    /// PEM is given, or a text holds NUL.
    public func registerKEK(_ registration: KEKRegistration) async throws(StorageError) -> Int64 {
        let pubDatafile = registration.pubDatafile.flatMap { $0.isEmpty ? nil : $0 }
        let pem = registration.publicKeyPEM.flatMap { $0.isEmpty ? nil : $0 }
        guard pubDatafile != nil || pem != nil else {
            throw StorageError(.invalidArgument, "\(shownPath): a KEK needs its public key: a pub_datafile path or the PEM itself")
        }
        for (text, field) in [(pubDatafile, "pub_datafile"), (registration.privDatafile, "priv_datafile"), (pem, "pub_pem")] {
            if let text { try StorageCheck.text(text, "KEK registration \(field)", context: shownPath) }
        }
        let r = registration
        return try await write("register KEK \(pubDatafile.map { SafeText.quoted($0) } ?? "(PEM)")") { db in
            try db.execute(sql: """
                INSERT INTO encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile, kek_id, pub_pem)
                VALUES (?, ?, ?, ?, ?, ?)
                """, arguments: [r.active, r.privEncrypted, pubDatafile, r.privDatafile, r.kekID?.hex, pem])
            return db.lastInsertedRowID
        }
    }

    public func setKEKActive(rowID: Int64, active: Bool) async throws(StorageError) {
        try await write("set KEK row \(rowID) active") { db in
            try db.execute(sql: "UPDATE encryption_kek SET active = ? WHERE id = ?", arguments: [active, rowID])
            if db.changesCount == 0 { throw StorageError(.notFound, "no encryption_kek row \(rowID)") }
        }
    }

    public func setKEKID(rowID: Int64, kekID: KEKID) async throws(StorageError) {
        try await write("set KEK id of row \(rowID)") { db in
            try db.execute(sql: "UPDATE encryption_kek SET kek_id = ? WHERE id = ?", arguments: [kekID.hex, rowID])
            if db.changesCount == 0 { throw StorageError(.notFound, "no encryption_kek row \(rowID)") }
        }
    }

    /// `createdAt` is the column as stored: `YYYY-MM-DD HH:MM:SS` in UTC (`CURRENT_TIMESTAMP`,
    /// the column's default), or whatever a row inserted by hand put there.
    /// - Throws: `.corrupt` naming the row when one does not parse (a `kek_id` that is not 64
    ///   hex digits, an `active` that is not a boolean, neither path nor PEM).
    public func keks() async throws(StorageError) -> [KEKRow] {
        let database = shownPath
        return try await read("list KEKs") { db in
            try Row.fetchAll(db, sql: """
                SELECT id, active, priv_encrypted, pub_datafile, priv_datafile, pub_pem, kek_id, created_at
                FROM encryption_kek ORDER BY id
                """).map { row in
                let r = RowReader(row, database: database, table: "encryption_kek", key: "id")
                let pub = try r.optionalText("pub_datafile"), pem = try r.optionalText("pub_pem")
                guard pub != nil || pem != nil else { throw r.corrupt("pub_datafile", "a path when pub_pem is NULL") }
                // As stored: CURRENT_TIMESTAMP text, or whatever was typed by hand (informational).
                let createdAt: String? = switch (row["created_at"] as DatabaseValue).storage {
                case .string(let s): s
                case .int64(let i): String(i)
                case .double(let d): String(d)
                case .null, .blob: nil
                }
                return KEKRow(rowID: try r.int("id"), active: try r.flag("active"), privEncrypted: try r.flag("priv_encrypted"),
                              pubDatafile: pub, privDatafile: try r.optionalText("priv_datafile"), publicKeyPEM: pem,
                              kekID: try r.optionalID("kek_id", KEKIDKind.self),
                              createdAt: createdAt)
            }
        }
    }

    /// Yields nothing: SQLite cannot hear another process's INSERT (the registry re-reads
    /// `encryption_kek` on an unknown KEK id instead). Finishes at ``close()``.
    public func kekChanges() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        let added: Int? = state.withLock { s in
            if s.closed { return nil }
            let n = s.nextWatcher
            s.nextWatcher += 1
            s.kekWatchers[n] = continuation
            return n
        }
        guard let added else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.kekWatchers.removeValue(forKey: added) }
        }
        return stream
    }

    // MARK: Audit

    public func appendAudit(actor: String, action: String, detail: String) async throws(StorageError) -> AuditEntry {
        for (text, field) in [(actor, "actor"), (action, "action"), (detail, "detail")] {
            try StorageCheck.text(text, "audit entry \(field)", context: shownPath)
        }
        let now = Self.nowMs()
        return try await write("append audit record") { db in
            try db.execute(sql: "INSERT INTO audit_log (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                           arguments: [now, actor, action, detail])
            return AuditEntry(id: db.lastInsertedRowID, atMs: now, actor: actor, action: action, detail: detail)
        }
    }

    public func auditEntries(before: Int64?, limit: Int) async throws(StorageError) -> [AuditEntry] {
        try checkLimit(limit, "list audit log")
        let database = shownPath
        return try await read("list audit log") { db in
            try Row.fetchAll(db, sql: "SELECT id, at, actor, action, detail FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT ?",
                             arguments: [before ?? Int64.max, limit]).map { row in
                let r = RowReader(row, database: database, table: "audit_log", key: "id")
                return AuditEntry(id: try r.int("id"), atMs: try r.int("at"), actor: try r.text("actor"),
                                  action: try r.text("action"), detail: try r.text("detail"))
            }
        }
    }
}
