import CollectorStorage
import CustosBase
import Foundation
import GRDB

// MARK: TransferStore (`custos db migrate`)

extension SQLiteStorage {
    public func agentCredentials() async throws(StorageError) -> [AgentCredential] {
        let database = shownPath
        return try await read("list agents with their token hashes") { db in
            try Row.fetchAll(db, sql: "SELECT agent_id, token_hash, created_at FROM agents ORDER BY agent_id").map { row in
                let r = RowReader(row, database: database, table: "agents", key: "agent_id")
                let hash = try r.bytes("token_hash")
                guard hash.count == 32 else { throw r.corrupt("token_hash", "32 bytes (SHA-256)") }
                return AgentCredential(id: try r.agentID("agent_id"), tokenHash: hash, createdAtMs: try r.int("created_at"))
            }
        }
    }

    public func importAgents(_ agents: [AgentCredential]) async throws(StorageError) -> Int {
        for a in agents where a.tokenHash.count != 32 {
            throw StorageError(.invalidArgument, "\(shownPath): agent \(a.id): a token hash is 32 bytes, not \(a.tokenHash.count)")
        }
        let database = shownPath
        return try await write("import \(agents.count) agents") { db in
            var added = 0
            for a in agents {
                if let stored = try Data.fetchOne(db, sql: "SELECT token_hash FROM agents WHERE agent_id = ?", arguments: [a.id.rawValue]) {
                    guard stored == a.tokenHash else {
                        throw StorageError(.alreadyExists, "\(database): agent \(a.id) exists already with another token")
                    }
                    continue
                }
                try db.execute(sql: "INSERT INTO agents (agent_id, token_hash, created_at) VALUES (?, ?, ?)",
                               arguments: [a.id.rawValue, a.tokenHash, a.createdAtMs])
                added += 1
            }
            return added
        }
    }

    public func importKEKs(_ rows: [KEKRow]) async throws(StorageError) -> Int {
        let existing = try await keks()
        let database = shownPath
        let fresh = try KEKRow.rowsToImport(rows, existing: existing, context: database)
        let toAdd = fresh
        try await write("import \(toAdd.count) KEK rows") { db in
            for r in toAdd {
                try db.execute(sql: """
                    INSERT INTO encryption_kek (id, active, priv_encrypted, pub_datafile, priv_datafile, pub_pem, kek_id, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [r.rowID, r.active, r.privEncrypted, r.pubDatafile, r.privDatafile, r.publicKeyPEM,
                                     r.kekID?.hex, r.canonicalCreatedAt])
            }
        }
        return toAdd.count
    }

    public func importAudit(_ entries: [AuditEntry]) async throws(StorageError) -> Int {
        for e in entries {
            for (text, field) in [(e.actor, "actor"), (e.action, "action"), (e.detail, "detail")] {
                try StorageCheck.text(text, "audit entry \(e.id) \(field)", context: shownPath)
            }
        }
        return try await write("import \(entries.count) audit entries") { db in
            for e in entries {
                let taken = try Bool.fetchOne(db, sql: "SELECT 1 FROM audit_log WHERE id = ?", arguments: [e.id]) != nil
                if taken {
                    try db.execute(sql: "INSERT INTO audit_log (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                                   arguments: [e.atMs, e.actor, e.action, e.detail])
                } else {
                    try db.execute(sql: "INSERT INTO audit_log (id, at, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
                                   arguments: [e.id, e.atMs, e.actor, e.action, e.detail])
                }
            }
            return entries.count
        }
    }

    public func identity() async throws(StorageError) -> String {
        let database = shownPath
        return try await read("read the database's id") { db in
            guard let id = try String.fetchOne(db, sql: "SELECT id FROM blob_store LIMIT 1") else {
                throw StorageError(.corrupt, "\(database): blob_store holds no id")
            }
            return "sqlite:" + id
        }
    }
}
