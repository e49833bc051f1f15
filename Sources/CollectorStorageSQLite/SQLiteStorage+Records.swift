import CollectorStorage
import CustosBase
import Envelope
import Foundation
import GRDB

/// DEK records and captures: ingest, listings, blob bytes.
extension SQLiteStorage {
    // MARK: DEK records

    public func dekRecord(_ id: DEKID) async throws(StorageError) -> Data? {
        let database = shownPath
        return try await read("read DEK record \(id)") { db in
            try Row.fetchOne(db, sql: "SELECT dek_id, record FROM encryption_dek WHERE dek_id = ?", arguments: [id.hex]).map {
                try RowReader($0, database: database, table: "encryption_dek", key: "dek_id").bytes("record")
            }
        }
    }

    /// Pages by `(creation_time, dek_id)` (index `encryption_dek_time_id`, or
    /// `encryption_dek_agent_time_id` for one agent).
    /// - Throws: `.notFound` when `after` names no stored DEK record (nothing to page after);
    ///   `.invalidArgument` for a limit outside 1…10,000; `.corrupt` naming a row that does not parse.
    public func dekRecords(agent: AgentID?, after: DEKID?, limit: Int) async throws(StorageError) -> [StoredDEK] {
        try checkLimit(limit, "list DEK records")
        let database = shownPath
        return try await read("list DEK records") { db in
            var start: (Int64, DEKID)?
            if let after {
                guard let time = try Int64.fetchOne(db, sql: "SELECT creation_time FROM encryption_dek WHERE dek_id = ?",
                                                    arguments: [after.hex]) else {
                    throw StorageError(.notFound, "no DEK record \(after) to list DEK records after")
                }
                start = (time, after)
            }
            let (sql, arguments) = Self.dekPageSQL(agent: agent, after: start, limit: limit)
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map { row in
                let r = RowReader(row, database: database, table: "encryption_dek", key: "dek_id")
                return StoredDEK(dekID: try r.id("dek_id", DEKIDKind.self), kekID: try r.id("kek_id", KEKIDKind.self),
                                 agentID: try r.agentID("agent_id"), creationTimeMs: try r.int("creation_time"),
                                 record: try r.bytes("record"))
            }
        }
    }

    /// The SQL of one page of DEK records after `(creation_time, dek_id)` and its arguments (the
    /// last one is the row limit): a range of `encryption_dek_time_id` or
    /// `encryption_dek_agent_time_id` (named, as in ``capturePageSQL(_:after:limit:)``). Used by ``dekRecords(agent:after:limit:)`` and its
    /// query-plan test.
    package static func dekPageSQL(agent: AgentID?, after start: (Int64, DEKID)?, limit: Int) -> (String, StatementArguments) {
        var conditions: [String] = [], arguments: StatementArguments = []
        if let agent {
            conditions.append("agent_id = ?")
            arguments += [agent.rawValue]
        }
        if let start {
            conditions.append("(creation_time, dek_id) > (?, ?)")
            arguments += [start.0, start.1.hex]
        }
        let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        let index = agent == nil ? "encryption_dek_time_id" : "encryption_dek_agent_time_id"
        arguments += [limit]
        return ("""
            SELECT dek_id, kek_id, agent_id, creation_time, record FROM encryption_dek INDEXED BY \(index)\(filter)
            ORDER BY creation_time, dek_id LIMIT ?
            """, arguments)
    }

    // MARK: Ingest

