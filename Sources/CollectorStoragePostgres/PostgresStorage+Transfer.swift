import CollectorStorage
import CustosBase
import Foundation
import NIOCore
import PostgresNIO

// MARK: TransferStore (`custos db migrate`)

extension PostgresStorage {
    public func agentCredentials() async throws(StorageError) -> [AgentCredential] {
        let location = self.location
        return try await withClient("list agents with their token hashes") { client in
            var out: [AgentCredential] = []
            let rows = try await client.query("""
                SELECT agent_id, token_hash, \(unescaped: SQLTime.ms("created_at")) FROM agents ORDER BY agent_id
                """, logger: Self.quiet)
            for try await (id, hash, createdAt) in rows.decode((String, ByteBuffer, Int64).self) {
                out.append(AgentCredential(id: try Self.agentID(id, location: location, table: "agents"),
                                           tokenHash: Data(hash.readableBytesView), createdAtMs: createdAt))
            }
            return out
        }
    }

    public func importAgents(_ agents: [AgentCredential]) async throws(StorageError) -> Int {
        for a in agents where a.tokenHash.count != 32 {
            throw StorageError(.invalidArgument, "\(location): agent \(a.id): a token hash is 32 bytes, not \(a.tokenHash.count)")
        }
        let location = self.location
        return try await inTransaction("import \(agents.count) agents") { conn in
            var added = 0
            for a in agents {
                let hash = ByteBuffer(bytes: a.tokenHash)
                let inserted = try await conn.query("""
                    INSERT INTO agents (agent_id, token_hash, created_at) VALUES (\(a.id.rawValue), \(hash), \(timestampMs: a.createdAtMs))
                    ON CONFLICT (agent_id) DO NOTHING RETURNING 1
                    """, logger: Self.quiet).collect().count > 0
                if inserted { added += 1; continue }
                var stored: Data?
                for try await h in try await conn.query("SELECT token_hash FROM agents WHERE agent_id = \(a.id.rawValue)",
                                                        logger: Self.quiet).decode(ByteBuffer.self) {
                    stored = Data(h.readableBytesView)
                }
                guard stored == a.tokenHash else {
                    throw StorageError(.alreadyExists, "\(location): agent \(a.id) exists already with another token")
                }
            }
            return added
        }
    }

    public func importKEKs(_ rows: [KEKRow]) async throws(StorageError) -> Int {
        let existing = try await keks()
        let fresh = try KEKRow.rowsToImport(rows, existing: existing, context: location)
        guard !fresh.isEmpty else { return 0 }
        let toAdd = fresh
        try await inTransaction("import \(toAdd.count) KEK rows") { conn in
            for r in toAdd {
                // created_at as written (UTC); NULL when the source had none in that form.
                try await conn.query("""
                    INSERT INTO encryption_kek (id, active, priv_encrypted, pub_datafile, priv_datafile, pub_pem, kek_id, created_at)
                    VALUES (\(r.rowID), \(r.active), \(r.privEncrypted), \(r.pubDatafile), \(r.privDatafile), \(r.publicKeyPEM),
                            \(r.kekID?.hex), (\(r.canonicalCreatedAt)::timestamp AT TIME ZONE 'UTC'))
                    """, logger: Self.quiet)
            }
            // Rows made later (the seed's INSERT, `custos keys register`) get ids after these.
            try await conn.query("""
                SELECT setval(pg_get_serial_sequence('encryption_kek', 'id'), (SELECT max(id) FROM encryption_kek))
                """, logger: Self.quiet)
        }
        return toAdd.count
    }

    public func importAudit(_ entries: [AuditEntry]) async throws(StorageError) -> Int {
        for e in entries {
            for (text, field) in [(e.actor, "actor"), (e.action, "action"), (e.detail, "detail")] {
                try StorageCheck.text(text, "audit entry \(e.id) \(field)", context: location)
            }
        }
        guard !entries.isEmpty else { return 0 }
        return try await inTransaction("import \(entries.count) audit entries") { conn in
            for e in entries {
                let inserted = try await conn.query("""
                    INSERT INTO audit_log (id, at, actor, action, detail)
                    VALUES (\(e.id), \(timestampMs: e.atMs), \(e.actor), \(e.action), \(e.detail))
                    ON CONFLICT (id) DO NOTHING RETURNING 1
                    """, logger: Self.quiet).collect().count > 0
                if !inserted {
                    // The id is the target's own: the next one after every existing id.
                    try await conn.query("""
                        SELECT setval(pg_get_serial_sequence('audit_log', 'id'), (SELECT max(id) FROM audit_log))
                        """, logger: Self.quiet)
                    try await conn.query("""
                        INSERT INTO audit_log (at, actor, action, detail)
                        VALUES (\(timestampMs: e.atMs), \(e.actor), \(e.action), \(e.detail))
                        """, logger: Self.quiet)
                }
            }
            try await conn.query("""
                SELECT setval(pg_get_serial_sequence('audit_log', 'id'), (SELECT max(id) FROM audit_log))
                """, logger: Self.quiet)
            return entries.count
        }
    }

    public func identity() async throws(StorageError) -> String {
        try await withClient("read the database's identity") { client in
            var out: String?
            let rows = try await client.query("""
                SELECT (SELECT system_identifier FROM pg_control_system())::text || '/' ||
                       (SELECT oid FROM pg_database WHERE datname = current_database())::text
                """, logger: Self.quiet)
            for try await id in rows.decode(String.self) { out = id }
            guard let out else { throw StorageError(.failed, "the database's identity query returned no row") }
            return "postgresql:" + out
        }
    }
}
