import CustosBase
import Envelope
import Foundation

/// How long captures are kept (`collector.cfg`: `retention-days`, `retention-days-kind`,
/// `retention-days-agent`; docs/STORAGE.md "Retention"). What the backends' ``RetentionStore/expire(policy:nowMs:limit:)``
/// is given.
///
/// A capture's days are those of the first rule that names it, in this order: its agent's
/// rule (`retention-days-agent=AGENT:DAYS`), its kind's rule (`retention-days-kind=KIND:DAYS`),
/// the default (`retention-days=DAYS`). 0 days means "keep forever" at every level, so an
/// agent rule of 0 keeps that agent's captures whatever the kind rules and the default say.
/// A capture expires once its capture time is more than its days × 86,400,000 ms before now.
public struct RetentionPolicy: Sendable, Equatable, CustomStringConvertible {
    /// Days, 0 (keep forever) or 1…36,500 (100 years): ``days(_:field:)`` is the one validator.
    public var defaultDays: Int
    /// Per kind; a kind without a rule takes ``defaultDays``.
    public var kindDays: [CaptureKind: Int]
    /// Per agent; wins over the kind rules and the default.
    public var agentDays: [AgentID: Int]

    /// The largest number of days accepted (100 years).
    public static let maxDays = 36_500
    /// One day in ms.
    public static let dayMs: Int64 = 86_400_000

    /// Keep everything forever (`retention-days=0`, no rule).
    public static let keepForever = RetentionPolicy(defaultDays: 0)

    /// - Throws: ``ValueError`` naming the field of a day count outside 0…``maxDays``.
    public init(defaultDays: Int, kindDays: [CaptureKind: Int] = [:], agentDays: [AgentID: Int] = [:]) throws(ValueError) {
        _ = try Self.checked(defaultDays, field: "retention-days")
        for (kind, d) in kindDays { _ = try Self.checked(d, field: "retention-days-kind \(kind.name)") }
        for (agent, d) in agentDays { _ = try Self.checked(d, field: "retention-days-agent \(agent)") }
        self.defaultDays = defaultDays
        self.kindDays = kindDays
        self.agentDays = agentDays
    }

    private init(defaultDays: Int) {
        self.defaultDays = defaultDays
        kindDays = [:]
        agentDays = [:]
    }

    /// Parses a day count: a decimal whole number 0…``maxDays``.
    /// - Throws: ``ValueError`` naming `field` and what was expected.
    public static func days(_ text: String, field: String) throws(ValueError) -> Int {
        guard let n = Int(text), text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw ValueError(field: field, "expected a whole number of days from 0 (keep forever) to \(maxDays), found \(SafeText.quoted(text))")
        }
        return try checked(n, field: field)
    }

    private static func checked(_ n: Int, field: String) throws(ValueError) -> Int {
        guard (0...maxDays).contains(n) else {
            throw ValueError(field: field, "expected a whole number of days from 0 (keep forever) to \(maxDays), found \(n)")
        }
        return n
    }

    /// Whether nothing ever expires (every level 0): the collector then runs no expiry at all.
    public var keepsEverything: Bool {
        defaultDays == 0 && kindDays.values.allSatisfy { $0 == 0 } && agentDays.values.allSatisfy { $0 == 0 }
    }

    /// The days of a capture of `agent` and `kind` (agent rule > kind rule > default); 0: kept forever.
    public func days(agent: AgentID, kind: CaptureKind) -> Int {
        agentDays[agent] ?? kindDays[kind] ?? defaultDays
    }

    /// The days of `kind` for agents without an agent rule.
    public func days(kind: CaptureKind) -> Int { kindDays[kind] ?? defaultDays }

    /// Captures older than this expire (Unix ms: `nowMs` − days × 1 day); nil for 0 days.
    public static func cutoffMs(days: Int, nowMs: Int64) -> Int64? {
        days == 0 ? nil : nowMs - Int64(days) * dayMs
    }

    /// For logs and audit records: `default=30d screen=7d agent:alice=0d` (0d = forever).
    public var description: String {
        var parts = ["default=\(defaultDays)d"]
        parts += kindDays.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.name)=\($0.value)d" }
        parts += agentDays.sorted { $0.key < $1.key }.map { "agent:\($0.key)=\($0.value)d" }
        return parts.joined(separator: " ")
    }
}

