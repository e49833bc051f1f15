import Envelope
import CustosConfig
import Foundation
import Logging
import Spool
import Synchronization

/// Where sealed records go: the spool (the daemon) or a record-stream file (`custos-agent record`).
public protocol RecordSink: Sendable {
    /// Stores one sealed record durably. `kind` orders uploads and eviction; `group` is the
    /// record's group of pictures (video packets; nil otherwise), evicted as a whole.
    /// - Returns: the groups of pictures of which records were evicted to make room (their
    ///   later packets cannot decode: the agent starts a new stream).
    @discardableResult
    func put(_ record: EnvelopeRecord, kind: SpoolKind, dekID: DEKID, captureTimeMs: Int64, group: Int64?) throws -> Set<Int64>
    /// Counts `count` captures not kept for `reason` (none of them reached `put`, or `put`
    /// refused them for a reason it does not count itself), `bytes` in all where known.
    func countDropped(_ reason: DropReason, count: Int, bytes: Int64)
}

extension RecordSink {
    /// Sinks without persistent counters (a record-stream file) count nothing; the capture
    /// service's own counters still see every drop.
    public func countDropped(_ reason: DropReason, count: Int, bytes: Int64) {}
}

extension Spool: RecordSink {
    @discardableResult
    public func put(_ record: EnvelopeRecord, kind: SpoolKind, dekID: DEKID, captureTimeMs: Int64,
                    group: Int64?) throws -> Set<Int64> {
        var entry = SpoolEntry(id: record.id, kind: kind, dekID: Data(dekID.bytes), captureTimeMs: captureTimeMs,
                               payload: record.serialized)
        entry.group = group
        return try enqueue(entry).evictedGroups
    }
}

/// What sealing one capture did.
public struct SealReceipt: Sendable, Equatable {
    /// The DEK it was sealed under.
    public let dekID: DEKID
    /// Groups of pictures evicted from the spool to make room for it.
    public let evictedGroups: Set<Int64>
}

/// Why the agent is not sealing (and so not capturing) right now.
public struct SealerUnavailable: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// The agent's sealing state: the KEK in force, the current DEK session, rotation.
///
/// Every capture goes through `seal(_:kind:captureTimeMs:)`. With no usable KEK the sealer is
/// *unavailable*: it seals nothing and the capture loops capture nothing (fail closed: never
/// a plaintext fallback). `refresh(config:)` re-reads the KEK file (periodically and on SIGHUP);
/// switching `enable-encryption` starts a new DEK wrapped to the other KEK, while records
/// already spooled keep the KEK they were sealed under.
///
/// Thread-safe: state lives in a `Mutex`.
public final class Sealer: Sendable {
    struct Active {
        var session: DEKSession
        var kek: KEKPublicKey
        var kekFile: String
        var encryption: Bool
    }
    struct State {
        var config: AgentConfig
        var active: Active?
        var unavailable: String?
    }
    private let state: Mutex<State>
    private let sink: any RecordSink
    private let logger: Logger
    private let now: @Sendable () -> Date

    public init(config: AgentConfig, sink: any RecordSink, logger: Logger, now: @escaping @Sendable () -> Date = Date.init) {
        self.state = Mutex(State(config: config, active: nil, unavailable: "not started"))
        self.sink = sink
        self.logger = logger
        self.now = now
    }

    /// The KEK id and mode in force, or why there is none.
    public var status: (kekID: KEKID?, encryption: Bool, reason: String?) {
        state.withLock { s in
            (s.active?.kek.id, s.active?.encryption ?? s.config.enableEncryption, s.unavailable)
        }
    }

    /// Whether captures can be sealed now.
    public var isAvailable: Bool { state.withLock { $0.active != nil } }

    /// Loads the KEK of `config` (and makes a new DEK when the KEK or mode changed, or when
    /// there is none yet). Returns true when the sealer is available afterwards. A KEK file that
    /// is missing or unusable makes it unavailable and is logged once per distinct reason.
    @discardableResult
    public func refresh(config: AgentConfig) -> Bool {
        let file = config.activeKEKFile
        let kek: KEKPublicKey
        do {
            kek = try KEKPublicKey(pemFile: file)
        } catch {
            let reason = "\(config.enableEncryption ? "kek-file" : "server-kek-file") \(file) is not usable: \(error)"
            let changed = state.withLock { s -> Bool in
                s.config = config
                s.active = nil
                defer { s.unavailable = reason }
                return s.unavailable != reason
            }
            if changed {
                logger.error("capture paused: no usable KEK; nothing is captured until it is fixed (checked again periodically)",
                             metadata: ["kek.file": "\(file)", "kek.error": "\(error)",
                                        "encryption.enabled": "\(config.enableEncryption)"])
            }
            return false
        }
        let needNew = state.withLock { s -> Bool in
            s.config = config
            guard let a = s.active else { return true }
            return a.kek.id != kek.id || a.encryption != config.enableEncryption
        }
        if needNew {
            do { try startSession(kek: kek, file: file, config: config, reason: "KEK loaded") } catch {
                let reason = "cannot start a DEK session: \(error)"
                state.withLock { s in s.active = nil; s.unavailable = reason }
                logger.error("capture paused: \(reason)")
                return false
            }
        }
        return true
    }

