import CollectorStorage
import CustosBase
import Envelope
import Foundation
import PostgresNIO

/// Legal holds, expiry and the maintenance lease (docs/STORAGE.md "Retention").
extension PostgresStorage {
    // MARK: HoldStore

    /// - Throws: `.invalidArgument` for `untilMs` outside years 1–9999, a reason
    ///   ``LegalHold/reasonProblem(_:)`` refuses, or a `createdBy` holding NUL.
    public func addHold(agent: AgentID, untilMs: Int64, reason: String, createdBy: String) async throws(StorageError) -> LegalHold {
        try StorageCheck.time(untilMs, "hold until", context: location)
        try StorageCheck.holdReason(reason, context: location)
        try StorageCheck.text(createdBy, "hold created by", context: location)
        return try await withClient("add a hold on agent \(agent)") { client in
            let rows = try await client.query("""
                INSERT INTO legal_hold (agent_id, until_at, reason, created_by)
                VALUES (\(agent.rawValue), \(timestampMs: untilMs), \(reason), \(createdBy))
                RETURNING id, \(unescaped: SQLTime.ms("created_at"))
                """, logger: Self.quiet)
            for try await (id, at) in rows.decode((Int64, Int64).self) {
                return LegalHold(id: id, agentID: agent, untilMs: untilMs, reason: reason, createdBy: createdBy, createdAtMs: at)
            }
            throw StorageError(.failed, "legal_hold INSERT returned no row")
        }
    }

    /// The columns ``hold(_:location:)`` reads, in its order.
    static let holdColumns = """
        id, agent_id, \(SQLTime.ms("until_at")), reason, created_by, \(SQLTime.ms("created_at")), \(SQLTime.ms("removed_at")), removed_by
        """
    typealias HoldRow = (Int64, String, Int64, String, String, Int64, Int64?, String?)

    /// A `legal_hold` row (``holdColumns``) as a ``LegalHold``.
    /// - Throws: `.corrupt` naming the row when its agent id does not parse.
    static func hold(_ row: HoldRow, location: String) throws(StorageError) -> LegalHold {
        LegalHold(id: row.0, agentID: try agentID(row.1, location: location, table: "legal_hold"), untilMs: row.2,
                  reason: row.3, createdBy: row.4, createdAtMs: row.5, removedAtMs: row.6, removedBy: row.7)
    }

    /// - Throws: `.corrupt` naming the row when its agent id does not parse.
    public func holds(activeAtMs: Int64?) async throws(StorageError) -> [LegalHold] {
        if let activeAtMs { try StorageCheck.time(activeAtMs, "holds active at", context: location) }
        let location = self.location
        let query: PostgresQuery = if let activeAtMs {
            "SELECT \(unescaped: Self.holdColumns) FROM legal_hold WHERE until_at > \(timestampMs: activeAtMs) AND removed_at IS NULL ORDER BY id"
        } else {
            "SELECT \(unescaped: Self.holdColumns) FROM legal_hold ORDER BY id"
        }
        return try await withClient("list holds") { client in
            var out: [LegalHold] = []
            for try await row in try await client.query(query, logger: Self.quiet).decode(HoldRow.self) {
                out.append(try Self.hold(row, location: location))
            }
            return out
        }
    }

    /// One `UPDATE … WHERE removed_at IS NULL` (of two admins removing one hold at once, one
    /// does it; the other is told by whom it was removed).
    public func removeHold(id: Int64, removedBy: String) async throws(StorageError) -> LegalHold {
        try StorageCheck.text(removedBy, "hold removed by", context: location)
        let location = self.location
        return try await withClient("remove hold \(id)") { client in
            for try await row in try await client.query("""
                UPDATE legal_hold SET removed_at = now(), removed_by = \(removedBy) WHERE id = \(id) AND removed_at IS NULL
                RETURNING \(unescaped: Self.holdColumns)
                """, logger: Self.quiet).decode(HoldRow.self) {
                return try Self.hold(row, location: location)
            }
            for try await row in try await client.query("SELECT \(unescaped: Self.holdColumns) FROM legal_hold WHERE id = \(id)",
                                                        logger: Self.quiet).decode(HoldRow.self) {
                let hold = try Self.hold(row, location: location)
                throw StorageError(.notFound, "\(location): legal hold \(id) was removed already, by \(SafeText.quoted(hold.removedBy ?? "")) at \(isoTime(unixMs: hold.removedAtMs ?? 0))")
            }
            throw StorageError(.notFound, "\(location): no legal hold \(id)")
        }
    }

    // MARK: Lease

    /// One `INSERT … ON CONFLICT DO UPDATE … WHERE` that only takes a row that is `holder`'s or
    /// expired; PostgreSQL serialises two instances' upserts on the row, so one of them wins.
    public func acquireLease(_ name: String, holder: String, ttlMs: Int64, nowMs: Int64) async throws(StorageError) -> Bool {
        try StorageCheck.lease(name, holder: holder, ttlMs: ttlMs, nowMs: nowMs, context: location)
        return try await withClient("take lease \(SafeText.quoted(name))") { client in
            try await client.query("""
                INSERT INTO maintenance_lease (name, holder, expires_at) VALUES (\(name), \(holder), \(timestampMs: nowMs + ttlMs))
                ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                WHERE maintenance_lease.holder = EXCLUDED.holder OR maintenance_lease.expires_at <= \(timestampMs: nowMs)
                RETURNING 1
                """, logger: Self.quiet).collect().count > 0
        }
    }

