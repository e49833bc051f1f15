import CollectorStorage
import CollectorStoragePostgres
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport

/// A second storage on the same database as `rig` (another process or collector instance would
/// be one), running until `body` returns; then closed.
func withSecondStorage(_ rig: Rig, _ body: (any CollectorStorage) async throws -> Void) async throws {
    let other: any CollectorStorage
    switch rig.backend {
    case .sqlite: other = try SQLiteStorage(path: rig.dir.file("collector.db"))
    case .postgres:
        let db = try #require(rig.postgres)
        other = try makePostgresStorage(cluster: db.cluster, database: db.name)
    }
    let runner = Task { try await other.run() }
    do { try await body(other) } catch {
        await other.close()
        _ = await runner.result
        throw error
    }
    await other.close()
    _ = await runner.result
}

/// Expires everything `policy` expires at `nowMs`, `limit` at a time; returns the sum.
func expireAll(_ s: any CollectorStorage, _ policy: RetentionPolicy, nowMs: Int64, limit: Int) async throws -> ExpiryOutcome {
    var total = ExpiryOutcome()
    for _ in 0..<1000 {
        let step = try await s.expire(policy: policy, nowMs: nowMs, limit: limit)
        #expect(step.captures <= limit)
        total.merge(step)
        if !step.more { return total }
    }
    Issue.record("expiry does not end")
    return total
}

extension StorageConformance {
    /// `RetentionStore` and `HoldStore` on every backend.
    @Suite struct RetentionConformance {
        static let day = RetentionPolicy.dayMs
        /// A fixed "now" (2026-01-01), so ages are exact.
        static let now: Int64 = 1_767_225_600_000

        /// Captures of three agents, every kind, at ages 1, 2.5, 5 and 20 days; returns them.
        static func populate(_ s: any CollectorStorage, agents: [AgentID]) async throws -> [StoredBlob] {
            var blobs: [StoredBlob] = []
            var items: [IngestItem] = []
            for a in agents {
                let d = dek(a, time: now - 30 * day)
                items.append(.dek(d))
                for kind in CaptureKind.allCases {
                    for ageTenths: Int64 in [10, 25, 50, 200] {
                        let b = blob(d, kind: kind, time: now - ageTenths * day / 10, size: 100 + Int(ageTenths))
                        blobs.append(b)
                        items.append(.blob(b))
                    }
                }
            }
            let outcomes = try await s.ingest(items, receivedAtMs: now)
            #expect(outcomes.allSatisfy { $0 == .stored })
            return blobs
        }

        static func ageDays(_ b: StoredBlob) -> Double { Double(now - b.captureTimeMs) / Double(day) }

        /// Agent rule > kind rule > default, counted and summed by kind, in batches of 3; DEK
        /// records stay; a second run removes nothing.
        @Test(arguments: Backend.testable)
        func expiryFollowsAgentThenKindThenDefault(_ backend: Backend) async throws {
            try await withRig(backend, "expire") { rig async throws in
                let s = rig.storage
                let forever = agent("forever"), short = agent("short"), plain = agent("plain")
                let blobs = try await Self.populate(s, agents: [forever, short, plain])
                // forever: an agent rule of 0 (keep) beats the kind rule and the default;
                // short: 2 days whatever the kind; plain: screen 3 days (kind rule), others 10 (default).
                let policy = try RetentionPolicy(defaultDays: 10, kindDays: [.screen: 3, .generic: 0],
                                                 agentDays: [forever: 0, short: 2])
                #expect(policy.days(agent: forever, kind: .screen) == 0 && policy.days(agent: short, kind: .generic) == 2)
                #expect(policy.days(agent: plain, kind: .screen) == 3 && policy.days(agent: plain, kind: .keystrokes) == 10)
                let expired: (StoredBlob) -> Bool = { b in
                    switch (b.agentID, b.kind) {
                    case (forever, _): false
                    case (short, _): Self.ageDays(b) > 2
                    case (_, .screen): Self.ageDays(b) > 3
                    case (_, .generic): false
                    default: Self.ageDays(b) > 10
                    }
                }
                let outcome = try await expireAll(s, policy, nowMs: Self.now, limit: 3)
                var expected = ExpiryOutcome()
                for b in blobs where expired(b) { expected.add(b.kind, bytes: Int64(b.bytes.count)) }
                #expect(outcome.removed == expected.removed, "\(outcome) vs \(expected)")
                // short: 3 ages past 2 days × 4 kinds; plain: 2 screens past 3 days, keystrokes and
                // activity past 10 days once each (generic is kept).
                #expect(outcome.captures == 3 * 4 + 2 + 2)
                for b in blobs {
                    let stored = try await s.blob(b.blobID)
                    #expect((stored == nil) == expired(b), "\(b.agentID) \(b.kind.name) \(Self.ageDays(b)) days")
                    if let stored { #expect(stored == b.bytes) }
                }
                #expect(try await s.counts() == (captures: blobs.count - expected.captures, deks: 3))
                let again = try await s.expire(policy: policy, nowMs: Self.now, limit: 100)
                #expect(again.captures == 0 && !again.more)
                // Nothing at all for a policy that keeps everything.
                #expect(RetentionPolicy.keepForever.keepsEverything && !policy.keepsEverything)
                #expect(try await s.expire(policy: .keepForever, nowMs: Self.now + 10_000 * Self.day, limit: 100).captures == 0)
                // Argument checks, as every backend.
                for bad in [0, 10_001] {
                    #expect(await storageError { _ = try await s.expire(policy: policy, nowMs: Self.now, limit: bad) }?.code
                        == .invalidArgument)
                }
                #expect(await storageError { _ = try await s.expire(policy: policy, nowMs: Int64.max, limit: 5) }?.code
                    == .invalidArgument)
            }
        }