    private func startSession(kek: KEKPublicKey, file: String, config: AgentConfig, reason: String) throws {
        let session = try DEKSession(kek: kek, agentID: config.agentID.rawValue, now: now())
        let record = session.record
        // The DEK record goes to the sink before any blob sealed under it.
        try sink.put(.dekRecord(record), kind: .dekRecord, dekID: record.dekID, captureTimeMs: record.creationTimeMs,
                     group: nil)
        state.withLock { s in
            s.active = Active(session: session, kek: kek, kekFile: file, encryption: config.enableEncryption)
            s.unavailable = nil
        }
        logger.info("new DEK", metadata: ["dek.id": "\(record.dekID.hex)", "kek.id": "\(kek.id.hex)",
                                          "kek.file": "\(file)", "encryption.enabled": "\(config.enableEncryption)",
                                          "dek.reason": "\(reason)"])
    }

    /// Counts captures not kept in the sink's persistent counters (the spool's, read by `status`).
    public func countDropped(_ reason: DropReason, count: Int = 1, bytes: Int64 = 0) {
        sink.countDropped(reason, count: count, bytes: bytes)
    }

    /// Starts a new DEK now when the configured blob, byte or age limit is reached, so the
    /// capture loop can begin new video streams (keyframes) under it before capturing.
    /// - Returns: the DEK in force.
    /// - Throws: `SealerUnavailable` when there is no KEK, or the sink's / Envelope's error.
    public func rotateIfDue() throws -> DEKID {
        guard let (active, config) = state.withLock({ s in s.active.map { ($0, s.config) } }) else {
            throw SealerUnavailable(description: state.withLock { $0.unavailable } ?? "no KEK")
        }
        if active.session.needsRotation(Self.policy(config), now: now()) {
            try startSession(kek: active.kek, file: active.kekFile, config: config, reason: "rotation")
        }
        return state.withLock { $0.active?.session.record.dekID } ?? active.session.record.dekID
    }

    private static func policy(_ config: AgentConfig) -> RotationPolicy {
        RotationPolicy(maxBlobs: config.dekRotateBlobs > 0 ? config.dekRotateBlobs : nil,
                       maxBytes: config.dekRotateMB > 0 ? config.dekRotateMB << 20 : nil,
                       maxAge: config.dekRotateHours > 0 ? TimeInterval(config.dekRotateHours) * 3600 : nil)
    }

    /// Seals `plaintext` and puts the sealed blob into the sink (in `group`, a video packet's
    /// group of pictures). Rotates the DEK first when the configured blob, byte or age limit is
    /// reached. `session`: the graphical session (user, display) the capture comes from, named
    /// in the blob's authenticated header (docs/FORMAT.md "Sealed session blob").
    /// - Returns: the DEK used and the groups of pictures the sink evicted for it.
    /// - Throws: `SealerUnavailable` when there is no KEK, or the sink's / Envelope's error.
    @discardableResult
    public func seal(_ plaintext: Data, kind: CaptureKind, captureTimeMs: Int64, group: Int64? = nil,
                     session: BlobSession? = nil) throws -> SealReceipt {
        guard let (active, config) = state.withLock({ s in s.active.map { ($0, s.config) } }) else {
            throw SealerUnavailable(description: state.withLock { $0.unavailable } ?? "no KEK")
        }
        var dekSession = active.session
        if dekSession.needsRotation(Self.policy(config), now: now()) {
            try startSession(kek: active.kek, file: active.kekFile, config: config, reason: "rotation")
            dekSession = state.withLock { $0.active?.session } ?? dekSession
        }
        let blob = try dekSession.seal(plaintext, kind: kind, captureTimeMs: captureTimeMs, session: session)
        let evicted = try sink.put(.blob(blob), kind: SpoolKind(kind), dekID: blob.header.dekID,
                                   captureTimeMs: captureTimeMs, group: group)
        return SealReceipt(dekID: blob.header.dekID, evictedGroups: evicted)
    }
}

extension SpoolKind {
    init(_ kind: CaptureKind) {
        switch kind {
        case .screen: self = .screen
        case .keystrokes: self = .keystrokes
        case .generic: self = .generic
        case .activity: self = .activity
        }
    }
}