/// What one expiry call removed, and what it erased from blob files.
public struct ExpiryOutcome: Sendable, Equatable, CustomStringConvertible {
    /// Captures removed and their sealed bytes, per kind.
    public struct Removed: Sendable, Equatable {
        public var captures: Int
        /// Sum of the removed captures' sealed sizes (bytes).
        public var bytes: Int64
        public init(captures: Int = 0, bytes: Int64 = 0) {
            self.captures = captures
            self.bytes = bytes
        }
    }

    /// The bytes of expired blobs erased from blob files (``BlobErasure``), by this call: its
    /// own captures' and those an earlier run left (a crash between the rows' delete and the
    /// erasure, a blob directory that was not mounted).
    public struct Released: Sendable, Equatable {
        /// Ranges erased (punched out, or overwritten with zeros).
        public var ranges = 0
        /// Bytes erased.
        public var bytes: Int64 = 0
        /// Of ``ranges``, those overwritten with zeros (the file system cannot punch holes).
        public var zeroed = 0
        /// Blob files deleted: no row pointed into them any more, and their writer had moved on.
        public var filesDeleted = 0
        /// Ranges still waiting to be erased after this call (PostgreSQL `blob_release`):
        /// non-zero with a ``problem``, or while ``ExpiryOutcome/more`` says to call again.
        public var pending = 0
        /// Why ranges wait (the directory missing or foreign, a file that cannot be written, no
        /// `blob-dir=` on this instance), escaped; nil when none does for a reason.
        public var problem: String?
        public init() {}
    }

    public var removed: [CaptureKind: Removed]
    /// Whether the call stopped at its limit (call again: more may have expired, or more
    /// ranges wait to be erased).
    public var more: Bool
    public var released: Released

    public init(removed: [CaptureKind: Removed] = [:], more: Bool = false, released: Released = Released()) {
        self.removed = removed
        self.more = more
        self.released = released
    }

    /// Captures removed, all kinds.
    public var captures: Int { removed.values.reduce(0) { $0 + $1.captures } }
    /// Bytes removed, all kinds.
    public var bytes: Int64 { removed.values.reduce(0) { $0 + $1.bytes } }
    /// Whether the call removed or released anything (worth a log line and an audit record).
    public var didSomething: Bool { captures > 0 || released.ranges > 0 || released.filesDeleted > 0 }

    /// Counts one removed capture of `kind` and `size` bytes.
    public mutating func add(_ kind: CaptureKind, bytes: Int64) {
        removed[kind, default: Removed()].captures += 1
        removed[kind, default: Removed()].bytes += bytes
    }

    /// Adds `other`'s counts (``more``, ``Released/pending`` and ``Released/problem`` are
    /// `other`'s: the latest call's).
    public mutating func merge(_ other: ExpiryOutcome) {
        for (kind, r) in other.removed {
            removed[kind, default: Removed()].captures += r.captures
            removed[kind, default: Removed()].bytes += r.bytes
        }
        more = other.more
        released.ranges += other.released.ranges
        released.bytes += other.released.bytes
        released.zeroed += other.released.zeroed
        released.filesDeleted += other.released.filesDeleted
        released.pending = other.released.pending
        released.problem = other.released.problem
    }

    /// `screen: 12 captures, 4567 bytes; keystrokes: …` (kinds with nothing removed left out),
    /// then what was erased from blob files: `; blob files: 12 ranges, 4567 bytes erased
    /// (2 zeroed), 1 file deleted`.
    public var description: String {
        let parts = CaptureKind.allCases.compactMap { kind -> String? in
            guard let r = removed[kind], r.captures > 0 else { return nil }
            return "\(kind.name): \(r.captures) captures, \(r.bytes) bytes"
        }
        var text = parts.isEmpty ? "nothing" : parts.joined(separator: "; ")
        if released.ranges > 0 || released.filesDeleted > 0 {
            text += "; blob files: \(released.ranges) ranges, \(released.bytes) bytes erased"
                + (released.zeroed > 0 ? " (\(released.zeroed) by writing zeros)" : "")
                + ", \(released.filesDeleted) file\(released.filesDeleted == 1 ? "" : "s") deleted"
        }
        if released.pending > 0 { text += "; \(released.pending) ranges wait to be erased" }
        return text
    }
}

