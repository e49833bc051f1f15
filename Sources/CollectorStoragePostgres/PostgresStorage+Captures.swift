import CollectorStorage
import Crypto
import CustosBase
import Envelope
import Foundation
import NIOCore
import PostgresNIO

extension PostgresStorage {
    // MARK: Ingest

    /// Stores `items` atomically (all or nothing). Idempotent across collector instances: each
    /// insert is `INSERT … ON CONFLICT DO NOTHING`, so of two instances storing one id the second
    /// waits for the first and then compares (the stored bytes by SHA-256, computed by the
    /// server, so they are not sent back). Outcomes as the SQLite backend: a DEK record earlier
    /// in the same batch counts for the blobs after it; another agent's id is `.otherAgent`.
    ///
    /// A batch of blobs only (every upload but an agent's first under a new DEK) is one prepared
    /// statement, ``PostgresStatements/InsertCaptures``, a transaction by itself: one round trip
    /// (docs/STORAGE.md "Benchmarks"). A batch with DEK records runs `BEGIN`, one `INSERT` per
    /// DEK record, the same statement, `COMMIT`. Blobs the statement did not insert (an id
    /// stored already, by a retry or another instance; a DEK record that is not the agent's)
    /// are then compared with the stored row, one query each, after the commit.
    /// With `blob-dir=`, large blobs not stored yet are first appended to blob files and made
    /// durable (``putLargeBlobs(_:)``); their rows get a `blob_ref`.
    /// - Throws: `.invalidArgument` for a time outside years 1-9999 (nothing stored);
    ///   `.unavailable` when the database or the blob directory cannot be used (nothing stored,
    ///   or — when the connection is lost after the commit — stored and answered `duplicate`
    ///   when the agent sends it again).
    public func ingest(_ items: [IngestItem], receivedAtMs: Int64) async throws(StorageError) -> [IngestOutcome] {
        if items.isEmpty { return [] }
        try StorageCheck.ingest(items, receivedAtMs: receivedAtMs, context: location)
        let refs = try await putLargeBlobs(items)
        var deks: [(index: Int, dek: StoredDEK)] = []
        // The first copy of each blob id goes into the INSERT; later copies in the same batch
        // are compared with the stored row afterwards.
        var firsts: [(index: Int, blob: StoredBlob)] = [], later: [(index: Int, blob: StoredBlob)] = []
        var seen = Set<BlobID>()
        for (index, item) in items.enumerated() {
            switch item {
            case .dek(let d): deks.append((index, d))
            case .blob(let b): if seen.insert(b.blobID).inserted { firsts.append((index, b)) } else { later.append((index, b)) }
            }
        }
        let insert = PostgresStatements.InsertCaptures(firsts.map(\.blob), refs: refs, receivedAtMs: receivedAtMs)
        let hasBlobs = !firsts.isEmpty
        let (dekOutcomes, inserted): ([IngestOutcome], Set<String>)
        if deks.isEmpty {
            inserted = try await onConnection("store \(items.count) records") { conn in
                Set(try await self.execute(insert, on: conn))
            }
            dekOutcomes = []
        } else {
            let dekItems = deks.map(\.dek)
            (dekOutcomes, inserted) = try await inTransaction("store \(items.count) records") { conn in
                var outcomes: [IngestOutcome] = []
                for d in dekItems { outcomes.append(try await Self.insertDEK(d, receivedAtMs: receivedAtMs, conn: conn)) }
                return (outcomes, hasBlobs ? Set(try await self.execute(insert, on: conn)) : [])
            }
        }
        var outcomes = [IngestOutcome?](repeating: nil, count: items.count)
        for (k, d) in deks.enumerated() { outcomes[d.index] = dekOutcomes[k] }
        var compare: [(index: Int, blob: StoredBlob)] = later
        for f in firsts {
            if inserted.contains(f.blob.blobID.hex) { outcomes[f.index] = .stored } else { compare.append(f) }
        }
        if !compare.isEmpty {
            // Not inserted: the id is stored (by an earlier upload, another instance, another
            // agent), or the blob's DEK record is not this agent's, stored before the batch or
            // earlier in it: another agent's DEK id is answered as an unknown one (the blob could
            // never be opened with it, and the answer must not tell whether that id exists).
            let toCompare = compare
            let compared = try await onConnection("compare \(toCompare.count) records with the stored ones") { conn in
                var out: [IngestOutcome] = []
                for c in toCompare { out.append(try await self.compareStoredBlob(c.blob, conn: conn) ?? .unknownDEK) }
                return out
            }
            for (k, c) in compare.enumerated() { outcomes[c.index] = compared[k] }
        }
        let final = outcomes.map { $0 ?? .conflict }
        await eraseUnused(refs, items: items, outcomes: final)
        return final
    }

