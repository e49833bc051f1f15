import CollectorStorage
import CustosBase
import Envelope
import Foundation
import NIOCore
import PostgresNIO

/// SQL fragments for times: columns are `timestamptz`, the seam's values Unix ms.
enum SQLTime {
    /// A `timestamptz` column as Unix ms (`int8`; exact for whole milliseconds).
    static func ms(_ column: String) -> String { "(extract(epoch FROM \(column)) * 1000)::int8" }
}

extension PostgresQuery.StringInterpolation {
    /// A bound Unix-ms value as `timestamptz`, exact to the millisecond (no float rounding:
    /// whole seconds through `to_timestamp`, the rest as an interval).
    mutating func appendInterpolation(timestampMs ms: Int64) {
        appendLiteral("(to_timestamp(")
        appendInterpolation(ms / 1000)
        appendLiteral("::int8) + (")
        appendInterpolation(ms % 1000)
        appendLiteral("::int8) * interval '1 millisecond')")
    }
}

extension PostgresStorage {
    // MARK: AgentStore

    public func addAgent(_ id: AgentID) async throws(StorageError) -> Secret {
        let token = AgentToken.new()
        let hash = ByteBuffer(bytes: AgentToken.hash(token))
        let inserted = try await withClient("add agent \(id)") { client in
            try await client.query("""
                INSERT INTO agents (agent_id, token_hash) VALUES (\(id.rawValue), \(hash))
                ON CONFLICT (agent_id) DO NOTHING RETURNING 1
                """, logger: Self.quiet).collect().count > 0
        }
        guard inserted else {
            throw StorageError(.alreadyExists, "\(location): agent \(id) exists already (rotate its token instead)")
        }
        return token
    }

    public func rotateToken(_ id: AgentID) async throws(StorageError) -> Secret {
        defer { verifiedTokens.forget(id) }  // also when the answer is lost after the commit
        let token = AgentToken.new()
        let hash = ByteBuffer(bytes: AgentToken.hash(token))
        let updated = try await withClient("rotate the token of agent \(id)") { client in
            try await client.query("UPDATE agents SET token_hash = \(hash) WHERE agent_id = \(id.rawValue) RETURNING 1",
                                   logger: Self.quiet).collect().count > 0
        }
        guard updated else { throw StorageError(.notFound, "\(location): no agent \(id)") }
        return token
    }

    public func removeAgent(_ id: AgentID) async throws(StorageError) {
        defer { verifiedTokens.forget(id) }
        let deleted = try await withClient("remove agent \(id)") { client in
            try await client.query("DELETE FROM agents WHERE agent_id = \(id.rawValue) RETURNING 1",
                                   logger: Self.quiet).collect().count > 0
        }
        guard deleted else { throw StorageError(.notFound, "\(location): no agent \(id)") }
    }

    public func agents() async throws(StorageError) -> [AgentInfo] {
        let location = self.location
        return try await withClient("list agents") { client in
            var out: [AgentInfo] = []
            let rows = try await client.query("SELECT agent_id, \(unescaped: SQLTime.ms("created_at")) FROM agents ORDER BY agent_id",
                                              logger: Self.quiet)
            for try await (id, createdAt) in rows.decode((String, Int64).self) {
                out.append(AgentInfo(id: try Self.agentID(id, location: location, table: "agents"), createdAtMs: createdAt))
            }
            return out
        }
    }

    public func agents(after: AgentID?, limit: Int) async throws(StorageError) -> [AgentInfo] {
        try StorageCheck.limit(limit, "agents", context: location)
        let location = self.location
        let query = Self.agentListing(after: after, limit: limit)
        return try await withClient("list agents") { client in
            var out: [AgentInfo] = []
            for try await (id, createdAt) in try await client.query(query, logger: Self.quiet).decode((String, Int64).self) {
                out.append(AgentInfo(id: try Self.agentID(id, location: location, table: "agents"), createdAtMs: createdAt))
            }
            return out
        }
    }

