import CustosBase
import Envelope
import Foundation
import ServiceLifecycle

/// Agents and their tokens.
public protocol AgentStore: Sendable {
    /// Creates an agent; returns its new random token (shown once; only its SHA-256 is stored;
    /// ``AgentToken``). - Throws: `.alreadyExists` when the id is taken.
    func addAgent(_ id: AgentID) async throws(StorageError) -> Secret
    /// Replaces an agent's token; returns the new one. - Throws: `.notFound`.
    func rotateToken(_ id: AgentID) async throws(StorageError) -> Secret
    /// Deletes an agent (its captures stay). - Throws: `.notFound`.
    func removeAgent(_ id: AgentID) async throws(StorageError)
    /// Every agent, by id.
    func agents() async throws(StorageError) -> [AgentInfo]
    /// One page of agents by id (byte order), strictly after `after` (any agent id, stored or
    /// not; nil: from the first), at most `limit` (1…10,000). One range of the primary key's
    /// index: a page never reads the whole table.
    /// - Throws: `.invalidArgument` for a limit out of range.
    func agents(after: AgentID?, limit: Int) async throws(StorageError) -> [AgentInfo]
    /// Whether `token` is the agent's token (constant-time comparison of SHA-256 digests);
    /// false for an unknown agent.
    func authenticate(_ id: AgentID, token: Secret) async throws(StorageError) -> Bool
}

/// The KEK registry: the `encryption_kek` table.
public protocol KEKStore: Sendable {
    /// Inserts an `encryption_kek` row; returns its row id. Empty strings count as absent.
    /// - Throws: `.invalidArgument` when neither a path nor a PEM is given, or when a text
    ///   holds NUL (``StorageCheck/text(_:_:context:)``).
    func registerKEK(_ registration: KEKRegistration) async throws(StorageError) -> Int64
    /// Sets `active` on a row. - Throws: `.notFound`.
    func setKEKActive(rowID: Int64, active: Bool) async throws(StorageError)
    /// Records the KEK id computed from a row's public key. - Throws: `.notFound`.
    func setKEKID(rowID: Int64, kekID: KEKID) async throws(StorageError)
    /// All rows, by row id.
    func keks() async throws(StorageError) -> [KEKRow]
    /// Signals each change to `encryption_kek` made by anyone (PostgreSQL `LISTEN`/`NOTIFY`
    /// through a trigger, so an INSERT typed in `psql` counts too); a backend that cannot see
    /// outside changes (SQLite) yields nothing and the registry re-reads on an unknown KEK id
    /// instead. The stream ends when the storage is closed.
    func kekChanges() -> AsyncStream<Void>
}

/// DEK records: the `encryption_dek` table.
public protocol DEKStore: Sendable {
    /// The record bytes of a DEK, nil when unknown.
    func dekRecord(_ id: DEKID) async throws(StorageError) -> Data?
    /// DEK records by creation time (then DEK id), optionally of one agent, after `after` (a
    /// DEK id returned earlier), at most `limit` (1…10,000).
    /// - Throws: `.notFound` when `after` is not a stored DEK id (nothing to page after);
    ///   `.invalidArgument` for a limit out of range.
    func dekRecords(agent: AgentID?, after: DEKID?, limit: Int) async throws(StorageError) -> [StoredDEK]
}

/// Captures: ingest and listings.
public protocol CaptureStore: Sendable {
    /// Stores a batch atomically (all or nothing); one outcome per item, in order. Idempotent
    /// by id across every collector instance on the same database: the same id with the same
    /// bytes is `.duplicate`, with other bytes `.conflict`.
    /// - Throws: `.invalidArgument` (nothing stored) when `receivedAtMs`, a DEK record's creation
    ///   time or a blob's capture time is outside years 1–9999 (``StorageCheck/timeRangeMs``);
    ///   `.unavailable` when the database cannot be reached (nothing stored).
    func ingest(_ items: [IngestItem], receivedAtMs: Int64) async throws(StorageError) -> [IngestOutcome]
    /// One page of captures matching `query`, strictly after `cursor` in the query's order, at
    /// most `limit` (1…10,000). Served by an index range: a page never scans the table.
    /// - Throws: `.invalidArgument` for a limit out of range, or a time bound or cursor time
    ///   outside years 1–9999.
    func captures(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) async throws(StorageError) -> CapturePage
    /// One capture's metadata, nil when unknown.
    func capture(_ id: BlobID) async throws(StorageError) -> CaptureInfo?
    /// The sealed bytes of a capture, nil when unknown.
    /// - Throws: `.corrupt` when the row's bytes cannot be read back whole.
    func blob(_ id: BlobID) async throws(StorageError) -> Data?
    /// Numbers of stored captures and DEK records.
    func counts() async throws(StorageError) -> (captures: Int, deks: Int)
}

/// The append-only audit log: the `audit_log` table.
public protocol AuditStore: Sendable {
    /// Appends one entry stamped now; returns it. - Throws: `.invalidArgument` when a text holds NUL.
    @discardableResult
    func appendAudit(actor: String, action: String, detail: String) async throws(StorageError) -> AuditEntry
    /// Entries newest first, strictly before row id `before` (nil: from the newest), at most
    /// `limit` (1…10,000).
    func auditEntries(before: Int64?, limit: Int) async throws(StorageError) -> [AuditEntry]
}

/// Everything the collector, the admin CLI and the dashboard need from storage. Backends:
/// `SQLiteStorage` (one file and its blob directory; the embedded default) and
/// `PostgresStorage` (postgres-nio; several collector instances on one database). One
/// conformance suite (Tests/StorageTests) runs against both.
///
/// Every method may throw `.unavailable` (retry later) or `.failed`; text in errors names the
/// database, never a password.
///
/// Lifecycle: a storage is a swift-service-lifecycle `Service`. Its owner runs ``run()`` in a
/// long-lived task (the collector puts it in its `ServiceGroup`, before the HTTP server, so it
/// stops after it) and ends with ``close()``.
public protocol CollectorStorage: AgentStore, KEKStore, DEKStore, CaptureStore, AuditStore, HoldStore, RetentionStore,
                                  TransferStore, AdminAccountStore, Service {
    /// Backend, location and reachability, for collector health and messages.
    func health() async -> StorageHealth
    /// Whether the blob directory this storage was opened with can be used, before anything
    /// relies on it (the collector at start, `custos decrypt` and `db migrate` before they read or
    /// copy), without writing anything. ``BlobDirectoryCheck``.
    /// - Throws: ``StorageError`` from the database only (`.unavailable` when it cannot be
    ///   reached); a directory that cannot be used is ``BlobDirectoryCheck/unusable(_:)``.
    func checkBlobDirectory() async throws(StorageError) -> BlobDirectoryCheck
    /// Drives the backend's connections until ``close()``; the owner runs it, e.g. in the
    /// collector's `ServiceGroup`. Returns once the storage is closed: by ``close()``, by
    /// cancelling the task, or by the group's graceful shutdown (each of which closes it).
    /// Call it once. `PostgresStorage` needs it running for every call (its connection pool
    /// and `LISTEN` connection live in it); `SQLiteStorage` works without it (GRDB's queues
    /// need no driver) and only waits, suspended, for the close.
    func run() async throws
    /// Closes connections; later calls throw `.unavailable`; ``run()`` returns. Closing twice
    /// does nothing.
    func close() async
}