    /// Erases the bytes this batch appended to blob files for blobs it did not store (another
    /// instance stored the id first, an unknown DEK, a conflict): the transaction committed
    /// without a row pointing at them, so no row ever will. Best effort (a copy left is never
    /// read, and goes with its file). After a failed transaction nothing is erased: a commit
    /// the server made after the caller gave up would point at those bytes.
    private func eraseUnused(_ refs: [BlobID: BlobRef], items: [IngestItem], outcomes: [IngestOutcome]) async {
        guard !refs.isEmpty, let store = state.withLock({ $0.blobStore }) else { return }
        var stored = Set<BlobID>()
        for (item, outcome) in zip(items, outcomes) where outcome == .stored {
            if case .blob(let b) = item { stored.insert(b.blobID) }
        }
        let unused = refs.filter { !stored.contains($0.key) }.map(\.value)
        if unused.isEmpty { return }
        _ = try? await store.erase(unused)
    }

    private static func insertDEK(_ d: StoredDEK, receivedAtMs: Int64, conn: PostgresConnection) async throws -> IngestOutcome {
        let record = ByteBuffer(bytes: d.record)
        let inserted = try await conn.query("""
            INSERT INTO encryption_dek (dek_id, kek_id, agent_id, creation_time, record, received_at)
            VALUES (\(d.dekID.hex), \(d.kekID.hex), \(d.agentID.rawValue), \(timestampMs: d.creationTimeMs), \(record),
                    \(timestampMs: receivedAtMs))
            ON CONFLICT (dek_id) DO NOTHING RETURNING 1
            """, logger: quiet).collect().count > 0
        if inserted { return .stored }
        // Taken: by this batch's own earlier item, another instance, or another agent.
        let rows = try await conn.query("SELECT agent_id, record FROM encryption_dek WHERE dek_id = \(d.dekID.hex)",
                                        logger: quiet)
        for try await (agent, stored) in rows.decode((String, ByteBuffer).self) {
            if agent != d.agentID.rawValue { return .otherAgent }
            return stored.readableBytesView.elementsEqual(d.record) ? .duplicate : .conflict
        }
        // Deleted between the two statements (by a retention run): store it now.
        return try await insertDEK(d, receivedAtMs: receivedAtMs, conn: conn)
    }

    /// nil when `b.blobID` is not stored; else how the stored row compares. A row whose bytes
    /// are in a blob file is compared with the file's bytes (read through its `blob_ref`).
    private func compareStoredBlob(_ b: StoredBlob, conn: PostgresConnection) async throws -> IngestOutcome? {
        let rows = try await conn.query("""
            SELECT agent_id, kind, dek_id, kek_id, sequence, \(unescaped: SQLTime.ms("capture_time")), size, sha256(blob), blob_ref,
                   user_name, display
            FROM captures WHERE blob_id = \(b.blobID.hex)
            """, logger: Self.quiet)
        var found: (String, String, String, String, Int64, Int64, Int64, ByteBuffer, String?, String?, String?)?
        for try await row in rows.decode((String, String, String, String, Int64, Int64, Int64, ByteBuffer, String?, String?, String?).self) {
            found = row
        }
        if let (agent, kind, dek, kek, sequence, time, size, digest, refText, user, display) = found {
            guard agent == b.agentID.rawValue else { return .otherAgent }
            let sameRow = kind == b.kind.name && dek == b.dekID.hex && kek == b.kekID.hex && sequence == b.sequence
                && time == b.captureTimeMs && size == Int64(b.bytes.count) && user == b.user?.rawValue && display == b.display
            guard sameRow else { return .conflict }
            if let refText {
                return try await referencedBytes(b.blobID, refText: refText, size: size) == b.bytes ? .duplicate : .conflict
            }
            let mine = SHA256.hash(data: b.bytes)
            return digest.readableBytesView.elementsEqual(mine) ? .duplicate : .conflict
        }
        return nil
    }