    /// The query of one page of ``agents(after:limit:)``: a range of the primary key's index
    /// (`agent_id` is `COLLATE "C"`: byte order, as `AgentID` compares). Used by the method and
    /// its query-plan test.
    static func agentListing(after: AgentID?, limit: Int) -> PostgresQuery {
        if let after {
            return """
                SELECT agent_id, \(unescaped: SQLTime.ms("created_at")) FROM agents WHERE agent_id > \(after.rawValue)
                ORDER BY agent_id LIMIT \(limit)
                """
        }
        return "SELECT agent_id, \(unescaped: SQLTime.ms("created_at")) FROM agents ORDER BY agent_id LIMIT \(limit)"
    }

    /// Whether `token` is `id`'s. An acceptance is remembered for
    /// ``Configuration/tokenCacheTTL`` (``VerifiedTokens``): a token rotated or an agent removed
    /// by another process (or by hand in `psql`) is refused here within that time; through this
    /// instance, at once. A wrong token always asks the database.
    public func authenticate(_ id: AgentID, token: Secret) async throws(StorageError) -> Bool {
        if verifiedTokens.accepts(id, token) { return true }
        let ticket = verifiedTokens.ticket()
        let lookUp = PostgresStatements.TokenHash(agentID: id.rawValue)
        let stored = try await onConnection("look up agent \(id)") { conn -> Data? in
            try await self.execute(lookUp, on: conn).last.map { Data($0.readableBytesView) }
        }
        // Constant-time; an unknown agent is compared against a dummy digest (the same work).
        let accepted = AgentToken.matches(token, storedHash: stored)
        if accepted, let stored { verifiedTokens.remember(id, hash: stored, ticket) }
        return accepted
    }

    static func agentID(_ text: String, location: String, table: String) throws(StorageError) -> AgentID {
        do { return try AgentID(text) } catch {
            throw StorageError(.corrupt, "\(location): \(table) holds agent id \(SafeText.quoted(text)), not a valid agent id")
        }
    }

    // MARK: KEKStore

    /// Empty strings count as absent (as on SQLite). - Throws: `.invalidArgument` when neither
    /// a path nor a PEM is given, or a text holds NUL.
    public func registerKEK(_ registration: KEKRegistration) async throws(StorageError) -> Int64 {
        var given = registration
        given.pubDatafile = given.pubDatafile.flatMap { $0.isEmpty ? nil : $0 }
        given.publicKeyPEM = given.publicKeyPEM.flatMap { $0.isEmpty ? nil : $0 }
        let r = given
        guard r.pubDatafile != nil || r.publicKeyPEM != nil else {
            throw StorageError(.invalidArgument, "\(location): a KEK needs a public key path (pub_datafile) or PEM (pub_pem)")
        }
        for (text, field) in [(r.pubDatafile, "pub_datafile"), (r.privDatafile, "priv_datafile"), (r.publicKeyPEM, "pub_pem")] {
            if let text { try StorageCheck.text(text, "KEK registration \(field)", context: location) }
        }
        return try await withClient("register a KEK") { client in
            var id: Int64 = 0
            let rows = try await client.query("""
                INSERT INTO encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile, pub_pem, kek_id)
                VALUES (\(r.active), \(r.privEncrypted), \(r.pubDatafile), \(r.privDatafile), \(r.publicKeyPEM), \(r.kekID?.hex))
                RETURNING id
                """, logger: Self.quiet)
            for try await (rowID) in rows.decode(Int64.self) { id = rowID }
            return id
        }
    }

    public func setKEKActive(rowID: Int64, active: Bool) async throws(StorageError) {
        let updated = try await withClient("set encryption_kek row \(rowID) active=\(active)") { client in
            try await client.query("UPDATE encryption_kek SET active = \(active) WHERE id = \(rowID) RETURNING 1",
                                   logger: Self.quiet).collect().count > 0
        }
        guard updated else { throw StorageError(.notFound, "\(location): no encryption_kek row \(rowID)") }
    }