        /// An active hold keeps everything of its agent; once it ends (or is removed), expiry
        /// removes what expired. Holds list all or active ones; removing an unknown id is `.notFound`.
        @Test(arguments: Backend.testable)
        func aHoldKeepsItsAgentUntilItEnds(_ backend: Backend) async throws {
            try await withRig(backend, "holds") { rig async throws in
                let s = rig.storage
                let held = agent("held"), free = agent("free"), other = agent("other")
                let blobs = try await Self.populate(s, agents: [held, free, other])
                let policy = try RetentionPolicy(defaultDays: 2)
                let hold = try await s.addHold(agent: held, untilMs: Self.now + Self.day, reason: "case \u{1B}[31m42",
                                               createdBy: "admin")
                #expect(hold.agentID == held && hold.untilMs == Self.now + Self.day && hold.reason == "case \u{1B}[31m42")
                #expect(hold.createdBy == "admin" && abs(hold.createdAtMs - Int64(Date().timeIntervalSince1970 * 1000)) < 60_000)
                let ended = try await s.addHold(agent: other, untilMs: Self.now - 1, reason: "", createdBy: "admin")
                #expect(try await s.holds(activeAtMs: nil) == [hold, ended])
                #expect(try await s.holds(activeAtMs: Self.now) == [hold])
                #expect(try await s.holds(activeAtMs: Self.now + Self.day).isEmpty)

                let first = try await expireAll(s, policy, nowMs: Self.now, limit: 4)
                let old = blobs.filter { Self.ageDays($0) > 2 }
                #expect(first.captures == old.filter { $0.agentID != held }.count)
                for b in blobs where b.agentID == held { #expect(try await s.blob(b.blobID) == b.bytes) }
                // The hold ends at its until time (exclusive): then its agent's expired captures go.
                let later = Self.now + Self.day
                let second = try await expireAll(s, policy, nowMs: later, limit: 4)
                let goneLater = blobs.filter { b in Double(later - b.captureTimeMs) > 2 * Double(Self.day) }
                #expect(first.captures + second.captures == goneLater.count, "\(first) then \(second)")
                for b in blobs where b.agentID == held {
                    #expect((try await s.blob(b.blobID) == nil) == goneLater.contains(b))
                }

                // Removing marks the row (who, when); it stays listed among all holds, not among active ones.
                let removed = try await s.removeHold(id: hold.id, removedBy: "admin2")
                #expect(removed.id == hold.id && removed.removedBy == "admin2" && removed.reason == hold.reason)
                #expect(abs((removed.removedAtMs ?? 0) - Int64(Date().timeIntervalSince1970 * 1000)) < 60_000)
                #expect(try await s.holds(activeAtMs: nil) == [removed, ended])
                #expect(try await s.holds(activeAtMs: Self.now).isEmpty)
                #expect(!removed.isActive(atMs: Self.now) && removed.state(atMs: Self.now) == "removed")
                let again = await storageError { _ = try await s.removeHold(id: hold.id, removedBy: "admin3") }
                #expect(again?.code == .notFound && again?.message.contains("removed already, by 'admin2'") == true, "\(String(describing: again))")
                // When, as people read it (not Unix ms), on both backends.
                #expect(again?.message.contains("removed already, by 'admin2' at \(isoTime(unixMs: removed.removedAtMs ?? 0))") == true,
                        "\(String(describing: again))")
                let unknown = await storageError { _ = try await s.removeHold(id: 999, removedBy: "admin") }
                #expect(unknown?.code == .notFound && unknown?.message.contains("no legal hold 999") == true, "\(String(describing: unknown))")
                #expect(await storageError {
                    _ = try await s.addHold(agent: held, untilMs: Self.now, reason: String(repeating: "é", count: 501), createdBy: "admin")
                }?.message.contains("501 characters; at most 500") == true)
                #expect(try await s.addHold(agent: held, untilMs: Self.now, reason: String(repeating: "é", count: 500),
                                            createdBy: "admin").reason.count == 500)
                #expect(await storageError {
                    _ = try await s.addHold(agent: held, untilMs: Int64.max, reason: "", createdBy: "admin")
                }?.code == .invalidArgument)
                #expect(await storageError {
                    _ = try await s.addHold(agent: held, untilMs: Self.now, reason: "a\u{0}b", createdBy: "admin")
                }?.code == .invalidArgument)
            }
        }

        /// A removed hold no longer protects: its agent's expired captures go at the next run,
        /// although its until time is still ahead; another active hold on the same agent still does.
        @Test(arguments: Backend.testable)
        func aRemovedHoldNoLongerProtects(_ backend: Backend) async throws {
            try await withRig(backend, "removed-hold") { rig async throws in
                let s = rig.storage
                let held = agent("held"), twice = agent("twice")
                let blobs = try await Self.populate(s, agents: [held, twice])
                let policy = try RetentionPolicy(defaultDays: 2)
                let hold = try await s.addHold(agent: held, untilMs: Self.now + 100 * Self.day, reason: "case 1", createdBy: "a")
                let first = try await s.addHold(agent: twice, untilMs: Self.now + 100 * Self.day, reason: "case 2", createdBy: "a")
                _ = try await s.addHold(agent: twice, untilMs: Self.now + 100 * Self.day, reason: "case 3", createdBy: "a")
                #expect(try await expireAll(s, policy, nowMs: Self.now, limit: 100).captures == 0)
                _ = try await s.removeHold(id: hold.id, removedBy: "b")
                _ = try await s.removeHold(id: first.id, removedBy: "b")
                let outcome = try await expireAll(s, policy, nowMs: Self.now, limit: 100)
                let expired = blobs.filter { $0.agentID == held && Self.ageDays($0) > 2 }
                #expect(!expired.isEmpty && outcome.captures == expired.count, "\(outcome)")
                for b in blobs {
                    let gone = expired.contains(b)
                    #expect((try await s.blob(b.blobID) == nil) == gone, "\(b.agentID) \(Self.ageDays(b)) days")
                }
            }
        }

        /// The lease: of two storages on one database only one holds it; the holder renews it;
        /// the other takes it once it expired or was released; of many racing takers one wins.
        @Test(arguments: Backend.testable)
        func theLeaseHasOneHolderAtATime(_ backend: Backend) async throws {
            try await withRig(backend, "lease") { rig async throws in
                let a = rig.storage
                try await withSecondStorage(rig) { b in
                    let t = Self.now, name = "retention"
                    #expect(try await a.acquireLease(name, holder: "A", ttlMs: 1000, nowMs: t))
                    #expect(try await !b.acquireLease(name, holder: "B", ttlMs: 1000, nowMs: t + 10))
                    #expect(try await a.acquireLease(name, holder: "A", ttlMs: 1000, nowMs: t + 500))  // renewed to t+1500
                    #expect(try await !b.acquireLease(name, holder: "B", ttlMs: 1000, nowMs: t + 1200))
                    #expect(try await b.acquireLease(name, holder: "B", ttlMs: 1000, nowMs: t + 1500))  // expired
                    #expect(try await !a.acquireLease(name, holder: "A", ttlMs: 1000, nowMs: t + 1600))
                    try await a.releaseLease(name, holder: "A")  // not A's: nothing happens
                    #expect(try await !a.acquireLease(name, holder: "A", ttlMs: 1000, nowMs: t + 1600))
                    try await b.releaseLease(name, holder: "B")
                    #expect(try await a.acquireLease(name, holder: "A", ttlMs: 1000, nowMs: t + 1600))
                    // Another lease name is independent.
                    #expect(try await b.acquireLease("other", holder: "B", ttlMs: 1000, nowMs: t + 1600))

                    // Racing: 12 takers on both storages at the same moment; exactly one wins.
                    let storages: [any CollectorStorage] = [a, b]
                    let winners = try await withThrowingTaskGroup(of: Bool.self) { group in
                        for i in 0..<12 {
                            group.addTask {
                                try await storages[i % 2].acquireLease("race", holder: "taker-\(i)", ttlMs: 60_000, nowMs: t)
                            }
                        }
                        return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
                    }
                    #expect(winners == 1)

                    for (name, holder, ttl) in [("", "A", 1000), ("x", "", 1000), ("x", "A", 0), ("x\u{0}", "A", 1000)] as [(String, String, Int64)] {
                        #expect(await storageError { _ = try await a.acquireLease(name, holder: holder, ttlMs: ttl, nowMs: t) }?.code
                            == .invalidArgument)
                    }
                }
            }
        }
    }
}
