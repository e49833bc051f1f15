import CustosBase
import Envelope
import Foundation

/// An agent known to the collector. Only the SHA-256 of its token is stored.
public struct AgentInfo: Sendable, Equatable {
    public var id: AgentID
    /// When it was added, Unix ms.
    public var createdAtMs: Int64

    public init(id: AgentID, createdAtMs: Int64) {
        self.id = id
        self.createdAtMs = createdAtMs
    }
}

/// One `encryption_kek` row (docs/API.md "KEKs"). The seed's statement
/// `insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (…)`
/// makes one with a path only; `custos keys register` also stores the public key itself, so a
/// collector on another host needs no file.
public struct KEKRow: Sendable, Equatable {
    /// `encryption_kek.id`.
    public var rowID: Int64
    public var active: Bool
    /// Whether the private key file is passphrase-protected (informational).
    public var privEncrypted: Bool
    /// Path of the public key PEM on the collector's host; nil when the row holds `publicKeyPEM`.
    public var pubDatafile: String?
    /// Path of the private key PEM (never read by the collector).
    public var privDatafile: String?
    /// The public key PEM stored in the row (`pub_pem`), preferred over `pubDatafile`.
    public var publicKeyPEM: String?
    /// The KEK id once known (computed from the public key by whoever read it).
    public var kekID: KEKID?
    /// When the row was made, informational: `YYYY-MM-DD HH:MM:SS` in UTC on both backends
    /// (SQLite: the column as stored, `CURRENT_TIMESTAMP`'s text unless a row inserted by hand
    /// put something else there; PostgreSQL: the `timestamptz` formatted so, fractions dropped).
    /// nil when the column is NULL.
    public var createdAt: String?

    public init(rowID: Int64, active: Bool, privEncrypted: Bool, pubDatafile: String?, privDatafile: String?,
                publicKeyPEM: String?, kekID: KEKID?, createdAt: String?) {
        self.rowID = rowID
        self.active = active
        self.privEncrypted = privEncrypted
        self.pubDatafile = pubDatafile
        self.privDatafile = privDatafile
        self.publicKeyPEM = publicKeyPEM
        self.kekID = kekID
        self.createdAt = createdAt
    }
}

/// What `registerKEK` inserts: at least one of `pubDatafile` and `publicKeyPEM`.
public struct KEKRegistration: Sendable, Equatable {
    public var pubDatafile: String?
    public var publicKeyPEM: String?
    public var privDatafile: String?
    public var privEncrypted: Bool
    public var active: Bool
    public var kekID: KEKID?

    public init(pubDatafile: String?, publicKeyPEM: String?, privDatafile: String?, privEncrypted: Bool = true,
                active: Bool = true, kekID: KEKID?) {
        self.pubDatafile = pubDatafile
        self.publicKeyPEM = publicKeyPEM
        self.privDatafile = privDatafile
        self.privEncrypted = privEncrypted
        self.active = active
        self.kekID = kekID
    }
}

/// A DEK record accepted for storage (`encryption_dek` row).
public struct StoredDEK: Sendable, Equatable {
    public var dekID: DEKID
    public var kekID: KEKID
    public var agentID: AgentID
    /// The record's creation time, Unix ms (`creation_time`: `timestamptz` on PostgreSQL).
    public var creationTimeMs: Int64
    /// The serialized DEK record (docs/FORMAT.md).
    public var record: Data

    public init(dekID: DEKID, kekID: KEKID, agentID: AgentID, creationTimeMs: Int64, record: Data) {
        self.dekID = dekID
        self.kekID = kekID
        self.agentID = agentID
        self.creationTimeMs = creationTimeMs
        self.record = record
    }
}

/// A sealed blob accepted for storage (`captures` row plus its bytes).
public struct StoredBlob: Sendable, Equatable {
    public var blobID: BlobID
    public var agentID: AgentID
    public var kind: CaptureKind
    public var dekID: DEKID
    public var kekID: KEKID
    /// The blob's sequence number within its DEK (header field).
    public var sequence: Int64
    /// Unix ms.
    public var captureTimeMs: Int64
    /// The serialized sealed blob (docs/FORMAT.md).
    public var bytes: Data
    /// The graphical session's user and display, from a sealed session blob's header; nil for
    /// a plain sealed blob. Stored beside the row so listings filter by user without a key.
    public var user: UserName?
    public var display: String?

    public init(blobID: BlobID, agentID: AgentID, kind: CaptureKind, dekID: DEKID, kekID: KEKID, sequence: Int64,
                captureTimeMs: Int64, bytes: Data, user: UserName? = nil, display: String? = nil) {
        self.blobID = blobID
        self.agentID = agentID
        self.kind = kind
        self.dekID = dekID
        self.kekID = kekID
        self.sequence = sequence
        self.captureTimeMs = captureTimeMs
        self.bytes = bytes
        self.user = user
        self.display = display
    }
}

/// A record accepted for storage: parsed, authenticated to its agent, KEK active.
public enum IngestItem: Sendable, Equatable {
    case dek(StoredDEK)
    case blob(StoredBlob)

    /// The record's 16-byte id (DEK id or blob id).
    public var idBytes: [UInt8] {
        switch self {
        case .dek(let d): d.dekID.bytes
        case .blob(let b): b.blobID.bytes
        }
    }
}

