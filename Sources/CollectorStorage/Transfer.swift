import CustosBase
import Foundation

/// One agent as a backend stores it: its id, the SHA-256 of its token (``AgentToken``: the same
/// scheme on every backend) and when it was added (Unix ms).
public struct AgentCredential: Sendable, Equatable {
    public var id: AgentID
    /// 32 bytes.
    public var tokenHash: Data
    public var createdAtMs: Int64

    public init(id: AgentID, tokenHash: Data, createdAtMs: Int64) {
        self.id = id
        self.tokenHash = tokenHash
        self.createdAtMs = createdAtMs
    }
}

/// What `custos db migrate` needs besides the other stores: rows copied as they are — agents
/// with their token hashes (the same tokens keep working), KEK rows and audit entries with their
/// ids and times — so the migrated database is the same registry, not a re-made one. Captures
/// and DEK records go through ``CaptureStore/ingest(_:receivedAtMs:)`` (idempotent by id).
///
/// Every import is idempotent: a row already present with the same content is skipped, so an
/// interrupted migration is simply run again; an agent or KEK row present with other content is
/// `.alreadyExists`, naming it (the target then holds other data: nothing of that row is changed).
public protocol TransferStore: Sendable {
    /// Every agent, by id.
    /// - Throws: ``StorageError`` (`.corrupt` for a row the backend cannot read).
    func agentCredentials() async throws(StorageError) -> [AgentCredential]
    /// Adds `agents` as they are. Returns how many were new.
    /// - Throws: ``StorageError`` `.alreadyExists` when an agent exists with another token hash.
    func importAgents(_ agents: [AgentCredential]) async throws(StorageError) -> Int
    /// Adds KEK rows with their row ids, flags, paths, PEM, KEK id and creation time (a
    /// `created_at` that is not `YYYY-MM-DD HH:MM:SS` is left empty). Returns how many were new.
    /// - Throws: ``StorageError`` `.alreadyExists` when a row with that id holds something else.
    func importKEKs(_ rows: [KEKRow]) async throws(StorageError) -> Int
    /// Adds audit entries with their times: each with its own id when that id is free, else
    /// with the next id after every existing one (the target's own entries — the migration's
    /// record — may have taken it). The caller passes only entries the target does not hold
    /// (compared by content); entries appended later get larger ids. Returns how many were added.
    /// - Throws: ``StorageError`` `.invalidArgument` for text the audit log refuses.
    func importAudit(_ entries: [AuditEntry]) async throws(StorageError) -> Int
    /// What identifies this database wherever it is reached from (another path, a symbolic
    /// link, another host name): SQLite `sqlite:` + the random id made with the database
    /// (`blob_store.id`); PostgreSQL `postgresql:` + the cluster's system identifier
    /// (`pg_control_system()`) + `/` + the database's OID.
    func identity() async throws(StorageError) -> String
}

extension AuditEntry {
    /// What makes two entries the same record, whatever their ids: time, actor, action, detail.
    public var content: [String] { [String(atMs), actor, action, detail] }
}

extension KEKRow {
    /// The rows of `incoming` a target holding `existing` must add (``TransferStore/importKEKs(_:)``
    /// on every backend): a row already there with the same entry is skipped.
    /// - Throws: ``StorageError`` `.alreadyExists` for a row id that holds another entry,
    ///   `.invalidArgument` for a row with neither a public key path nor a PEM; `context` names
    ///   the database.
    public static func rowsToImport(_ incoming: [KEKRow], existing: [KEKRow], context: String) throws(StorageError) -> [KEKRow] {
        var fresh: [KEKRow] = []
        for row in incoming {
            if let present = existing.first(where: { $0.rowID == row.rowID }) {
                guard present.sameEntry(as: row) else {
                    throw StorageError(.alreadyExists, "\(context): encryption_kek row \(row.rowID) exists already with other content")
                }
                continue
            }
            guard row.pubDatafile != nil || row.publicKeyPEM != nil else {
                throw StorageError(.invalidArgument, "\(context): encryption_kek row \(row.rowID) has neither pub_datafile nor pub_pem")
            }
            fresh.append(row)
        }
        return fresh
    }

    /// The same registry entry as `other`: everything but the informational `createdAt`.
    public func sameEntry(as other: KEKRow) -> Bool {
        rowID == other.rowID && active == other.active && privEncrypted == other.privEncrypted
            && pubDatafile == other.pubDatafile && privDatafile == other.privDatafile
            && publicKeyPEM == other.publicKeyPEM && kekID == other.kekID
    }

    /// `createdAt` when it is `YYYY-MM-DD HH:MM:SS` (what both backends write), else nil.
    public var canonicalCreatedAt: String? {
        guard let c = createdAt, c.utf8.count == 19,
              c.wholeMatch(of: /[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}/) != nil else { return nil }
        return c
    }
}

extension AdminAccount {
    /// The same credentials as `other` (what `custos db migrate` compares): name, role,
    /// password hash, TOTP secret and creation time; not the failed-login state or the last
    /// TOTP step, which change with every login.
    public func sameCredentials(as other: AdminAccount) -> Bool {
        name == other.name && role == other.role && passwordHash == other.passwordHash
            && totpSecret == other.totpSecret && createdAtMs == other.createdAtMs
    }
}