    /// One `BEGIN IMMEDIATE` transaction for the whole batch: large blobs are appended to a blob
    /// file, the file is `fdatasync`ed, then the rows are committed; when anything fails before
    /// the commit, the file is cut back (the write lock is still held) and nothing is stored.
    /// A blob whose stored copy cannot be read back (its blob file lost or cut short) is
    /// repaired by the agent's copy with the same header and size (answer `.stored`).
    /// - Throws: `.invalidArgument` for a time outside years 1–9999 (nothing stored);
    ///   `.unavailable` for locks, I/O and every blob-file failure (nothing stored).
    public func ingest(_ items: [IngestItem], receivedAtMs: Int64) async throws(StorageError) -> [IngestOutcome] {
        if items.isEmpty { return [] }
        try StorageCheck.ingest(items, receivedAtMs: receivedAtMs, context: shownPath)
        return try await writeWithoutTransaction("store \(items.count) records") { db in
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
    }

    /// Inserts `items` inside the caller's transaction, appending large blobs through `appender`
    /// (opened at the first one); returns one outcome per item.
    private func insert(_ items: [IngestItem], receivedAtMs: Int64, db: Database,
                        appender: inout BlobAppender?) throws -> [IngestOutcome] {
        var outcomes: [IngestOutcome] = []
        outcomes.reserveCapacity(items.count)
        var batchDEKs = Set<DEKID>()
        for item in items {
            switch item {
            case .dek(let d):
                try db.execute(sql: """
                    INSERT OR IGNORE INTO encryption_dek (dek_id, kek_id, agent_id, creation_time, record, received_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [d.dekID.hex, d.kekID.hex, d.agentID.rawValue, d.creationTimeMs, d.record, receivedAtMs])
                if db.changesCount > 0 {
                    outcomes.append(.stored)
                    batchDEKs.insert(d.dekID)
                    continue
                }
                let old = try Row.fetchOne(db, sql: "SELECT dek_id, record, agent_id FROM encryption_dek WHERE dek_id = ?",
                                           arguments: [d.dekID.hex])
                let owner = old.flatMap { String.fromDatabaseValue($0["agent_id"]) }
                if owner != d.agentID.rawValue {
                    // Another agent's DEK id: answered as a new id would be (IngestOutcome.otherAgent).
                    outcomes.append(.otherAgent)
                } else if let old, Data.fromDatabaseValue(old["record"]) == d.record {
                    outcomes.append(.duplicate)
                    batchDEKs.insert(d.dekID)
                } else {
                    outcomes.append(.conflict)
                }
            case .blob(let b):
                if let row = try Row.fetchOne(db, sql: """
                    SELECT blob_id, blob, blob_file, blob_offset, size, agent_id, kek_id, kind, dek_id, sequence, capture_time,
                           user_name, display
                    FROM captures WHERE blob_id = ?
                    """, arguments: [b.blobID.hex]) {
                    // Another agent's blob id: answered as a new id would be (IngestOutcome.otherAgent).
                    guard String.fromDatabaseValue(row["agent_id"]) == b.agentID.rawValue else {
                        outcomes.append(.otherAgent)
                        continue
                    }
                    let sameHeader = Int.fromDatabaseValue(row["size"]) == b.bytes.count
                        && String.fromDatabaseValue(row["kek_id"]) == b.kekID.hex
                        && String.fromDatabaseValue(row["kind"]) == b.kind.name
                        && String.fromDatabaseValue(row["dek_id"]) == b.dekID.hex
                        && Int64.fromDatabaseValue(row["sequence"]) == b.sequence
                        && Int64.fromDatabaseValue(row["capture_time"]) == b.captureTimeMs
                    let storedUser: String? = String.fromDatabaseValue(row["user_name"])
                    let storedDisplay: String? = String.fromDatabaseValue(row["display"])
                    let sameRow = sameHeader && storedUser == b.user?.rawValue && storedDisplay == b.display
                    guard sameRow else { outcomes.append(.conflict); continue }
                    let stored: Data
                    do {
                        stored = try blobBytes(row)
                    } catch {
                        // The stored copy is unreadable (its blob file lost, cut short or damaged):
                        // the agent's copy, same header and size, repairs the row.
                        let (file, offset) = try appendBlob(b.bytes, db: db, appender: &appender)
                        try db.execute(sql: "UPDATE captures SET blob = ?, blob_file = ?, blob_offset = ? WHERE blob_id = ?",
                                       arguments: [Data(), file, offset, b.blobID.hex])
                        outcomes.append(.stored)
                        continue
                    }
                    outcomes.append(stored == b.bytes ? .duplicate : .conflict)
                    continue
                }
                if !batchDEKs.contains(b.dekID) {
                    // The DEK record must be this agent's: another agent's DEK id is answered as an
                    // unknown one (the blob could never be opened with it, and the answer must not
                    // tell whether that id exists).
                    let owner = try String.fetchOne(db, sql: "SELECT agent_id FROM encryption_dek WHERE dek_id = ?",
                                                    arguments: [b.dekID.hex])
                    if owner != b.agentID.rawValue { outcomes.append(.unknownDEK); continue }
                    batchDEKs.insert(b.dekID)
                }
                var inline = b.bytes, file: Int64?, offset: Int64?
                if b.bytes.count >= Self.blobFileMinBytes {
                    (file, offset) = try appendBlob(b.bytes, db: db, appender: &appender)
                    inline = Data()
                }
                try db.execute(sql: """
                    INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob,
                                          blob_file, blob_offset, received_at, user_name, display)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [b.blobID.hex, b.agentID.rawValue, b.kind.name, b.dekID.hex, b.kekID.hex, b.sequence,
                                     b.captureTimeMs, b.bytes.count, inline, file, offset, receivedAtMs, b.user?.rawValue, b.display])
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
            let referenced = last.flatMap { row -> (number: Int64, end: Int64)? in
                guard let n = Int64.fromDatabaseValue(row["blob_file"]), let e = Int64.fromDatabaseValue(row["end"]) else { return nil }
                return (n, e)
            }
            appender = try BlobAppender(directory: blobDirectory, storeID: storeID, referenced: referenced)
        }
        return (appender!.number, try appender!.append(blob))
    }

    /// The sealed bytes of a `captures` row selected with `blob_id, blob, blob_file, blob_offset, size`.
    /// - Throws: `.corrupt` naming the blob file (missing, cut short) or the row.
    func blobBytes(_ row: Row) throws(StorageError) -> Data {
        let r = RowReader(row, database: shownPath, table: "captures", key: "blob_id")
        let fileValue: DatabaseValue = row["blob_file"]
        if fileValue.isNull { return try r.bytes("blob") }
        let number = try r.int("blob_file")
        let offset = (row["blob_offset"] as DatabaseValue).isNull ? 0 : try r.int("blob_offset")
        let size = try r.int("size")
        guard let count = Int(exactly: size) else { throw r.corrupt("size", "a byte count") }
        return try BlobFiles.read(directory: blobDirectory, number: number, offset: offset, size: count)
    }

    // MARK: Captures

    static let captureColumns = "blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, received_at, user_name, display"

    static func captureInfo(_ row: Row, database: String) throws(StorageError) -> CaptureInfo {
        let r = RowReader(row, database: database, table: "captures", key: "blob_id")
        let size = try r.int("size")
        guard let count = Int(exactly: size), count >= 0 else { throw r.corrupt("size", "a byte count") }
        return CaptureInfo(blobID: try r.id("blob_id", BlobIDKind.self), agentID: try r.agentID("agent_id"),
                           kind: try r.kind("kind"), dekID: try r.id("dek_id", DEKIDKind.self),
                           kekID: try r.id("kek_id", KEKIDKind.self), sequence: try r.int("sequence"),
                           captureTimeMs: try r.int("capture_time"), size: count, receivedAtMs: try r.int("received_at"),
                           user: try r.optionalUserName("user_name"), display: try r.optionalText("display"))
    }

    /// The SQL of one listing page and its arguments (the last one is the row limit): a range
    /// of the v3 index for the query's equality filters, `(capture_time, blob_id)` after them,
    /// in the query's direction. Used by ``captures(_:after:limit:)`` and its query-plan test.
    ///
    /// The index is named (`INDEXED BY`: SQLite fails the statement rather than plan it
    /// otherwise, https://www.sqlite.org/lang_indexedby.html): without `ANALYZE` statistics the
    /// planner took the kind index for an agent-and-kind query. Of the cursor and the time
    /// bound on the same side, only the tighter is written, so the range starts at the cursor
    /// and a later page never walks the rows of earlier ones.
    package static func capturePageSQL(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) -> (String, StatementArguments) {
        var conditions: [String] = [], arguments: StatementArguments = []
        if let a = query.agentID { conditions.append("agent_id = ?"); arguments += [a.rawValue] }
        if let k = query.kind { conditions.append("kind = ?"); arguments += [k.name] }
        if let u = query.user { conditions.append("user_name = ?"); arguments += [u.rawValue] }
        let ascending = query.order == .ascending
        // The bound the cursor replaces: since (inclusive) going up, until (exclusive) going down.
        var since = query.sinceMs, until = query.untilMs
        if let cursor {
            if ascending, let s = since, cursor.captureTimeMs >= s { since = nil }
            if !ascending, let u = until, cursor.captureTimeMs < u { until = nil }
            let cursorNeeded = ascending ? since == nil : until == nil
            if cursorNeeded {
                // A row value comparison: one index range (https://www.sqlite.org/rowvalue.html).
                conditions.append("(capture_time, blob_id) \(ascending ? ">" : "<") (?, ?)")
                arguments += [cursor.captureTimeMs, cursor.blobID.hex]
            }
        }
        if let s = since { conditions.append("capture_time >= ?"); arguments += [s] }
        if let u = until { conditions.append("capture_time < ?"); arguments += [u] }
        // A user filter takes the user indexes (v5); a kind then filters that range.
        let index = switch (query.agentID != nil, query.kind != nil, query.user != nil) {
        case (false, _, true): "captures_user_time_id"
        case (true, _, true): "captures_agent_user_time_id"
        case (false, false, false): "captures_time_id"
        case (false, true, false): "captures_kind_time_id"
        case (true, false, false): "captures_agent_time_id"
        case (true, true, false): "captures_agent_kind_time_id"
        }
        let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        let direction = ascending ? "ASC" : "DESC"
        arguments += [limit]
        return ("""
            SELECT \(captureColumns) FROM captures INDEXED BY \(index)\(filter)
            ORDER BY capture_time \(direction), blob_id \(direction) LIMIT ?
            """, arguments)
    }

    /// - Throws: `.invalidArgument` for a limit outside 1…10,000 or a time outside years 1–9999;
    ///   `.corrupt` naming a row that does not parse (the listing stops there: see the type's documentation).
    public func captures(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) async throws(StorageError) -> CapturePage {
        try checkLimit(limit, "list captures")
        for (time, field) in [(query.sinceMs, "since"), (query.untilMs, "until"), (cursor?.captureTimeMs, "cursor time")] {
            if let time { try StorageCheck.time(time, "list captures: \(field)", context: shownPath) }
        }
        // One row more than asked tells whether another page follows.
        let (sql, arguments) = Self.capturePageSQL(query, after: cursor, limit: limit + 1)
        let database = shownPath
        return try await read("list captures") { db in
            let rows = try Row.fetchAll(db, sql: sql, arguments: arguments)
            // Only the rows returned are parsed: a page that ends before a damaged row is served.
            let items = try rows.prefix(limit).map { row throws(StorageError) in try Self.captureInfo(row, database: database) }
            return CapturePage(items: items, next: rows.count > limit ? items.last?.cursor : nil)
        }
    }

    public func capture(_ id: BlobID) async throws(StorageError) -> CaptureInfo? {
        let database = shownPath
        return try await read("read capture \(id)") { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.captureColumns) FROM captures WHERE blob_id = ?", arguments: [id.hex])
                .map { row throws(StorageError) in try Self.captureInfo(row, database: database) }
        }
    }

    public func blob(_ id: BlobID) async throws(StorageError) -> Data? {
        try await read("read blob \(id)") { db in
            try Row.fetchOne(db, sql: "SELECT blob_id, blob, blob_file, blob_offset, size FROM captures WHERE blob_id = ?",
                             arguments: [id.hex]).map { row throws(StorageError) in try self.blobBytes(row) }
        }
    }

    public func counts() async throws(StorageError) -> (captures: Int, deks: Int) {
        let (captures, deks) = try await read("count records") { db in
            (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM captures") ?? 0,
             try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM encryption_dek") ?? 0)
        }
        return (captures, deks)
    }
}
