import Foundation

/// What a spooled record is. The kind decides lease priority and eviction order.
///
/// Lease priority (first uploaded first): `dekRecord`, `keystrokes`, `activity`, `generic`,
/// `screen`. Eviction order when the spool is full (first evicted first): `screen`, `generic`,
/// `activity`, `keystrokes`; a `dekRecord` is never evicted (its blobs would become unreadable).
public enum SpoolKind: String, Sendable, CaseIterable, Codable, CodingKeyRepresentable {
    case dekRecord = "dek", keystrokes, activity, generic, screen

    /// Lease priority: lower values are leased first (stored in the `priority` column; the
    /// spool's migration v3 moved generic from 2 to 3 and screen from 3 to 4 for activity).
    var priority: Int {
        switch self {
        case .dekRecord: 0
        case .keystrokes: 1
        case .activity: 2
        case .generic: 3
        case .screen: 4
        }
    }

    /// The kinds an incoming record of this kind may evict, in eviction order.
    /// A record never makes room for itself by evicting something more valuable.
    var evictable: [SpoolKind] {
        switch self {
        case .screen: [.screen]
        case .generic: [.screen, .generic]
        case .activity: [.screen, .generic, .activity]
        case .keystrokes, .dekRecord: [.screen, .generic, .activity, .keystrokes]
        }
    }
}

/// One spooled record: opaque sealed bytes plus the metadata the uploader needs.
///
/// The spool never looks inside `payload`; it must already be sealed (an Envelope
/// record, docs/FORMAT.md). `id` is the idempotency key end to end.
public struct SpoolEntry: Sendable, Equatable {
    /// 16-byte record id (blob id, or the DEK id for a DEK record).
    public var id: Data
    public var kind: SpoolKind
    /// 16-byte id of the DEK this record is sealed under (its own id for `.dekRecord`).
    public var dekID: Data
    /// Capture time, milliseconds since the Unix epoch.
    public var captureTimeMs: Int64
    /// The sealed record bytes.
    public var payload: Data
    /// Failed upload attempts so far (set by the spool; 0 on enqueue).
    public var attempts: Int
    /// The group of pictures this video packet belongs to (docs/SPOOL.md "Groups of pictures"):
    /// an opaque id the agent draws at random for each keyframe and the packets after it up to
    /// the next keyframe; nil for every other record (a DEK record may not have one). Every
    /// record of one group has the same kind, and is enqueued in decoding order. When one of
    /// them is evicted, the whole group is; once a group has lost a record, later records of
    /// it are refused (`SpoolError.Code.groupBroken`).
    public var group: Int64?

    public init(id: Data, kind: SpoolKind, dekID: Data, captureTimeMs: Int64, payload: Data, group: Int64? = nil) {
        self.id = id
        self.kind = kind
        self.dekID = dekID
        self.captureTimeMs = captureTimeMs
        self.payload = payload
        self.attempts = 0
        self.group = group
    }
}

/// What one `Spool.enqueue` did besides storing its record.
public struct SpoolEnqueueResult: Sendable, Equatable {
    /// The groups of pictures (``SpoolEntry/group``) this call evicted to make room: none of
    /// their records is left in the spool, and a later record of any of them is refused
    /// (`.groupBroken`). The agent starts a new group with a keyframe when its current group
    /// is in this set. Never holds the group of the record being enqueued (a record does not
    /// evict its own group).
    public var evictedGroups: Set<Int64>

    public init(evictedGroups: Set<Int64> = []) {
        self.evictedGroups = evictedGroups
    }
}

/// A count of records and their payload bytes.
public struct SpoolCount: Sendable, Codable, Equatable {
    public var count: Int
    public var bytes: Int64
    public init(count: Int = 0, bytes: Int64 = 0) {
        self.count = count
        self.bytes = bytes
    }
}

