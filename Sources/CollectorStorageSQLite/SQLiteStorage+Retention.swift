import CollectorStorage
import CSysShim
import CustosBase
import Envelope
import Foundation
import GRDB
#if canImport(Glibc)
import Glibc
#endif

/// Legal holds, expiry and the maintenance lease (docs/STORAGE.md "Retention").
extension SQLiteStorage {
    // MARK: HoldStore

    /// - Throws: `.invalidArgument` for `untilMs` outside years 1–9999, a reason
    ///   ``LegalHold/reasonProblem(_:)`` refuses, or a `createdBy` holding NUL.
    public func addHold(agent: AgentID, untilMs: Int64, reason: String, createdBy: String) async throws(StorageError) -> LegalHold {
        try StorageCheck.time(untilMs, "hold until", context: shownPath)
        try StorageCheck.holdReason(reason, context: shownPath)
        try StorageCheck.text(createdBy, "hold created by", context: shownPath)
        let now = Self.nowMs()
        return try await write("add a hold on agent \(agent)") { db in
            try db.execute(sql: """
                INSERT INTO legal_hold (agent_id, until_at, reason, created_by, created_at) VALUES (?, ?, ?, ?, ?)
                """, arguments: [agent.rawValue, untilMs, reason, createdBy, now])
            return LegalHold(id: db.lastInsertedRowID, agentID: agent, untilMs: untilMs, reason: reason,
                             createdBy: createdBy, createdAtMs: now)
        }
    }

    /// - Throws: `.corrupt` naming the row when one does not parse (an agent id `AgentID` refuses).
    public func holds(activeAtMs: Int64?) async throws(StorageError) -> [LegalHold] {
        if let activeAtMs { try StorageCheck.time(activeAtMs, "holds active at", context: shownPath) }
        let database = shownPath
        return try await read("list holds") { db in
            try Row.fetchAll(db, sql: """
                SELECT id, agent_id, until_at, reason, created_by, created_at, removed_at, removed_by FROM legal_hold
                WHERE ? OR (until_at > ? AND removed_at IS NULL) ORDER BY id
                """, arguments: [activeAtMs == nil, activeAtMs ?? 0]).map { row in
                try Self.hold(RowReader(row, database: database, table: "legal_hold", key: "id"))
            }
        }
    }

    /// A `legal_hold` row (all columns) as a ``LegalHold``.
    private static func hold(_ r: RowReader) throws(StorageError) -> LegalHold {
        LegalHold(id: try r.int("id"), agentID: try r.agentID("agent_id"), untilMs: try r.int("until_at"),
                  reason: try r.text("reason"), createdBy: try r.text("created_by"), createdAtMs: try r.int("created_at"),
                  removedAtMs: try r.optionalInt("removed_at"), removedBy: try r.optionalText("removed_by"))
    }

    public func removeHold(id: Int64, removedBy: String) async throws(StorageError) -> LegalHold {
        try StorageCheck.text(removedBy, "hold removed by", context: shownPath)
        let now = Self.nowMs(), database = shownPath
        return try await write("remove hold \(id)") { db in
            guard let row = try Row.fetchOne(db, sql: """
                SELECT id, agent_id, until_at, reason, created_by, created_at, removed_at, removed_by FROM legal_hold WHERE id = ?
                """, arguments: [id]) else {
                throw StorageError(.notFound, "\(database): no legal hold \(id)")
            }
            var hold = try Self.hold(RowReader(row, database: database, table: "legal_hold", key: "id"))
            if let at = hold.removedAtMs {
                throw StorageError(.notFound, "\(database): legal hold \(id) was removed already, by \(SafeText.quoted(hold.removedBy ?? "")) at \(isoTime(unixMs: at))")
            }
            try db.execute(sql: "UPDATE legal_hold SET removed_at = ?, removed_by = ? WHERE id = ?", arguments: [now, removedBy, id])
            hold.removedAtMs = now
            hold.removedBy = removedBy
            return hold
        }
    }

    // MARK: Blob directory