/// What the store did with one ``IngestItem``.
public enum IngestOutcome: Sendable, Equatable {
    case stored
    /// Same id and same bytes already stored (by this or another collector instance).
    case duplicate
    /// Same id already stored, by the same agent, with different bytes: nothing changed.
    case conflict
    /// A blob whose DEK record (of the same agent) is neither stored nor earlier in the batch.
    case unknownDEK
    /// The id is taken by another agent's record: nothing stored; answered to the agent as
    /// `stored` (docs/API.md "Ids across agents").
    case otherAgent
}

/// Which captures a listing wants; nil fields do not filter.
public struct CaptureQuery: Sendable, Equatable {
    public var agentID: AgentID?
    public var kind: CaptureKind?
    /// The session's user name (captures of sealed session blobs only; docs/FORMAT.md).
    public var user: UserName?
    /// Capture time lower bound, Unix ms, inclusive.
    public var sinceMs: Int64?
    /// Capture time upper bound, Unix ms, exclusive.
    public var untilMs: Int64?
    /// Oldest first (`ascending`, what `decrypt` walks) or newest first (dashboards).
    public var order: Order

    public enum Order: Sendable, Equatable { case ascending, descending }

    public init(agentID: AgentID? = nil, kind: CaptureKind? = nil, user: UserName? = nil, sinceMs: Int64? = nil,
                untilMs: Int64? = nil, order: Order = .ascending) {
        self.agentID = agentID
        self.kind = kind
        self.user = user
        self.sinceMs = sinceMs
        self.untilMs = untilMs
        self.order = order
    }
}

/// Where a listing page ended: the last row's capture time and blob id (the listing's order is
/// `(capture_time, blob_id)`, so a page is one index range scan, never an OFFSET).
public struct CaptureCursor: Sendable, Equatable, Hashable {
    public var captureTimeMs: Int64
    public var blobID: BlobID

    public init(captureTimeMs: Int64, blobID: BlobID) {
        self.captureTimeMs = captureTimeMs
        self.blobID = blobID
    }

    /// `TIME-BLOBIDHEX`, for URLs and the CLI; ``init(token:)`` reads it back.
    public var token: String { "\(captureTimeMs)-\(blobID.hex)" }

    /// - Returns: nil for anything but a token made by ``token``.
    public init?(token: String) {
        guard let dash = token.lastIndex(of: "-"), let time = Int64(token[..<dash]),
              let id = BlobID(hex: String(token[token.index(after: dash)...])) else { return nil }
        self.init(captureTimeMs: time, blobID: id)
    }
}

/// One stored capture, without its sealed bytes.
public struct CaptureInfo: Sendable, Equatable {
    public var blobID: BlobID
    public var agentID: AgentID
    public var kind: CaptureKind
    public var dekID: DEKID
    public var kekID: KEKID
    public var sequence: Int64
    /// Unix ms.
    public var captureTimeMs: Int64
    /// Sealed blob size in bytes.
    public var size: Int
    /// When the collector stored it, Unix ms.
    public var receivedAtMs: Int64
    /// The graphical session's user and display (sealed session blobs; nil otherwise).
    public var user: UserName?
    public var display: String?

    public init(blobID: BlobID, agentID: AgentID, kind: CaptureKind, dekID: DEKID, kekID: KEKID, sequence: Int64,
                captureTimeMs: Int64, size: Int, receivedAtMs: Int64, user: UserName? = nil, display: String? = nil) {
        self.user = user
        self.display = display
        self.blobID = blobID
        self.agentID = agentID
        self.kind = kind
        self.dekID = dekID
        self.kekID = kekID
        self.sequence = sequence
        self.captureTimeMs = captureTimeMs
        self.size = size
        self.receivedAtMs = receivedAtMs
    }

    public var cursor: CaptureCursor { CaptureCursor(captureTimeMs: captureTimeMs, blobID: blobID) }
}

/// One page of a listing: at most the limit asked for, and the cursor of the next page (nil
/// when this page is the last).
public struct CapturePage: Sendable, Equatable {
    public var items: [CaptureInfo]
    public var next: CaptureCursor?

    public init(items: [CaptureInfo], next: CaptureCursor?) {
        self.items = items
        self.next = next
    }
}

/// One `audit_log` row (append-only: no backend offers an update or delete).
public struct AuditEntry: Sendable, Equatable {
    /// Increasing row id; listings page by it.
    public var id: Int64
    /// Unix ms.
    public var atMs: Int64
    /// Who acted (an admin name, `collector`, an agent id).
    public var actor: String
    /// What was done, e.g. `agents.add`, `keys.register`, `captures.export`, `blobs.fetch`.
    public var action: String
    /// Free text (never secrets).
    public var detail: String

    public init(id: Int64, atMs: Int64, actor: String, action: String, detail: String) {
        self.id = id
        self.atMs = atMs
        self.actor = actor
        self.action = action
        self.detail = detail
    }
}

/// Which storage answers and whether it can be reached (collector health, `custos` messages).
public struct StorageHealth: Sendable, Equatable {
    /// `sqlite` or `postgresql`.
    public var backend: String
    /// The file path, or `host:port/dbname` (never a password).
    public var location: String
    public var reachable: Bool
    /// Why not, when not reachable.
    public var problem: String?

    public init(backend: String, location: String, reachable: Bool, problem: String? = nil) {
        self.backend = backend
        self.location = location
        self.reachable = reachable
        self.problem = problem
    }
}