    // MARK: Listings

    public func captures(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) async throws(StorageError) -> CapturePage {
        try StorageCheck.limit(limit, "listing", context: location)
        for t in [query.sinceMs, query.untilMs, cursor?.captureTimeMs].compactMap({ $0 }) {
            try StorageCheck.time(t, "time bound", context: location)
        }
        let sql = Self.captureListing(query, after: cursor, limit: limit)
        let location = self.location
        let rows = try await withClient("list captures") { client in
            var out: [CaptureInfo] = []
            for try await row in try await client.query(sql, logger: Self.quiet).decode(
                CaptureRow.self) {
                out.append(try Self.captureInfo(row, location: location))
            }
            return out
        }
        if rows.count > limit {
            let page = Array(rows.prefix(limit))
            return CapturePage(items: page, next: page.last?.cursor)
        }
        return CapturePage(items: rows, next: nil)
    }

    static let captureColumns = """
        blob_id, agent_id, kind, dek_id, kek_id, sequence, \(SQLTime.ms("capture_time")), size, \(SQLTime.ms("received_at")), \
        user_name, display
        """

    /// A row of ``captureColumns``.
    typealias CaptureRow = (String, String, String, String, String, Int64, Int64, Int64, Int64, String?, String?)

    /// One page (and one row more, to know whether another page follows) of `query`: one range
    /// of the index that matches its filters — `captures_agent_kind_time`,
    /// `captures_agent_time` or `captures_time` (kind then filters the range) — read forwards or
    /// backwards from the cursor (a row comparison on `(capture_time, blob_id)`, never OFFSET).
    ///
    /// With a user: a range of `captures_user_time`, or with an agent `captures_agent_user_time`,
    /// written so that no other index can serve the order. `user_name = $u` would let the planner
    /// treat the user as a constant and walk `captures_time` instead, filtering by user, which it
    /// prefers (by cost) when a user holds many rows: a newest-first page of a user whose
    /// captures are all old would then read everyone's newer ones first. Instead the user's range
    /// is bounded by row comparisons on `(user_name, capture_time, blob_id)` — from
    /// `(u, since or -infinity, '')` to `(u, until or infinity, '')`, and the cursor — and the
    /// order includes `user_name`, which only the user indexes provide.
    static func captureListing(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) -> PostgresQuery {
        let ascending = query.order == .ascending
        // Built piece by piece: every value is a bound parameter, never text in the SQL.
        var parts = PostgresQuery.StringInterpolation(literalCapacity: 256, interpolationCount: 12)
        parts.appendLiteral("SELECT \(captureColumns) FROM captures WHERE true")
        if let agent = query.agentID { parts.appendLiteral(" AND agent_id = "); parts.appendInterpolation(agent.rawValue) }
        if let kind = query.kind { parts.appendLiteral(" AND kind = "); parts.appendInterpolation(kind.name) }
        if let user = query.user {
            // (user_name, capture_time, blob_id) >= (u, since, '') and < (u, until, ''): '' sorts
            // before every blob id, so these are exactly `capture_time >= since` and `< until`.
            parts.appendLiteral(" AND (user_name, capture_time, blob_id) >= (")
            parts.appendInterpolation(user.rawValue)
            if let since = query.sinceMs {
                parts.appendLiteral(", "); parts.appendInterpolation(timestampMs: since)
            } else {
                parts.appendLiteral(", '-infinity'::timestamptz")
            }
            parts.appendLiteral(", '') AND (user_name, capture_time, blob_id) < (")
            parts.appendInterpolation(user.rawValue)
            if let until = query.untilMs {
                parts.appendLiteral(", "); parts.appendInterpolation(timestampMs: until)
            } else {
                parts.appendLiteral(", 'infinity'::timestamptz")
            }
            parts.appendLiteral(", '')")
            if let cursor {
                parts.appendLiteral(ascending ? " AND (user_name, capture_time, blob_id) > (" : " AND (user_name, capture_time, blob_id) < (")
                parts.appendInterpolation(user.rawValue)
                parts.appendLiteral(", ")
                parts.appendInterpolation(timestampMs: cursor.captureTimeMs)
                parts.appendLiteral(", ")
                parts.appendInterpolation(cursor.blobID.hex)
                parts.appendLiteral(")")
            }
            parts.appendLiteral(ascending ? " ORDER BY user_name, capture_time, blob_id LIMIT "
                                          : " ORDER BY user_name DESC, capture_time DESC, blob_id DESC LIMIT ")
            parts.appendInterpolation(Int64(limit + 1))
            return PostgresQuery(stringInterpolation: parts)
        }
        if let since = query.sinceMs { parts.appendLiteral(" AND capture_time >= "); parts.appendInterpolation(timestampMs: since) }
        if let until = query.untilMs { parts.appendLiteral(" AND capture_time < "); parts.appendInterpolation(timestampMs: until) }
        if let cursor {
            parts.appendLiteral(ascending ? " AND (capture_time, blob_id) > (" : " AND (capture_time, blob_id) < (")
            parts.appendInterpolation(timestampMs: cursor.captureTimeMs)
            parts.appendLiteral(", ")
            parts.appendInterpolation(cursor.blobID.hex)
            parts.appendLiteral(")")
        }
        parts.appendLiteral(ascending ? " ORDER BY capture_time, blob_id LIMIT " : " ORDER BY capture_time DESC, blob_id DESC LIMIT ")
        parts.appendInterpolation(Int64(limit + 1))
        return PostgresQuery(stringInterpolation: parts)
    }