/// A legal hold: while it is active (until ``untilMs``, and not removed), no capture of its agent
/// expires, whatever the retention policy (docs/STORAGE.md "Legal holds"). A removed hold keeps
/// its row (who removed it, when): the hold history stays, and only active holds protect.
public struct LegalHold: Sendable, Equatable {
    /// Row id (`custos hold remove --id`).
    public var id: Int64
    public var agentID: AgentID
    /// The hold ends then, Unix ms (exclusive: active while now < until).
    public var untilMs: Int64
    /// Why (free text, at most ``maxReasonCharacters``, may be empty; escape before showing it).
    public var reason: String
    /// Who placed it (the admin's user name).
    public var createdBy: String
    /// When it was placed, Unix ms.
    public var createdAtMs: Int64
    /// When it was removed (`custos hold remove`), Unix ms; nil while it is not.
    public var removedAtMs: Int64?
    /// Who removed it; nil while it is not removed.
    public var removedBy: String?

    /// The longest reason a hold may have, in characters (a case number and a sentence; a
    /// listing shows it in one line).
    public static let maxReasonCharacters = 500

    public init(id: Int64, agentID: AgentID, untilMs: Int64, reason: String, createdBy: String, createdAtMs: Int64,
                removedAtMs: Int64? = nil, removedBy: String? = nil) {
        self.id = id
        self.agentID = agentID
        self.untilMs = untilMs
        self.reason = reason
        self.createdBy = createdBy
        self.createdAtMs = createdAtMs
        self.removedAtMs = removedAtMs
        self.removedBy = removedBy
    }

    /// Whether it holds at `nowMs` (Unix ms): not removed, and now < until.
    public func isActive(atMs nowMs: Int64) -> Bool { removedAtMs == nil && nowMs < untilMs }

    /// `active`, `ended` (its until time passed) or `removed`, at `nowMs`.
    public func state(atMs nowMs: Int64) -> String {
        removedAtMs != nil ? "removed" : nowMs < untilMs ? "active" : "ended"
    }

    /// What is wrong with `reason` as a hold's reason, in words (`holds 612 characters; at most
    /// 500`), nil when nothing: the one check of a reason, made by every backend
    /// (``StorageCheck/holdReason(_:context:)``) and by `custos hold add --reason` before the
    /// database is touched.
    public static func reasonProblem(_ reason: String) -> String? {
        if reason.utf8.contains(0) { return "holds a NUL character, which no backend stores (PostgreSQL text cannot)" }
        let n = reason.count
        return n > maxReasonCharacters ? "holds \(n) characters; at most \(maxReasonCharacters) are stored" : nil
    }
}

/// Legal holds: the `legal_hold` table.
public protocol HoldStore: Sendable {
    /// Places a hold on `agent`'s captures until `untilMs` (Unix ms), stamped now; returns it.
    /// The agent need not be registered (a removed agent's captures stay, and may be held).
    /// - Throws: `.invalidArgument` for a time outside years 1–9999, a reason
    ///   ``LegalHold/reasonProblem(_:)`` refuses, or a `createdBy` holding NUL.
    func addHold(agent: AgentID, untilMs: Int64, reason: String, createdBy: String) async throws(StorageError) -> LegalHold
    /// Holds by id: only those active at `activeAtMs` (Unix ms: not removed, until later) when
    /// given, else all (ended and removed ones too).
    func holds(activeAtMs: Int64?) async throws(StorageError) -> [LegalHold]
    /// Marks a hold removed by `removedBy`, stamped now, and returns it: from then on it no
    /// longer protects (its agent's expired captures go at the next retention run); its row
    /// stays, listed with who removed it and when.
    /// - Throws: `.notFound` for an unknown id, or a hold removed already (the message says
    ///   by whom and when); `.invalidArgument` for a `removedBy` holding NUL.
    func removeHold(id: Int64, removedBy: String) async throws(StorageError) -> LegalHold
}

