import Foundation

/// An agent known to the collector (the token itself is never stored, only its SHA-256).
public struct AgentInfo: Sendable, Equatable {
    public var agentID: String
    /// Unix time in ms.
    public var createdAtMs: Int64
}

/// One `encryption_kek` row.
public struct KEKRow: Sendable, Equatable {
    /// The row id (`encryption_kek.id`).
    public var rowID: Int64
    public var active: Bool
    /// Whether the private key file is passphrase-protected (informational, from the row).
    public var privEncrypted: Bool
    /// Path of the public key PEM the collector reads to learn the KEK id.
    public var pubDatafile: String
    /// Path of the private key PEM (never read by the collector).
    public var privDatafile: String?
    /// The KEK id (hex of SHA-256 of the SPKI DER) once the collector has read `pubDatafile`.
    public var kekID: String?
    /// As stored (`CURRENT_TIMESTAMP` text when inserted by hand).
    public var createdAt: String?
}

/// A record accepted for storage: parsed, authenticated to its agent, KEK active.
public enum IngestItem: Sendable {
    /// A DEK record (`encryption_dek` row). Ids are lowercase hex.
    case dek(dekID: String, kekID: String, agentID: String, creationTimeMs: Int64, record: Data)
    /// A sealed blob (`captures` row). `kind` is the CaptureKind name (`screen`, `keystrokes`, …).
    case blob(blobID: String, agentID: String, kind: String, dekID: String, kekID: String,
              sequence: Int64, captureTimeMs: Int64, blob: Data)

    /// The record id as lowercase hex.
    public var id: String {
        switch self {
        case .dek(let id, _, _, _, _): id
        case .blob(let id, _, _, _, _, _, _, _): id
        }
    }
}

/// What the store did with one ``IngestItem``.
public enum IngestOutcome: Sendable, Equatable {
    case stored
    /// Same id and same bytes already stored.
    case duplicate
    /// Same id already stored, by the same agent, with different bytes.
    case conflict
    /// A blob whose DEK record (of the same agent) is neither stored nor earlier in the same
    /// batch. Another agent's DEK id counts as unknown.
    case unknownDEK
    /// The id (blob or DEK) is taken by another agent's record: nothing stored. Answered to the
    /// agent exactly as a new id is (`stored`), so an agent cannot learn whether another agent's
    /// ids exist (docs/API.md, "Ids across agents"); the collector logs it.
    case otherAgent
}

/// Filters for ``CollectorStore/listCaptures(_:)``; nil fields do not filter.
public struct CaptureFilter: Sendable {
    public var agentID: String?
    /// CaptureKind name.
    public var kind: String?
    /// Capture time lower bound, Unix ms, inclusive.
    public var sinceMs: Int64?
    /// Capture time upper bound, Unix ms, exclusive.
    public var untilMs: Int64?
    /// At most this many rows (ordered by capture time, then sequence).
    public var limit: Int?

    public init(agentID: String? = nil, kind: String? = nil, sinceMs: Int64? = nil, untilMs: Int64? = nil,
                limit: Int? = nil) {
        self.agentID = agentID
        self.kind = kind
        self.sinceMs = sinceMs
        self.untilMs = untilMs
        self.limit = limit
    }
}

/// One stored capture, without its sealed bytes.
public struct CaptureInfo: Sendable, Equatable {
    /// Blob id, lowercase hex.
    public var blobID: String
    public var agentID: String
    /// CaptureKind name.
    public var kind: String
    /// DEK id, lowercase hex.
    public var dekID: String
    /// KEK id, lowercase hex.
    public var kekID: String
    public var sequence: Int64
    /// Unix ms.
    public var captureTimeMs: Int64
    /// Sealed blob size in bytes.
    public var size: Int
    /// Unix ms.
    public var receivedAtMs: Int64
}

/// One `audit_log` row.
public struct AuditEntry: Sendable, Equatable {
    public var id: Int64
    /// Unix ms.
    public var atMs: Int64
    /// Who acted (a user name, `collector`, an agent id).
    public var actor: String
    /// What was done, e.g. `agents.add`, `keys.register`, `captures.export`.
    public var action: String
    /// Free text (never secrets).
    public var detail: String
}

/// Collector storage. The SQLite implementation is ``SQLiteCollectorStore``; a PostgreSQL one can follow.
///
/// Ids cross this API as lowercase hex strings. All methods throw ``CollectorError`` (`.database`
/// for storage failures). Hot-path methods (used per upload) are `async` so they never block a
/// NIO event loop; administrative ones are synchronous for the `custos` CLI.
public protocol CollectorStore: Sendable {
    // MARK: Agents
    /// Creates an agent and returns its new random token (printed once; only its SHA-256 is stored).
    /// - Throws: `.invalidArgument` for a bad id, `.alreadyExists` when the id is taken.
    func addAgent(id: String) throws(CollectorError) -> String
    /// Replaces an agent's token; returns the new one. - Throws: `.notFound`.
    func rotateAgentToken(id: String) throws(CollectorError) -> String
    /// Deletes an agent (its captures stay). - Throws: `.notFound`.
    func removeAgent(id: String) throws(CollectorError)
    func listAgents() throws(CollectorError) -> [AgentInfo]
    /// Whether `token` is `agentID`'s token (constant-time comparison of SHA-256 digests).
    func authenticate(agentID: String, token: String) async throws(CollectorError) -> Bool

    // MARK: KEKs
    /// Inserts an `encryption_kek` row (as the seed's SQL does) and returns its row id.
    func registerKEK(pubDatafile: String, privDatafile: String?, privEncrypted: Bool, active: Bool,
                     kekID: String?) throws(CollectorError) -> Int64
    /// Sets `active` on a row. - Throws: `.notFound`.
    func setKEKActive(rowID: Int64, active: Bool) throws(CollectorError)
    /// Records the KEK id the collector computed from a row's `pub_datafile`.
    func setKEKID(rowID: Int64, kekID: String) throws(CollectorError)
    /// All rows, by row id.
    func listKEKs() throws(CollectorError) -> [KEKRow]
    /// Active rows only (polled by the collector).
    func activeKEKs() async throws(CollectorError) -> [KEKRow]

    // MARK: Records
    /// Stores a batch in one transaction; returns one outcome per item, in order.
    func ingest(_ items: [IngestItem], receivedAtMs: Int64) async throws(CollectorError) -> [IngestOutcome]
    func listCaptures(_ filter: CaptureFilter) throws(CollectorError) -> [CaptureInfo]
    /// Number of stored captures and DEK records.
    func counts() throws(CollectorError) -> (captures: Int, deks: Int)
    /// The DEK record bytes for a DEK id (hex), nil when unknown.
    func dekRecord(dekID: String) throws(CollectorError) -> Data?
    /// All DEK record bytes, optionally for one agent, by creation time.
    func dekRecords(agentID: String?) throws(CollectorError) -> [Data]
    /// The sealed blob bytes for a blob id (hex), nil when unknown.
    func blob(blobID: String) throws(CollectorError) -> Data?

    // MARK: Audit
    func appendAudit(actor: String, action: String, detail: String) throws(CollectorError)
    func listAudit(limit: Int?) throws(CollectorError) -> [AuditEntry]
}