    static func captureInfo(_ row: CaptureRow, location: String) throws(StorageError) -> CaptureInfo {
        let (blobHex, agent, kindName, dekHex, kekHex, sequence, time, size, received, user, display) = row
        guard let blobID = BlobID(hex: blobHex), let dekID = DEKID(hex: dekHex), let kekID = KEKID(hex: kekHex) else {
            throw StorageError(.corrupt, "\(location): captures row \(SafeText.quoted(blobHex)) holds an id that is not hex of the right length")
        }
        guard let kind = CaptureKind(name: kindName) else {
            throw StorageError(.corrupt, "\(location): captures row \(blobHex): unknown kind \(SafeText.quoted(kindName))")
        }
        var userName: UserName?
        if let user {
            guard let valid = try? UserName(user) else {
                throw StorageError(.corrupt, "\(location): captures row \(SafeText.quoted(blobHex)) holds user_name \(SafeText.quoted(user)), not a user name")
            }
            userName = valid
        }
        return CaptureInfo(blobID: blobID, agentID: try agentID(agent, location: location, table: "captures"), kind: kind,
                           dekID: dekID, kekID: kekID, sequence: sequence, captureTimeMs: time, size: Int(size),
                           receivedAtMs: received, user: userName, display: display)
    }

    public func capture(_ id: BlobID) async throws(StorageError) -> CaptureInfo? {
        let location = self.location
        return try await withClient("read capture \(id)") { client in
            for try await row in try await client.query(
                "SELECT \(unescaped: Self.captureColumns) FROM captures WHERE blob_id = \(id.hex)", logger: Self.quiet
            ).decode(CaptureRow.self) {
                return try Self.captureInfo(row, location: location)
            }
            return nil
        }
    }