/// Spool statistics for `custos-agent status` and metrics.
///
/// `evicted`, `rejected` and `quarantined` are lifetime counters stored in the
/// database: they survive restarts.
public struct SpoolStats: Sendable, Codable, Equatable {
    /// Records now in the spool and their payload bytes, by kind (every kind present, maybe 0).
    public var spooled: [SpoolKind: SpoolCount]
    /// Records evicted to stay under the byte cap, by kind (lifetime).
    public var evicted: [SpoolKind: SpoolCount]
    /// Enqueues refused because nothing could be evicted to make room, by kind (lifetime).
    public var rejected: [SpoolKind: SpoolCount]
    /// Rows that failed to parse and were moved to the quarantine table (lifetime).
    public var quarantined: Int
    /// Records currently leased by an uploader.
    public var leased: Int
    /// Capture time of the oldest spooled record, ms since the Unix epoch; nil when empty.
    public var oldestCaptureTimeMs: Int64?
    /// Size of the database file plus its WAL, in bytes.
    public var fileBytes: Int64
    /// The configured byte cap (database + WAL), in bytes.
    public var maxBytes: Int64

    /// Captures not kept, by reason (lifetime): the spool's own refusals (`too-large`, `full`,
    /// `disk-full`) and what the agent counted with `Spool.countDropped` (no KEK, capture or
    /// seal errors). `bytes` is the sealed size where known, else 0.
    public var dropped: [DropReason: SpoolCount] = [:]

    /// All dropped captures (lifetime).
    public var totalDropped: SpoolCount {
        dropped.values.reduce(SpoolCount()) { SpoolCount(count: $0.count + $1.count, bytes: $0.bytes + $1.bytes) }
    }

    /// All spooled records.
    public var totalSpooled: SpoolCount {
        spooled.values.reduce(SpoolCount()) { SpoolCount(count: $0.count + $1.count, bytes: $0.bytes + $1.bytes) }
    }
    /// All evicted records (lifetime).
    public var totalEvicted: SpoolCount {
        evicted.values.reduce(SpoolCount()) { SpoolCount(count: $0.count + $1.count, bytes: $0.bytes + $1.bytes) }
    }
}

/// Spooled records sealed under one DEK (``Spool/dekGroups()``).
public struct SpoolDEKGroup: Sendable, Equatable {
    /// The 16-byte DEK id.
    public var dekID: Data
    /// Its records now in the spool and their payload bytes.
    public var records: SpoolCount
    /// The sealed bytes of its smallest record (an Envelope record; its header names the agent).
    public var samplePayload: Data
}