    public func releaseLease(_ name: String, holder: String) async throws(StorageError) {
        _ = try await withClient("release lease \(SafeText.quoted(name))") { client in
            try await client.query("DELETE FROM maintenance_lease WHERE name = \(name) AND holder = \(holder)",
                                   logger: Self.quiet).collect().count
        }
    }

    // MARK: Expiry

    /// Expiry in two phases (docs/STORAGE.md "Retention"): ``expireRows(policy:nowMs:limit:)``
    /// deletes the rows, one transaction per ``ExpiryRule``, queueing the blob-file ranges of
    /// rows with a `blob_ref` in `blob_release` in the same statement; then
    /// ``releaseBlobBytes(limit:)`` erases the queued ranges (this call's and any an earlier run
    /// left) and deletes blob files no row points into. Bytes kept in the row (`bytea`, TOASTed)
    /// go with it (the space is reused after `VACUUM`, which autovacuum runs). A failure of the
    /// second phase does not fail the call: it is in ``ExpiryOutcome/released`` and the ranges
    /// wait for the next call.
    public func expire(policy: RetentionPolicy, nowMs: Int64, limit: Int) async throws(StorageError) -> ExpiryOutcome {
        var outcome = try await expireRows(policy: policy, nowMs: nowMs, limit: limit)
        let (released, more) = await releaseBlobBytes(limit: limit)
        outcome.released = released
        outcome.more = outcome.more || more
        return outcome
    }

    /// Phase 1 of ``expire(policy:nowMs:limit:)``: deletes at most `limit` expired captures, one
    /// transaction per ``ExpiryRule``, each one statement that also queues the deleted rows'
    /// blob-file ranges in `blob_release` (so a crash after its commit leaves the ranges queued,
    /// never forgotten). ``ExpiryOutcome/released`` is empty.
    /// - Throws: `.invalidArgument` as ``expire(policy:nowMs:limit:)``; `.unavailable`, `.failed`.
    func expireRows(policy: RetentionPolicy, nowMs: Int64, limit: Int) async throws(StorageError) -> ExpiryOutcome {
        try StorageCheck.expiry(policy: policy, nowMs: nowMs, limit: limit, context: location)
        var outcome = ExpiryOutcome()
        var remaining = limit
        for rule in policy.expiryRules(nowMs: nowMs) where remaining > 0 {
            let query = Self.expiryQuery(rule, nowMs: nowMs, limit: remaining)
            let sizes = try await inTransaction("expire \(rule.kind.name) captures") { conn in
                var sizes: [Int64] = []
                for try await size in try await conn.query(query, logger: Self.quiet).decode(Int64.self) { sizes.append(size) }
                return sizes
            }
            for size in sizes { outcome.add(rule.kind, bytes: size) }
            remaining -= sizes.count
        }
        outcome.more = remaining == 0
        return outcome
    }

    /// The DELETE of one expiry selection (every value bound), which queues the deleted rows'
    /// blob references in `blob_release` in the same statement (a data-modifying `WITH`) and
    /// returns each deleted row's size.
    static func expiryQuery(_ rule: ExpiryRule, nowMs: Int64, limit: Int) -> PostgresQuery {
        var parts = PostgresQuery.StringInterpolation(literalCapacity: 512, interpolationCount: 6)
        parts.appendLiteral("WITH gone AS (DELETE FROM captures WHERE blob_id IN (SELECT blob_id FROM captures WHERE kind = ")
        parts.appendInterpolation(rule.kind.name)
        parts.appendLiteral(" AND capture_time < ")
        parts.appendInterpolation(timestampMs: rule.cutoffMs)
        if let agent = rule.agent {
            parts.appendLiteral(" AND agent_id = ")
            parts.appendInterpolation(agent.rawValue)
        } else if !rule.excludedAgents.isEmpty {
            parts.appendLiteral(" AND agent_id <> ALL(")
            parts.appendInterpolation(rule.excludedAgents.map(\.rawValue))
            parts.appendLiteral(")")
        }
        parts.appendLiteral(" AND NOT EXISTS (SELECT 1 FROM legal_hold h WHERE h.agent_id = captures.agent_id AND h.until_at > ")
        parts.appendInterpolation(timestampMs: nowMs)
        parts.appendLiteral(" AND h.removed_at IS NULL) ORDER BY capture_time LIMIT ")
        parts.appendInterpolation(Int64(limit))
        parts.appendLiteral(" FOR UPDATE SKIP LOCKED) RETURNING blob_id, size, blob_ref), ")
        parts.appendLiteral("queued AS (INSERT INTO blob_release (ref, blob_id) SELECT blob_ref, blob_id FROM gone ")
        parts.appendLiteral("WHERE blob_ref IS NOT NULL ON CONFLICT (ref) DO NOTHING) SELECT size FROM gone")
        return PostgresQuery(stringInterpolation: parts)
    }
}