    /// Reads the row's bytes, or through its `blob_ref` the blob file's (any instance's), checked
    /// by ``referencedBytes(_:refText:size:)``.
    public func blob(_ id: BlobID) async throws(StorageError) -> Data? {
        let location = self.location
        let row = try await withClient("read blob \(id)") { client -> (Int64, ByteBuffer, String?)? in
            for try await row in try await client.query(
                "SELECT size, blob, blob_ref FROM captures WHERE blob_id = \(id.hex)", logger: Self.quiet
            ).decode((Int64, ByteBuffer, String?).self) {
                return row
            }
            return nil
        }
        guard let (size, bytes, refText) = row else { return nil }
        if let refText {
            do {
                return try await referencedBytes(id, refText: refText, size: size)
            } catch where error.code == .corrupt {
                // Expired meanwhile: its row is gone and its bytes erased. That is "not stored".
                if try await capture(id) == nil { return nil }
                throw error
            }
        }
        guard bytes.readableBytes == size else {
            throw StorageError(.corrupt, "\(location): blob \(id) has \(bytes.readableBytes) bytes, its row says \(size)")
        }
        return Data(bytes.readableBytesView)
    }

    public func counts() async throws(StorageError) -> (captures: Int, deks: Int) {
        let (c, d) = try await withClient("count records") { client in
            var result: (Int64, Int64) = (0, 0)
            for try await row in try await client.query(
                "SELECT (SELECT count(*) FROM captures), (SELECT count(*) FROM encryption_dek)", logger: Self.quiet
            ).decode((Int64, Int64).self) { result = row }
            return result
        }
        return (Int(c), Int(d))
    }

    // MARK: DEKStore

    public func dekRecord(_ id: DEKID) async throws(StorageError) -> Data? {
        try await withClient("read DEK record \(id)") { client in
            for try await (record) in try await client.query(
                "SELECT record FROM encryption_dek WHERE dek_id = \(id.hex)", logger: Self.quiet
            ).decode(ByteBuffer.self) {
                return Data(record.readableBytesView)
            }
            return nil
        }
    }

    /// Pages by `(creation_time, dek_id)` (indexes `encryption_dek_time`,
    /// `encryption_dek_agent_time`). - Throws: `.notFound` when `after` is not a stored DEK id.
    public func dekRecords(agent: AgentID?, after: DEKID?, limit: Int) async throws(StorageError) -> [StoredDEK] {
        try StorageCheck.limit(limit, "listing", context: location)
        var parts = PostgresQuery.StringInterpolation(literalCapacity: 256, interpolationCount: 4)
        parts.appendLiteral("SELECT dek_id, kek_id, agent_id, \(SQLTime.ms("creation_time")), record FROM encryption_dek WHERE true")
        if let agent { parts.appendLiteral(" AND agent_id = "); parts.appendInterpolation(agent.rawValue) }
        if let after {
            parts.appendLiteral(" AND (creation_time, dek_id) > (SELECT creation_time, dek_id FROM encryption_dek WHERE dek_id = ")
            parts.appendInterpolation(after.hex)
            parts.appendLiteral(")")
        }
        parts.appendLiteral(" ORDER BY creation_time, dek_id LIMIT ")
        parts.appendInterpolation(Int64(limit))
        let sql = PostgresQuery(stringInterpolation: parts)
        let location = self.location
        return try await withClient("read DEK records") { client in
            if let after {
                let known = try await client.query("SELECT 1 FROM encryption_dek WHERE dek_id = \(after.hex)",
                                                   logger: Self.quiet).collect().count > 0
                if !known { throw StorageError(.notFound, "\(location): no DEK record \(after) to page after") }
            }
            var out: [StoredDEK] = []
            for try await (dekHex, kekHex, agentText, created, record) in try await client.query(sql, logger: Self.quiet)
                .decode((String, String, String, Int64, ByteBuffer).self) {
                guard let dekID = DEKID(hex: dekHex), let kekID = KEKID(hex: kekHex) else {
                    throw StorageError(.corrupt, "\(location): encryption_dek row \(SafeText.quoted(dekHex)) holds an id that is not hex of the right length")
                }
                out.append(StoredDEK(dekID: dekID, kekID: kekID,
                                     agentID: try Self.agentID(agentText, location: location, table: "encryption_dek"),
                                     creationTimeMs: created, record: Data(record.readableBytesView)))
            }
            return out
        }
    }
}