/// Why a capture was not kept. The raw value names its counter (`dropped.<raw>.count` and
/// `.bytes` in the spool's counter table) and is what `custos-agent status` prints.
public struct DropReason: RawRepresentable, Hashable, Sendable, Codable, CodingKeyRepresentable,
                          CustomStringConvertible {
    public let rawValue: String
    /// `rawValue`: lowercase letters, digits and `-` only (it becomes part of a counter name).
    public init?(rawValue: String) {
        guard !rawValue.isEmpty, rawValue.utf8.allSatisfy({ (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2d })
        else { return nil }
        self.rawValue = rawValue
    }
    private init(_ raw: String) { rawValue = raw }
    public var description: String { rawValue }

    /// The sealed record is larger than one record may be under `spool-max-mb`.
    public static let tooLarge = DropReason("too-large")
    /// The spool is at its cap and nothing could be evicted for the record.
    public static let full = DropReason("full")
    /// The filesystem holding the spool is full.
    public static let diskFull = DropReason("disk-full")
    /// Sealing is paused (no usable KEK): the capture was not taken.
    public static let sealingPaused = DropReason("sealing-paused")
    /// Capturing failed (an X error), not counting a missing display.
    public static let captureError = DropReason("capture-error")
    /// The encoder (libpng, libaom) failed on one monitor's frame; the other monitors were kept.
    public static let encodeError = DropReason("encode-error")
    /// A monitor's size is outside what the video encoder takes (each side 2…16384 pixels):
    /// counted once per capture round while it lasts; the other monitors are recorded.
    public static let monitorUnsupported = DropReason("monitor-unsupported")
    /// Sealing or storing failed for another reason (a spool or Envelope error).
    public static let sealError = DropReason("seal-error")
    /// A video packet of a group of pictures that already lost a packet (evicted or refused):
    /// it could not be decoded without it, so the spool refused it (`SpoolError.Code.groupBroken`).
    public static let groupBroken = DropReason("group-broken")
}

/// Counter increments not yet written (kept in memory when a write fails, written with the
/// next write transaction or at close).
struct PendingCounters: Sendable {
    var rejected: [SpoolKind: SpoolCount] = [:]
    var dropped: [DropReason: SpoolCount] = [:]

    var isEmpty: Bool { rejected.isEmpty && dropped.isEmpty }

    mutating func add(_ other: PendingCounters) {
        for (k, c) in other.rejected {
            rejected[k, default: SpoolCount()].count += c.count
            rejected[k, default: SpoolCount()].bytes += c.bytes
        }
        for (k, c) in other.dropped {
            dropped[k, default: SpoolCount()].count += c.count
            dropped[k, default: SpoolCount()].bytes += c.bytes
        }
    }
}

/// The one error type of the Spool module: a code plus a message naming the file, the
/// record id or the setting involved and what was expected. Never contains payload bytes.
public struct SpoolError: Error, CustomStringConvertible, Sendable {
    /// An extensible error code (compare with `==` against the static members).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The entry is malformed (id or DEK id not 16 bytes, empty payload).
        public static let invalidEntry = Code("invalid-entry")
        /// The entry can never fit under the byte cap.
        public static let tooLarge = Code("too-large")
        /// The spool is at its cap and nothing may be evicted for this entry (or a reader pins the WAL).
        public static let full = Code("full")
        /// The filesystem is full (ENOSPC / SQLITE_FULL).
        public static let diskFull = Code("disk-full")
        /// Another process holds a lock on the database longer than the busy timeout.
        public static let busy = Code("busy")
        /// The database is corrupt or not a Custos spool.
        public static let corrupt = Code("corrupt")
        /// A write was attempted on a spool opened with `openReadOnly`.
        public static let readOnly = Code("read-only")
        /// The spool was closed.
        public static let closed = Code("closed")
        /// Another process (or another `Spool` in this one) has the spool directory open for writing.
        public static let alreadyOpen = Code("already-open")
        /// The spool database does not exist (read-only open).
        public static let notFound = Code("not-found")
        /// A filesystem operation failed (directory, permissions, rename).
        public static let io = Code("io")
        /// Any other SQLite error.
        public static let sqlite = Code("sqlite")
        /// The record's group of pictures already lost a record (evicted, or an earlier enqueue
        /// of it failed), so this record could not be decoded: start a new group with a keyframe.
        public static let groupBroken = Code("group-broken")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "spool \(code): \(message)" }
}

/// The groups of pictures that lost a record during this `Spool`'s life (evicted, quarantined
/// or refused), most recent `capacity` of them; older ones are forgotten first. In memory only
/// (docs/SPOOL.md "Broken groups" says why that is enough).
struct BrokenGroups: Sendable {
    /// At most this many groups are remembered (8 bytes each, plus the set's overhead).
    static let capacity = 4096

    private var members = Set<Int64>()
    private var order: [Int64] = []
    private var next = 0

    func contains(_ group: Int64) -> Bool { members.contains(group) }

    mutating func insert(_ group: Int64) {
        guard members.insert(group).inserted else { return }
        if order.count < Self.capacity {
            order.append(group)
        } else {
            members.remove(order[next])
            order[next] = group
            next = (next + 1) % Self.capacity
        }
    }
}

extension Int64 {
    /// A group id as 16 lowercase hex digits (its bit pattern), for messages and logs.
    var groupHex: String {
        let hex = String(UInt64(bitPattern: self), radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

extension Data {
    /// Lowercase hex, for ids in messages and logs (ids are random, not secret).
    var spoolHex: String { map { String(format: "%02x", $0) }.joined() }
}