    /// `.notUsed`: the SQLite backend keeps its blob files in `DATABASE.blobs/` itself, and no
    /// `blob-dir=` applies to it.
    public func checkBlobDirectory() async throws(StorageError) -> BlobDirectoryCheck { .notUsed }

    // MARK: Lease

    /// One upsert whose `DO UPDATE … WHERE` only takes a row that is `holder`'s or expired.
    public func acquireLease(_ name: String, holder: String, ttlMs: Int64, nowMs: Int64) async throws(StorageError) -> Bool {
        try StorageCheck.lease(name, holder: holder, ttlMs: ttlMs, nowMs: nowMs, context: shownPath)
        return try await write("take lease \(SafeText.quoted(name))") { db in
            try db.execute(sql: """
                INSERT INTO maintenance_lease (name, holder, expires_at) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                WHERE maintenance_lease.holder = excluded.holder OR maintenance_lease.expires_at <= ?
                """, arguments: [name, holder, nowMs + ttlMs, nowMs])
            return db.changesCount > 0
        }
    }

    public func releaseLease(_ name: String, holder: String) async throws(StorageError) {
        try await write("release lease \(SafeText.quoted(name))") { db in
            try db.execute(sql: "DELETE FROM maintenance_lease WHERE name = ? AND holder = ?", arguments: [name, holder])
        }
    }

    // MARK: Expiry

    /// A blob-file range whose row was deleted.
    struct ReleasedRange: Sendable {
        let file: Int64
        let offset: Int64
        let size: Int64
    }

    /// One `BEGIN IMMEDIATE` transaction per ``ExpiryRule`` (each at most `limit` rows: an index
    /// range of `captures_agent_kind_time_id` or `captures_kind_time_id`, filtered by the hold
    /// probe), all on GRDB's writer queue. After the rows' commits, the blob-file bytes they
    /// pointed to are released: each range is punched out of its file (`fallocate`
    /// `PUNCH_HOLE`; offsets of other blobs unchanged; skipped where the file system cannot),
    /// and a file no row points to any more is deleted, under the write lock (no other process
    /// is appending to it then). A crash in between leaves unreferenced bytes, never a row
    /// without its bytes; so does a release that fails (best effort: the outcome still counts
    /// the rows removed).
    public func expire(policy: RetentionPolicy, nowMs: Int64, limit: Int) async throws(StorageError) -> ExpiryOutcome {
        try StorageCheck.expiry(policy: policy, nowMs: nowMs, limit: limit, context: shownPath)
        let rules = policy.expiryRules(nowMs: nowMs)
        if rules.isEmpty { return ExpiryOutcome() }
        let database = shownPath
        return try await writeWithoutTransaction("expire captures") { db in
            var outcome = ExpiryOutcome()
            var released: [ReleasedRange] = []
            var remaining = limit
            for rule in rules where remaining > 0 {
                try db.inTransaction(.immediate) {
                    let (sql, arguments) = Self.expirySQL(rule, nowMs: nowMs, limit: remaining)
                    let rows = try Row.fetchAll(db, sql: sql, arguments: arguments)
                    for row in rows {
                        let r = RowReader(row, database: database, table: "captures", key: "blob_id")
                        let id = try r.text("blob_id"), size = try r.int("size")
                        try db.execute(sql: "DELETE FROM captures WHERE blob_id = ?", arguments: [id])
                        outcome.add(rule.kind, bytes: size)
                        if !(row["blob_file"] as DatabaseValue).isNull {
                            let offset = (row["blob_offset"] as DatabaseValue).isNull ? 0 : try r.int("blob_offset")
                            released.append(ReleasedRange(file: try r.int("blob_file"), offset: offset, size: size))
                        }
                    }
                    remaining -= rows.count
                    return .commit
                }
            }
            outcome.more = remaining == 0
            // Best effort: the rows are gone (committed); bytes left behind are unreferenced, never read.
            if !released.isEmpty { outcome.released = self.releaseBlobBytes(released, db: db) }
            return outcome
        }
    }

