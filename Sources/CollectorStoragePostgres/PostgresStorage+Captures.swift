import CollectorStorage
import Crypto
import CustosBase
import Envelope
import Foundation
import NIOCore
import PostgresNIO

extension PostgresStorage {
    // MARK: Ingest

    /// Stores `items` in one transaction. Idempotent across collector instances: each insert is
    /// `INSERT … ON CONFLICT DO NOTHING`, so of two transactions storing one id the second
    /// waits for the first and then compares (the stored bytes by SHA-256, computed by the
    /// server, so they are not sent back). Outcomes as the SQLite backend: a DEK record earlier
    /// in the same batch counts for the blobs after it; another agent's id is `.otherAgent`.
    /// With `blob-dir=`, large blobs not stored yet are first appended to blob files and made
    /// durable (``putLargeBlobs(_:)``); their rows get a `blob_ref` in the transaction.
    /// - Throws: `.invalidArgument` for a time outside years 1-9999 (nothing stored);
    ///   `.unavailable` when the database or the blob directory cannot be used (nothing stored).
    public func ingest(_ items: [IngestItem], receivedAtMs: Int64) async throws(StorageError) -> [IngestOutcome] {
        if items.isEmpty { return [] }
        try StorageCheck.ingest(items, receivedAtMs: receivedAtMs, context: location)
        let refs = try await putLargeBlobs(items)
        return try await inTransaction("store \(items.count) records") { conn in
            // A constant number of statements for the blobs (docs/STORAGE.md "Benchmarks"): which
            // ids are stored already and which DEK records exist, each one query; then the new
            // rows in one INSERT; row-by-row work only for ids that are taken.
            let blobs = items.compactMap { if case .blob(let b) = $0 { b } else { nil } }
            var taken = Set<String>()
            var owners: [String: String] = [:]
            if !blobs.isEmpty {
                let ids = blobs.map(\.blobID.hex)
                for try await id in try await conn.query("SELECT blob_id FROM captures WHERE blob_id = ANY(\(ids))",
                                                         logger: Self.quiet).decode(String.self) {
                    taken.insert(id)
                }
                let deks = Array(Set(blobs.map(\.dekID.hex)))
                for try await (dek, agent) in try await conn.query(
                    "SELECT dek_id, agent_id FROM encryption_dek WHERE dek_id = ANY(\(deks))", logger: Self.quiet
                ).decode((String, String).self) {
                    owners[dek] = agent
                }
            }
            var outcomes = [IngestOutcome?](repeating: nil, count: items.count)
            var batchDEKs = Set<DEKID>()
            var pending: [(index: Int, blob: StoredBlob)] = []
            var pendingIDs = Set<String>()
            var compareLater: [(index: Int, blob: StoredBlob)] = []
            for (index, item) in items.enumerated() {
                switch item {
                case .dek(let d):
                    let outcome = try await Self.insertDEK(d, receivedAtMs: receivedAtMs, conn: conn)
                    if outcome == .stored || outcome == .duplicate { batchDEKs.insert(d.dekID) }
                    outcomes[index] = outcome
                case .blob(let b):
                    let id = b.blobID.hex
                    if taken.contains(id) || pendingIDs.contains(id) {
                        compareLater.append((index, b))  // compared with the stored row after the INSERT
                        continue
                    }
                    // The DEK record must be this agent's, stored before the batch or earlier in
                    // it: another agent's DEK id is answered as an unknown one (the blob could
                    // never be opened with it, and the answer must not tell whether that id exists).
                    guard batchDEKs.contains(b.dekID) || owners[b.dekID.hex] == b.agentID.rawValue else {
                        outcomes[index] = .unknownDEK
                        continue
                    }
                    pending.append((index, b))
                    pendingIDs.insert(id)
                }
            }
            let inserted = try await self.insertBlobs(pending.map(\.blob), refs: refs, receivedAtMs: receivedAtMs, conn: conn)
            for (index, b) in pending {
                // Not inserted: another instance stored the id after our first look.
                outcomes[index] = inserted.contains(b.blobID.hex) ? .stored : try await self.compareStoredBlob(b, conn: conn) ?? .conflict
            }
            for (index, b) in compareLater {
                outcomes[index] = try await self.compareStoredBlob(b, conn: conn) ?? .conflict
            }
            return outcomes.map { $0 ?? .conflict }
        }
    }

    /// Inserts the rows of `blobs` (distinct ids) in one statement (`unnest` of one array per
    /// column); a blob with a `refs` entry gets an empty `blob` and the reference (its bytes are
    /// in a blob file already), the others their bytes. Returns the ids inserted; an id another
    /// instance holds is skipped (`ON CONFLICT DO NOTHING`).
    private func insertBlobs(_ blobs: [StoredBlob], refs: [BlobID: BlobRef], receivedAtMs: Int64,
                             conn: PostgresConnection) async throws -> Set<String> {
        guard !blobs.isEmpty else { return [] }
        let ids = blobs.map(\.blobID.hex), agents = blobs.map(\.agentID.rawValue), kinds = blobs.map(\.kind.name)
        let deks = blobs.map(\.dekID.hex), keks = blobs.map(\.kekID.hex), sequences = blobs.map(\.sequence)
        let times = blobs.map(\.captureTimeMs), sizes = blobs.map { Int64($0.bytes.count) }
        let bytes = blobs.map { refs[$0.blobID] == nil ? ByteBuffer(bytes: $0.bytes) : ByteBuffer() }
        let refTexts = blobs.map { refs[$0.blobID]?.text ?? "" }
        // "" stands for NULL (no session): a session's user and display are never empty.
        let users = blobs.map { $0.user?.rawValue ?? "" }, displays = blobs.map { $0.display ?? "" }
        var inserted = Set<String>()
        let rows = try await conn.query("""
            INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob, blob_ref, received_at,
                                  user_name, display)
            SELECT id, agent, kind, dek, kek, seq,
                   to_timestamp((t / 1000)::float8) + (t % 1000) * interval '1 millisecond', sz, b, NULLIF(r, ''),
                   \(timestampMs: receivedAtMs), NULLIF(usr, ''), NULLIF(dpy, '')
            FROM unnest(\(ids)::text[], \(agents)::text[], \(kinds)::text[], \(deks)::text[], \(keks)::text[],
                        \(sequences)::int8[], \(times)::int8[], \(sizes)::int8[], \(bytes)::bytea[], \(refTexts)::text[],
                        \(users)::text[], \(displays)::text[])
                 AS u(id, agent, kind, dek, kek, seq, t, sz, b, r, usr, dpy)
            ON CONFLICT (blob_id) DO NOTHING RETURNING blob_id
            """, logger: Self.quiet)
        for try await id in rows.decode(String.self) { inserted.insert(id) }
        return inserted
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
    static func captureListing(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) -> PostgresQuery {
        let ascending = query.order == .ascending
        // Built piece by piece: every value is a bound parameter, never text in the SQL.
        var parts = PostgresQuery.StringInterpolation(literalCapacity: 256, interpolationCount: 8)
        parts.appendLiteral("SELECT \(captureColumns) FROM captures WHERE true")
        if let agent = query.agentID { parts.appendLiteral(" AND agent_id = "); parts.appendInterpolation(agent.rawValue) }
        if let kind = query.kind { parts.appendLiteral(" AND kind = "); parts.appendInterpolation(kind.name) }
        if let user = query.user { parts.appendLiteral(" AND user_name = "); parts.appendInterpolation(user.rawValue) }
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
        if let refText { return try await referencedBytes(id, refText: refText, size: size) }
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