/// Expiry of captures and the lease that lets one instance at a time run it.
public protocol RetentionStore: Sendable {
    /// Deletes at most `limit` (1…10,000) captures that expired under `policy` at `nowMs` (Unix
    /// ms), never one of an agent under a hold active at `nowMs`, and their sealed bytes; in
    /// short transactions (none holds the table long). DEK records stay (small; a DEK may still
    /// seal later blobs). Call again while the outcome says ``ExpiryOutcome/more``.
    /// The bytes of removed blobs kept in blob files are erased (``BlobErasure``) after the
    /// rows' transaction committed, and counted in ``ExpiryOutcome/released``. PostgreSQL with
    /// `blob-dir=`: the ranges are queued in the rows' transaction and erased after it, so a
    /// crash in between is finished by the next call; SQLite: best effort after the commit.
    /// - Throws: `.invalidArgument` for a limit out of range or `nowMs` outside years 1–9999.
    func expire(policy: RetentionPolicy, nowMs: Int64, limit: Int) async throws(StorageError) -> ExpiryOutcome
    /// Takes or renews the lease `name` for `holder` until `nowMs + ttlMs`: one conditional
    /// write that succeeds only when the lease is free, expired (its `expires_at` ≤ `nowMs`)
    /// or already `holder`'s. Returns whether `holder` has it now. Clocks of instances sharing
    /// a database must agree to well within `ttlMs` (NTP).
    /// - Throws: `.invalidArgument` for an empty name or holder, a text with NUL, `ttlMs` ≤ 0.
    func acquireLease(_ name: String, holder: String, ttlMs: Int64, nowMs: Int64) async throws(StorageError) -> Bool
    /// Gives the lease up when `holder` has it (else does nothing), so another instance may take it at once.
    func releaseLease(_ name: String, holder: String) async throws(StorageError)
}

/// One selection of expired captures, as every backend runs it: captures of `kind` (of `agent`
/// when given, else of every agent except `excludedAgents`, who have their own rules) whose
/// capture time is before `cutoffMs`, and whose agent is under no active hold.
public struct ExpiryRule: Sendable, Equatable {
    public var agent: AgentID?
    public var kind: CaptureKind
    /// Unix ms, exclusive.
    public var cutoffMs: Int64
    /// Agents with an agent rule (only for a rule without `agent`), sorted.
    public var excludedAgents: [AgentID]
}

extension RetentionPolicy {
    /// The selections that implement the precedence at `nowMs`: for each agent rule of more
    /// than 0 days one per kind, then one per kind of more than 0 days excluding the agents
    /// with rules. Rules of 0 days select nothing (kept forever).
    public func expiryRules(nowMs: Int64) -> [ExpiryRule] {
        var rules: [ExpiryRule] = []
        for (agent, d) in agentDays.sorted(by: { $0.key < $1.key }) {
            guard let cutoff = Self.cutoffMs(days: d, nowMs: nowMs) else { continue }
            rules += CaptureKind.allCases.map { ExpiryRule(agent: agent, kind: $0, cutoffMs: cutoff, excludedAgents: []) }
        }
        let excluded = agentDays.keys.sorted()
        for kind in CaptureKind.allCases {
            guard let cutoff = Self.cutoffMs(days: days(kind: kind), nowMs: nowMs) else { continue }
            rules.append(ExpiryRule(agent: nil, kind: kind, cutoffMs: cutoff, excludedAgents: excluded))
        }
        return rules
    }
}

extension StorageCheck {
    /// Throws `.invalidArgument` when ``LegalHold/reasonProblem(_:)`` finds one in `reason`.
    public static func holdReason(_ reason: String, context: String) throws(StorageError) {
        if let problem = LegalHold.reasonProblem(reason) {
            throw StorageError(.invalidArgument, "\(context): hold reason \(problem)")
        }
    }

    /// The checks of ``RetentionStore/expire(policy:nowMs:limit:)``: limit 1…10,000, `nowMs`
    /// within years 1–9999, and every cutoff too (a policy of 36,500 days near year 1 would not be).
    public static func expiry(policy: RetentionPolicy, nowMs: Int64, limit: Int, context: String) throws(StorageError) {
        try self.limit(limit, "expire captures", context: context)
        try time(nowMs, "expiry time", context: context)
        for rule in policy.expiryRules(nowMs: nowMs) {
            try time(rule.cutoffMs, "expiry cutoff", context: context)
        }
    }

    /// The checks of ``RetentionStore/acquireLease(_:holder:ttlMs:nowMs:)``: non-empty name and
    /// holder without NUL, `ttlMs` 1…1 day, `nowMs` within years 1–9999.
    public static func lease(_ name: String, holder: String, ttlMs: Int64, nowMs: Int64, context: String) throws(StorageError) {
        for (value, field) in [(name, "lease name"), (holder, "lease holder")] {
            guard !value.isEmpty else { throw StorageError(.invalidArgument, "\(context): \(field) is empty") }
            try text(value, field, context: context)
        }
        guard (1...RetentionPolicy.dayMs).contains(ttlMs) else {
            throw StorageError(.invalidArgument, "\(context): lease time-to-live \(ttlMs) ms is outside 1...86400000")
        }
        try time(nowMs, "lease time", context: context)
        try time(nowMs + ttlMs, "lease expiry", context: context)
    }
}