    /// The SQL of one expiry selection and its arguments (the last one is the row limit):
    /// `blob_id, size, blob_file, blob_offset` of captures of the rule's kind (and agent) before
    /// its cutoff whose agent is under no hold active at `nowMs`.
    package static func expirySQL(_ rule: ExpiryRule, nowMs: Int64, limit: Int) -> (String, StatementArguments) {
        var conditions = ["kind = ?", "capture_time < ?"]
        var arguments: StatementArguments = [rule.kind.name, rule.cutoffMs]
        let index: String
        if let agent = rule.agent {
            conditions.insert("agent_id = ?", at: 0)
            arguments = [agent.rawValue] + arguments
            index = "captures_agent_kind_time_id"
        } else {
            index = "captures_kind_time_id"
            if !rule.excludedAgents.isEmpty {
                conditions.append("agent_id NOT IN (\(rule.excludedAgents.map { _ in "?" }.joined(separator: ", ")))")
                arguments += StatementArguments(rule.excludedAgents.map(\.rawValue))
            }
        }
        conditions.append("NOT EXISTS (SELECT 1 FROM legal_hold h WHERE h.agent_id = captures.agent_id AND h.until_at > ? AND h.removed_at IS NULL)")
        arguments += [nowMs, limit]
        return ("""
            SELECT blob_id, size, blob_file, blob_offset FROM captures INDEXED BY \(index)
            WHERE \(conditions.joined(separator: " AND ")) ORDER BY capture_time LIMIT ?
            """, arguments)
    }

    /// Erases the released ranges from their blob files (``BlobErasure``: a hole punched, or
    /// zeros where the file system cannot punch; each file `fdatasync`ed), then, holding the
    /// write lock (`BEGIN IMMEDIATE`: no appender of another process is open), deletes each
    /// touched file that no row points to any more. Runs on GRDB's writer queue, after the
    /// rows' commit. Best effort: what fails is named in ``ExpiryOutcome/Released/problem``.
    private func releaseBlobBytes(_ ranges: [ReleasedRange], db: Database) -> ExpiryOutcome.Released {
        var released = ExpiryOutcome.Released()
        var problems: [String] = []
        for (number, inFile) in Dictionary(grouping: ranges, by: \.file).sorted(by: { $0.key < $1.key }) {
            let file = blobDirectory + "/" + BlobFiles.fileName(number)
            let fd = open(file, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
            guard fd >= 0 else {
                if errno != ENOENT { problems.append("\(SafeText.escaped(file)): cannot open: \(String(cString: strerror(errno)))") }
                continue  // gone already: nothing to erase
            }
            defer { Glibc.close(fd) }
            do throws(SystemCallError) {
                var n = 0, bytes: Int64 = 0, zeroed = 0
                for range in inFile {
                    let (method, erased) = try BlobErasure.erase(fd: fd, path: file, offset: range.offset, length: range.size)
                    n += 1
                    bytes += erased
                    if method == .zeroed { zeroed += 1 }
                }
                try syscall("fdatasync", file) { fdatasync(fd) }
                released.ranges += n
                released.bytes += bytes
                released.zeroed += zeroed
            } catch {
                problems.append(error.description)
            }
        }
        let files = Set(ranges.map(\.file))
        let directory = blobDirectory
        do {
            try db.inTransaction(.immediate) {
                var removed = false
                for number in files.sorted() {
                    let referenced = try Bool.fetchOne(db, sql: "SELECT 1 FROM captures WHERE blob_file = ? LIMIT 1",
                                                       arguments: [number]) != nil
                    if !referenced && unlink(directory + "/" + BlobFiles.fileName(number)) == 0 {
                        removed = true
                        released.filesDeleted += 1
                    }
                }
                if removed { BlobAppender.syncDirectory(directory) }
                return .commit
            }
        } catch {
            problems.append("\(SafeText.escaped(directory)): blob files no row points to were not deleted: \(SafeText.escaped(String(describing: error)))")
        }
        released.problem = problems.isEmpty ? nil : problems.joined(separator: "; ")
        return released
    }
}