    public func setKEKID(rowID: Int64, kekID: KEKID) async throws(StorageError) {
        let updated = try await withClient("set the KEK id of encryption_kek row \(rowID)") { client in
            try await client.query("UPDATE encryption_kek SET kek_id = \(kekID.hex) WHERE id = \(rowID) RETURNING 1",
                                   logger: Self.quiet).collect().count > 0
        }
        guard updated else { throw StorageError(.notFound, "\(location): no encryption_kek row \(rowID)") }
    }

    /// `createdAt` is `created_at` in UTC as `YYYY-MM-DD HH:MM:SS` (fractions dropped): the
    /// form of SQLite's `CURRENT_TIMESTAMP`, so both backends show it alike.
    public func keks() async throws(StorageError) -> [KEKRow] {
        let location = self.location
        return try await withClient("list KEKs") { client in
            var out: [KEKRow] = []
            let rows = try await client.query("""
                SELECT id, active, priv_encrypted, pub_datafile, priv_datafile, pub_pem, kek_id,
                       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                FROM encryption_kek ORDER BY id
                """, logger: Self.quiet)
            for try await (id, active, privEncrypted, pubFile, privFile, pem, kekHex, createdAt)
                in rows.decode((Int64, Bool, Bool, String?, String?, String?, String?, String?).self) {
                var kekID: KEKID?
                if let kekHex {
                    guard let k = KEKID(hex: kekHex) else {
                        throw StorageError(.corrupt, "\(location): encryption_kek row \(id): kek_id \(SafeText.quoted(kekHex)) is not 64 hex digits")
                    }
                    kekID = k
                }
                out.append(KEKRow(rowID: id, active: active, privEncrypted: privEncrypted, pubDatafile: pubFile,
                                  privDatafile: privFile, publicKeyPEM: pem, kekID: kekID, createdAt: createdAt))
            }
            return out
        }
    }

    /// A stream that yields once per change to `encryption_kek` (any insert, update, delete or
    /// truncate, by anyone: a trigger NOTIFYs `custos_kek_changed`), and once after the
    /// `LISTEN` connection came back from a loss (changes may have been missed meanwhile).
    /// Several changes close together may arrive as one signal (the stream keeps the newest).
    /// Ends when the storage closes. Needs ``run()``.
    public func kekChanges() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = state.withLock { s -> Int? in
            guard !s.closed else { return nil }
            s.nextSubscriber += 1
            s.subscribers[s.nextSubscriber] = continuation
            return s.nextSubscriber
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    func broadcastKEKChange() {
        for c in state.withLock({ Array($0.subscribers.values) }) { c.yield() }
    }

    // MARK: AuditStore

    @discardableResult
    public func appendAudit(actor: String, action: String, detail: String) async throws(StorageError) -> AuditEntry {
        for (text, field) in [(actor, "actor"), (action, "action"), (detail, "detail")] {
            try StorageCheck.text(text, "audit entry \(field)", context: location)
        }
        return try await withClient("append to the audit log") { client in
            var entry: AuditEntry?
            let rows = try await client.query("""
                INSERT INTO audit_log (actor, action, detail) VALUES (\(actor), \(action), \(detail))
                RETURNING id, \(unescaped: SQLTime.ms("at"))
                """, logger: Self.quiet)
            for try await (id, at) in rows.decode((Int64, Int64).self) {
                entry = AuditEntry(id: id, atMs: at, actor: actor, action: action, detail: detail)
            }
            guard let entry else { throw StorageError(.failed, "audit_log INSERT returned no row") }
            return entry
        }
    }

    public func auditEntries(before: Int64?, limit: Int) async throws(StorageError) -> [AuditEntry] {
        try StorageCheck.limit(limit, "listing", context: location)
        return try await withClient("read the audit log") { client in
            var out: [AuditEntry] = []
            let rows = try await client.query("""
                SELECT id, \(unescaped: SQLTime.ms("at")), actor, action, detail FROM audit_log
                WHERE id < \(before ?? Int64.max) ORDER BY id DESC LIMIT \(limit)
                """, logger: Self.quiet)
            for try await (id, at, actor, action, detail) in rows.decode((Int64, Int64, String, String, String).self) {
                out.append(AuditEntry(id: id, atMs: at, actor: actor, action: action, detail: detail))
            }
            return out
        }
    }
}
