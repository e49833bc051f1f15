import CollectorStorage
import CollectorStorageSQLite
import Crypto
import CustosBase
import Foundation
import GRDB
import Wire

/// ``CollectorStore`` on one SQLite file (WAL mode, `synchronous=FULL`: an acknowledged record is on disk), through GRDB.
///
/// Schema (docs/API.md, "Storage"): `encryption_kek`, `encryption_dek`, `captures`, `agents`,
/// `audit_log`. The seed's statement works unchanged with the `sqlite3` CLI:
/// `insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/etc/custos/keys/publickey.crt', '/etc/custos/keys/keypair.pem');`
/// Ids are stored as lowercase hex text so they read well in `sqlite3`; times are Unix ms.
public final class SQLiteCollectorStore: CollectorStore {
    /// The database file.
    public let path: String
    /// The directory of blob files: the database's real path (symlinks resolved, as SQLite
    /// resolves them for its `-wal` file) plus `.blobs`.
    public let blobDirectory: String
    /// This database's id (`blob_store.id`, made by the `v2-blob-files` migration, never changed),
    /// the content of its blob directory's marker file.
    private let storeID: String
    private let pool: DatabasePool

    /// Opens (creating if needed) the database at `path` and brings the schema up to date.
    /// - Throws: ``CollectorError`` `.database` naming the file.
    public init(path: String) throws(CollectorError) {
        self.path = path
        var config = Configuration()
        config.busyMode = .timeout(10)
        config.label = "custos-collector"
        // A new database file is created owner-only; SQLite gives its -wal and -shm files the
        // database file's mode (https://www.sqlite.org/tempfiles.html), and blob files are 0600.
        if !FileManager.default.fileExists(atPath: path) {
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 { close(fd) }
        }
        do {
            pool = try DatabasePool(path: path, configuration: config)
            // GRDB puts WAL databases on synchronous=NORMAL. An acknowledgement makes the agent delete
            // its copy, so a commit must survive power loss: FULL (https://www.sqlite.org/pragma.html#pragma_synchronous).
            try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            try Self.migrator.migrate(pool)
            storeID = try pool.read { db in try String.fetchOne(db, sql: "SELECT id FROM blob_store LIMIT 1") } ?? ""
        } catch {
            throw CollectorError(.database, "\(path): cannot open or migrate the collector database: \(error)")
        }
        if let real = realpath(path, nil) {
            blobDirectory = String(cString: real) + ".blobs"
            free(real)
        } else {
            blobDirectory = path + ".blobs"
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE encryption_kek (
                    id INTEGER PRIMARY KEY,
                    active BOOLEAN NOT NULL DEFAULT 1,
                    priv_encrypted BOOLEAN NOT NULL DEFAULT 1,
                    pub_datafile TEXT NOT NULL,
                    priv_datafile TEXT,
                    kek_id TEXT,
                    created_at TEXT DEFAULT CURRENT_TIMESTAMP
                );
                CREATE TABLE encryption_dek (
                    dek_id TEXT PRIMARY KEY NOT NULL,
                    kek_id TEXT NOT NULL,
                    agent_id TEXT NOT NULL,
                    creation_time INTEGER NOT NULL,
                    record BLOB NOT NULL,
                    received_at INTEGER NOT NULL
                );
                CREATE INDEX encryption_dek_agent ON encryption_dek(agent_id, creation_time);
                CREATE TABLE captures (
                    blob_id TEXT PRIMARY KEY NOT NULL,
                    agent_id TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    dek_id TEXT NOT NULL,
                    kek_id TEXT NOT NULL,
                    sequence INTEGER NOT NULL,
                    capture_time INTEGER NOT NULL,
                    size INTEGER NOT NULL,
                    blob BLOB NOT NULL,
                    received_at INTEGER NOT NULL
                );
                CREATE INDEX captures_time ON captures(capture_time, sequence);
                CREATE INDEX captures_agent_time ON captures(agent_id, capture_time);
                CREATE TABLE agents (
                    agent_id TEXT PRIMARY KEY NOT NULL,
                    token_hash BLOB NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE TABLE audit_log (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at INTEGER NOT NULL,
                    actor TEXT NOT NULL,
                    action TEXT NOT NULL,
                    detail TEXT NOT NULL
                );
                """)
        }
        m.registerMigration("v2-blob-files") { db in
            // Large blobs live in blob files (BlobFiles); `blob` is then empty and these locate the bytes.
            try db.execute(sql: """
                ALTER TABLE captures ADD COLUMN blob_file INTEGER;
                ALTER TABLE captures ADD COLUMN blob_offset INTEGER;
                CREATE INDEX captures_blob_file ON captures(blob_file, blob_offset);
                CREATE TABLE blob_store (id TEXT NOT NULL);
                """)
            // This database's id, written into its blob directory's marker file (BlobFiles.markerName).
            try db.execute(sql: "INSERT INTO blob_store (id) VALUES (?)", arguments: [SQLiteCollectorStore.newToken()])
        }
        return m
    }

    /// Sealed blobs of at least this many bytes go to blob files (``blobDirectory``); smaller
    /// ones (keystroke chunks) stay inline in `captures.blob`, one write with the row.
    public static let blobFileMinBytes = BlobFiles.minBytes

    /// The sealed bytes of a `captures` row selected with `blob, blob_file, blob_offset, size`.
    private func blobBytes(_ row: Row) throws -> Data {
        guard let number: Int64 = row["blob_file"] else { return row["blob"] }
        let offset: Int64 = row["blob_offset"] ?? 0
        return try BlobFiles.read(directory: blobDirectory, number: number, offset: offset, size: row["size"])
    }

    private func run<T>(_ what: String, _ body: () throws -> T) throws(CollectorError) -> T {
        do { return try body() } catch let e as CollectorError { throw e } catch {
            throw CollectorError(.database, "\(path): \(what): \(error)")
        }
    }

    static func nowMs() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    // MARK: Agents

    /// A new token: 32 random bytes, base64url without padding (43 characters).
    static func newToken() -> String {
        let key = SymmetricKey(size: .bits256)
        let b64 = key.withUnsafeBytes { Data($0).base64EncodedString() }
        return b64.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func tokenHash(_ token: String) -> Data { Data(SHA256.hash(data: Data(token.utf8))) }

    public func addAgent(id: String) throws(CollectorError) -> String {
        do { _ = try AgentID(id) } catch { throw CollectorError(.invalidArgument, error.description) }
        let token = Self.newToken()
        let hash = Self.tokenHash(token)
        try run("add agent \(id)") {
            try pool.write { db in
                if try Bool.fetchOne(db, sql: "SELECT 1 FROM agents WHERE agent_id = ?", arguments: [id]) != nil {
                    throw CollectorError(.alreadyExists, "agent '\(id)' exists already (rotate its token instead)")
                }
                try db.execute(sql: "INSERT INTO agents (agent_id, token_hash, created_at) VALUES (?, ?, ?)",
                               arguments: [id, hash, Self.nowMs()])
            }
        }
        return token
    }

    public func rotateAgentToken(id: String) throws(CollectorError) -> String {
        let token = Self.newToken()
        let hash = Self.tokenHash(token)
        try run("rotate token of agent \(id)") {
            try pool.write { db in
                try db.execute(sql: "UPDATE agents SET token_hash = ? WHERE agent_id = ?", arguments: [hash, id])
                if db.changesCount == 0 { throw CollectorError(.notFound, "no agent '\(id)'") }
            }
        }
        return token
    }

    public func removeAgent(id: String) throws(CollectorError) {
        try run("remove agent \(id)") {
            try pool.write { db in
                try db.execute(sql: "DELETE FROM agents WHERE agent_id = ?", arguments: [id])
                if db.changesCount == 0 { throw CollectorError(.notFound, "no agent '\(id)'") }
            }
        }
    }

    public func listAgents() throws(CollectorError) -> [AgentInfo] {
        try run("list agents") {
            try pool.read { db in
                try Row.fetchAll(db, sql: "SELECT agent_id, created_at FROM agents ORDER BY agent_id").map {
                    AgentInfo(agentID: $0["agent_id"], createdAtMs: $0["created_at"])
                }
            }
        }
    }

    public func authenticate(agentID: String, token: String) async throws(CollectorError) -> Bool {
        let stored: Data?
        do {
            stored = try await pool.read { db in
                try Data.fetchOne(db, sql: "SELECT token_hash FROM agents WHERE agent_id = ?", arguments: [agentID])
            }
        } catch {
            throw CollectorError(.database, "\(path): look up agent '\(agentID)': \(error)")
        }
        // Compare digests in constant time; an unknown agent is compared against a dummy digest.
        let presented = Self.tokenHash(token)
        let expected = stored ?? Data(repeating: 0, count: presented.count)
        return constantTimeEqual(presented, expected) && stored != nil
    }

    // MARK: KEKs

    public func registerKEK(pubDatafile: String, privDatafile: String?, privEncrypted: Bool, active: Bool,
                            kekID: String?) throws(CollectorError) -> Int64 {
        try run("register KEK \(pubDatafile)") {
            try pool.write { db in
                try db.execute(sql: """
                    INSERT INTO encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile, kek_id)
                    VALUES (?, ?, ?, ?, ?)
                    """, arguments: [active, privEncrypted, pubDatafile, privDatafile, kekID])
                return db.lastInsertedRowID
            }
        }
    }

    public func setKEKActive(rowID: Int64, active: Bool) throws(CollectorError) {
        try run("set KEK row \(rowID) active") {
            try pool.write { db in
                try db.execute(sql: "UPDATE encryption_kek SET active = ? WHERE id = ?", arguments: [active, rowID])
                if db.changesCount == 0 { throw CollectorError(.notFound, "no encryption_kek row \(rowID)") }
            }
        }
    }

    public func setKEKID(rowID: Int64, kekID: String) throws(CollectorError) {
        try run("set KEK id of row \(rowID)") {
            try pool.write { db in
                try db.execute(sql: "UPDATE encryption_kek SET kek_id = ? WHERE id = ?", arguments: [kekID, rowID])
            }
        }
    }

    static func kekRow(_ r: Row) -> KEKRow {
        // `active`/`priv_encrypted` may hold 1/0 or, when typed by hand, 'true'/'false' text.
        func flag(_ v: DatabaseValue) -> Bool {
            switch v.storage {
            case .int64(let i): i != 0
            case .double(let d): d != 0
            case .string(let s): ["1", "true", "yes", "t", "y"].contains(s.lowercased())
            default: false
            }
        }
        return KEKRow(rowID: r["id"], active: flag(r["active"]), privEncrypted: flag(r["priv_encrypted"]),
                      pubDatafile: r["pub_datafile"] ?? "", privDatafile: r["priv_datafile"],
                      kekID: r["kek_id"], createdAt: r["created_at"])
    }

    public func listKEKs() throws(CollectorError) -> [KEKRow] {
        try run("list KEKs") {
            try pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM encryption_kek ORDER BY id").map(Self.kekRow) }
        }
    }

    public func activeKEKs() async throws(CollectorError) -> [KEKRow] {
        do {
            return try await pool.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM encryption_kek ORDER BY id").map(Self.kekRow).filter(\.active)
            }
        } catch {
            throw CollectorError(.database, "\(path): list active KEKs: \(error)")
        }
    }

    // MARK: Records

    public func ingest(_ items: [IngestItem], receivedAtMs: Int64) async throws(CollectorError) -> [IngestOutcome] {
        if items.isEmpty { return [] }
        do {
            return try await pool.writeWithoutTransaction { db in
                // IMMEDIATE: the write lock is held before anything is appended to a blob file, and
                // until the appended bytes are either committed or cut off again, so two processes
                // on one database never append over each other's acknowledged blobs.
                try db.beginTransaction(.immediate)
                var appender: BlobAppender?
                let outcomes: [IngestOutcome]
                do {
                    outcomes = try self.insert(items, receivedAtMs: receivedAtMs, db: db, appender: &appender)
                    // The blob bytes are durable before the commit makes their rows visible.
                    try appender?.sync()
                } catch {
                    appender?.rollback()  // still holding the write lock
                    try? db.rollback()
                    throw error
                }
                do {
                    try db.commit()
                } catch {
                    // The appended bytes stay: SQLite may have dropped the lock already (automatic
                    // rollback), or WAL recovery may still commit the rows. Unreferenced bytes are
                    // never read.
                    if db.isInsideTransaction { try? db.rollback() }
                    throw error
                }
                return outcomes
            }
        } catch {
            throw CollectorError(.database, "\(path): store \(items.count) records: \(error)")
        }
    }

    /// Inserts `items` inside the caller's transaction, appending large blobs through `appender`
    /// (opened at the first one); returns one outcome per item.
    private func insert(_ items: [IngestItem], receivedAtMs: Int64, db: Database,
                        appender: inout BlobAppender?) throws -> [IngestOutcome] {
        var outcomes: [IngestOutcome] = []
        outcomes.reserveCapacity(items.count)
        var batchDEKs = Set<String>()
        for item in items {
            switch item {
            case let .dek(dekID, kekID, agentID, creationTimeMs, record):
                try db.execute(sql: """
                    INSERT OR IGNORE INTO encryption_dek (dek_id, kek_id, agent_id, creation_time, record, received_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [dekID, kekID, agentID, creationTimeMs, record, receivedAtMs])
                if db.changesCount > 0 {
                    outcomes.append(.stored)
                    batchDEKs.insert(dekID)
                    continue
                }
                let old = try Row.fetchOne(db, sql: "SELECT record, agent_id FROM encryption_dek WHERE dek_id = ?",
                                           arguments: [dekID])
                if let old, old["agent_id"] != agentID {
                    outcomes.append(.otherAgent)
                } else if let old, old["record"] == record {
                    outcomes.append(.duplicate)
                    batchDEKs.insert(dekID)
                } else {
                    outcomes.append(.conflict)
                }
            case let .blob(blobID, agentID, kind, dekID, kekID, sequence, captureTimeMs, blob):
                if let row = try Row.fetchOne(db, sql: """
                    SELECT blob, blob_file, blob_offset, size, agent_id, kek_id, kind, dek_id, sequence, capture_time
                    FROM captures WHERE blob_id = ?
                    """, arguments: [blobID]) {
                    // Another agent's blob id: answered as a new id would be (see IngestOutcome.otherAgent).
                    guard row["agent_id"] == agentID else { outcomes.append(.otherAgent); continue }
                    let size: Int = row["size"]
                    let sameRow = size == blob.count && row["agent_id"] == agentID && row["kek_id"] == kekID
                        && row["kind"] == kind && row["dek_id"] == dekID
                        && row["sequence"] == sequence && row["capture_time"] == captureTimeMs
                    guard sameRow else { outcomes.append(.conflict); continue }
                    let stored: Data
                    do {
                        stored = try self.blobBytes(row)
                    } catch is StorageError {
                        // The stored copy is unreadable (its blob file lost, cut short or damaged):
                        // the agent's copy, same header and size, repairs the row.
                        let (file, offset) = try self.appendBlob(blob, db: db, appender: &appender)
                        try db.execute(sql: "UPDATE captures SET blob = ?, blob_file = ?, blob_offset = ? WHERE blob_id = ?",
                                       arguments: [Data(), file, offset, blobID])
                        outcomes.append(.stored)
                        continue
                    }
                    outcomes.append(stored == blob ? .duplicate : .conflict)
                    continue
                }
                if !batchDEKs.contains(dekID) {
                    // The DEK record must be this agent's: another agent's DEK id is answered as an
                    // unknown one (the blob could never be opened with it, and the answer must not
                    // tell whether that id exists).
                    let owner = try String.fetchOne(db, sql: "SELECT agent_id FROM encryption_dek WHERE dek_id = ?",
                                                    arguments: [dekID])
                    if owner != agentID { outcomes.append(.unknownDEK); continue }
                    batchDEKs.insert(dekID)
                }
                var inline = blob, file: Int64?, offset: Int64?
                if blob.count >= Self.blobFileMinBytes {
                    (file, offset) = try appendBlob(blob, db: db, appender: &appender)
                    inline = Data()
                }
                try db.execute(sql: """
                    INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob,
                                          blob_file, blob_offset, received_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [blobID, agentID, kind, dekID, kekID, sequence, captureTimeMs, blob.count,
                                     inline, file, offset, receivedAtMs])
                outcomes.append(.stored)
            }
        }
        return outcomes
    }

    /// Appends `blob` to the batch's blob file (opening it at the first blob, after the highest
    /// offset any row references); returns its file number and offset.
    private func appendBlob(_ blob: Data, db: Database, appender: inout BlobAppender?) throws -> (Int64, Int64) {
        if appender == nil {
            let last = try Row.fetchOne(db, sql: """
                SELECT blob_file, blob_offset + size AS end FROM captures WHERE blob_file IS NOT NULL
                ORDER BY blob_file DESC, blob_offset DESC LIMIT 1
                """)
            let referenced = last.map { (number: $0["blob_file"] as Int64, end: $0["end"] as Int64) }
            appender = try BlobAppender(directory: blobDirectory, storeID: storeID, referenced: referenced)
        }
        return (appender!.number, try appender!.append(blob))
    }

    public func listCaptures(_ filter: CaptureFilter) throws(CollectorError) -> [CaptureInfo] {
        var conditions: [String] = []
        var args: [(any DatabaseValueConvertible)?] = []
        if let a = filter.agentID { conditions.append("agent_id = ?"); args.append(a) }
        if let k = filter.kind { conditions.append("kind = ?"); args.append(k) }
        if let s = filter.sinceMs { conditions.append("capture_time >= ?"); args.append(s) }
        if let u = filter.untilMs { conditions.append("capture_time < ?"); args.append(u) }
        var sql = "SELECT blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, received_at FROM captures"
        if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
        sql += " ORDER BY capture_time, agent_id, sequence"
        if let l = filter.limit { sql += " LIMIT \(max(0, l))" }
        let arguments = StatementArguments(args)
        return try run("list captures") {
            try pool.read { db in
                try Row.fetchAll(db, sql: sql, arguments: arguments).map {
                    CaptureInfo(blobID: $0["blob_id"], agentID: $0["agent_id"], kind: $0["kind"], dekID: $0["dek_id"],
                                kekID: $0["kek_id"], sequence: $0["sequence"], captureTimeMs: $0["capture_time"],
                                size: $0["size"], receivedAtMs: $0["received_at"])
                }
            }
        }
    }

    public func counts() throws(CollectorError) -> (captures: Int, deks: Int) {
        try run("count records") {
            try pool.read { db in
                (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM captures") ?? 0,
                 try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM encryption_dek") ?? 0)
            }
        }
    }

    public func dekRecord(dekID: String) throws(CollectorError) -> Data? {
        try run("read DEK record \(dekID)") {
            try pool.read { db in
                try Data.fetchOne(db, sql: "SELECT record FROM encryption_dek WHERE dek_id = ?", arguments: [dekID.lowercased()])
            }
        }
    }

    public func dekRecords(agentID: String?) throws(CollectorError) -> [Data] {
        try run("read DEK records") {
            try pool.read { db in
                if let agentID {
                    return try Data.fetchAll(db, sql: "SELECT record FROM encryption_dek WHERE agent_id = ? ORDER BY creation_time",
                                             arguments: [agentID])
                }
                return try Data.fetchAll(db, sql: "SELECT record FROM encryption_dek ORDER BY creation_time")
            }
        }
    }

    public func blob(blobID: String) throws(CollectorError) -> Data? {
        try run("read blob \(blobID)") {
            try pool.read { db in
                try Row.fetchOne(db, sql: "SELECT blob, blob_file, blob_offset, size FROM captures WHERE blob_id = ?",
                                 arguments: [blobID.lowercased()]).map { try blobBytes($0) }
            }
        }
    }

    // MARK: Audit

    public func appendAudit(actor: String, action: String, detail: String) throws(CollectorError) {
        try run("append audit record") {
            try pool.write { db in
                try db.execute(sql: "INSERT INTO audit_log (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                               arguments: [Self.nowMs(), actor, action, detail])
            }
        }
    }

    public func listAudit(limit: Int?) throws(CollectorError) -> [AuditEntry] {
        var sql = "SELECT * FROM audit_log ORDER BY id"
        if let limit { sql += " LIMIT \(max(0, limit))" }
        return try run("list audit log") {
            try pool.read { db in
                try Row.fetchAll(db, sql: sql).map {
                    AuditEntry(id: $0["id"], atMs: $0["at"], actor: $0["actor"], action: $0["action"], detail: $0["detail"])
                }
            }
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for (x, y) in zip(a, b) { diff |= x ^ y }
    return diff == 0
}
