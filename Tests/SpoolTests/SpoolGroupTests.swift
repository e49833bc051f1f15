import Foundation
import GRDB
import Spool
import Testing
import TestSupport

/// Groups of pictures (docs/SPOOL.md): eviction takes whole groups, so what stays always
/// decodes; a group that lost a record refuses later ones; v1 spools migrate to v2.
@Suite struct SpoolGroupTests {
    /// 1 MiB: the smallest cap `spool-max-mb` can give (twice `Spool.minimumMaxBytes`, under
    /// which no record fits at all), room for about a dozen groups of pictures.
    static let cap: Int64 = 1 << 20

    /// Two monitors record interleaved groups of pictures (a large keyframe, small inter
    /// packets, now and then a larger one) into a 1 MiB spool while an uploader leases and
    /// acks some of them and keeps others leased; keystrokes and a DEK record sit in the spool
    /// throughout. Eviction runs about 80 times (about 90 whole groups). After every enqueue:
    /// every packet of each group still spooled, since its keyframe, is spooled or was uploaded
    /// (acked), in order: no hole; every record that disappeared went with its whole group,
    /// that group is in the call's `evictedGroups`, and the evicted counters grew by exactly
    /// those records and bytes; keystrokes and the DEK record are untouched; an enqueue into
    /// an evicted group throws `.groupBroken` and is counted as dropped `group-broken`.
    /// Then groups that never end (no keyframe) make the monitors' current groups evict each
    /// other, and a group alone in the spool is refused `.full` rather than evict itself.
    @Test func evictionTakesWholeGroupsSoWhatRemainsDecodes() throws {
        let tmp = try TempDir("spool-groups")
        defer { tmp.remove() }
        let (logger, logs) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        var rng = SplitMix64(seed: 0x5EED_0013)
        var check = try GroupChecker(spool: spool, dir: tmp.path)

        // A DEK record and keystroke chunks that must stay; released for an hour so the
        // uploader below leases only screen packets.
        try spool.enqueue(entry(0, .dekRecord, bytes: 400, time: 0))
        for n in 1...6 { try spool.enqueue(entry(n, .keystrokes, bytes: 3_000, time: Int64(n))) }
        let others = try spool.lease(maxItems: 100, maxBytes: 1 << 20)
        #expect(others.count == 7)
        try spool.release(others.map(\.id), retryAfter: .seconds(3600))
        try check.snapshot()

        var monitors = [Monitor(tag: 0xA5, rng: &rng), Monitor(tag: 0xB5, rng: &rng)]
        var clock: Int64 = 10_000
        var inFlight: [Data] = []   // leased, not acked yet
        var probes = 0

        /// One packet of monitor `m`, as the agent handles the outcome.
        func step(_ m: Int, forever: Bool) throws {
            let e = monitors[m].nextPacket(rng: &rng, clock: &clock, forever: forever)
            do {
                let result = try spool.enqueue(e)
                try check.accepted(e, result: result)
                for i in monitors.indices where result.evictedGroups.contains(monitors[i].group) {
                    // The agent learns at once that its current group is gone: a keyframe next.
                    if probes < 6 {
                        try check.expectBroken(monitors[i].probe(clock: clock))
                        probes += 1
                    }
                    monitors[i].startGroup(rng: &rng)
                    check.currentGroupsEvicted += 1
                }
            } catch let error as SpoolError where error.code == .full {
                // Only its own group stood in the way: refused, and that group is broken now.
                try check.refused(e)
                #expect(error.message.contains("its own group"), "\(error)")
                try check.expectBroken(monitors[m].probe(clock: clock))
                monitors[m].startGroup(rng: &rng)
            }
        }

        // Regular groups (a keyframe every 10 to 30 packets), an uploader now and then.
        for i in 0..<1_500 {
            try step(Int(rng.next() % 2), forever: false)
            if i % 37 == 36 {
                // Upload: the oldest screen packets go (a prefix of some groups).
                let batch = try spool.lease(maxItems: 4, maxBytes: 1 << 20)
                #expect(batch.allSatisfy { $0.kind == .screen && $0.group != nil })
                try spool.ack(batch.map(\.id))
                check.acked(batch)
            }
            if i % 53 == 52 {
                // Leased, in flight while eviction may take them; acked later (gone ids are ignored).
                let batch = try spool.lease(maxItems: 3, maxBytes: 1 << 20, leaseDuration: .seconds(3600))
                try spool.ack(inFlight)
                check.ackedIDs(inFlight)
                inFlight = batch.map(\.id)
                check.leased(inFlight)
            }
            try check.snapshot()
            if i % 97 == 96, let old = check.someEvictedGroup(notIn: Set(monitors.map(\.group))) {
                // A late packet of an old, evicted group is refused too.
                try check.expectBroken(SpoolEntry(id: testID(900_000 + i, tag: 0xC7), kind: .screen, dekID: screenDEK,
                                                  captureTimeMs: 1, payload: randomBytes(700), group: old))
            }
        }
        #expect(check.evictionCalls > 50, "eviction ran only \(check.evictionCalls) times")
        #expect(check.leasedEvicted > 0, "no leased packet was ever evicted with its group")

        // Groups that never end: the monitors' current groups evict each other.
        for _ in 0..<600 {
            try step(Int(rng.next() % 2), forever: true)
            try check.snapshot()
        }
        #expect(check.currentGroupsEvicted >= 3, "current groups evicted: \(check.currentGroupsEvicted)")
        #expect(probes > 0)

        // One monitor alone: its group fills the spool and is refused rather than evict itself.
        let refusedBefore = check.refusedCount
        var refusedGroup: Int64?
        for _ in 0..<1_000 {
            let g = monitors[0].group
            try step(0, forever: true)
            try check.snapshot()
            if check.refusedCount > refusedBefore { refusedGroup = g; break }
        }
        let refused = try #require(refusedGroup, "a group alone in a full spool was never refused")
        #expect(try rawQueue(tmp.path).read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM record WHERE grp = ?", arguments: [refused])
        } ?? 0 > 0, "the refused group's packets before the refusal stay (they decode)")
        // Its successor's keyframe (larger than any inter packet) evicts that decodable prefix whole.
        try step(0, forever: true)
        try check.snapshot()
        #expect(check.evictedGroups.contains(refused))

        print("""
            groups of pictures under a 1 MiB cap: \(check.evictionCalls) enqueues evicted, \
            \(check.evictedGroups.count) groups evicted (\(check.currentGroupsEvicted) of them current), \
            \(check.leasedEvicted) leased packets evicted, \(check.refusedCount) refused full, \
            \(check.brokenRefusals) broken-group packets refused
            """)
        let stats = try spool.stats()
        #expect(stats.spooled[.keystrokes]?.count == 6 && stats.spooled[.dekRecord]?.count == 1)
        #expect(stats.evicted[.keystrokes]?.count == 0)
        #expect(stats.dropped[.groupBroken]?.count == check.brokenRefusals)
        #expect(logs.all.filter { $0.contains("lost packets") }.count >= 1)
        try spool.close()
        #expect(try Spool.openReadOnly(directory: tmp.path).stats().dropped[.groupBroken]?.count == check.brokenRefusals)
    }

    /// Records of a group that are leased (being uploaded) when the group is evicted are
    /// evicted with it; their later ack and release are ignored; the group is broken.
    @Test func leasedRecordsGoWithTheirGroup() throws {
        let tmp = try TempDir("spool-groups-leased")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        let g: Int64 = 0x7E57_0001
        let packets = (0..<4).map { i in
            SpoolEntry(id: testID(i, tag: 0xC5), kind: .screen, dekID: screenDEK, captureTimeMs: Int64(i),
                       payload: randomBytes(i == 0 ? 40_000 : 2_000), group: g)
        }
        for p in packets { try spool.enqueue(p) }
        let leased = try spool.lease(maxItems: 2, maxBytes: 1 << 20)
        #expect(leased == Array(packets.prefix(2)), "lease hands back the group")
        // Newer ungrouped screen frames fill the spool: the group is the oldest and goes whole.
        var evictedGroups = Set<Int64>()
        var n = 100
        while evictedGroups.isEmpty && n < 200 {
            evictedGroups.formUnion(try spool.enqueue(entry(n, .screen, bytes: 30_000, time: Int64(n))).evictedGroups)
            n += 1
        }
        #expect(evictedGroups == [g])
        let left = try Set(rawQueue(tmp.path).read { db in try Data.fetchAll(db, sql: "SELECT id FROM record") })
        #expect(packets.allSatisfy { !left.contains($0.id) }, "a packet of the evicted group stayed")
        let stats = try spool.stats()
        #expect(stats.evicted[.screen]?.count == 4)
        #expect(stats.evicted[.screen]?.bytes == Int64(packets.reduce(0) { $0 + $1.payload.count }))
        #expect(stats.leased == 0)
        try spool.ack([leased[0].id])
        try spool.release([leased[1].id])
        #expect(try spool.stats().totalSpooled.count == left.count)
        do {
            try spool.enqueue(SpoolEntry(id: testID(4, tag: 0xC5), kind: .screen, dekID: screenDEK, captureTimeMs: 4,
                                         payload: randomBytes(900), group: g))
            Issue.record("a packet of an evicted group was stored")
        } catch let error as SpoolError {
            #expect(error.code == .groupBroken, "\(error)")
            #expect(error.message.contains(String(UInt64(bitPattern: g), radix: 16)), "\(error)")
        }
        #expect(try spool.stats().dropped[.groupBroken] == SpoolCount(count: 1, bytes: 900))
        try spool.close()
    }

    /// A group whose enqueue failed for any reason (here a packet over the size limit) lost
    /// that packet: its later packets are refused; the packets before stay (they decode).
    /// A DEK record may not carry a group, and a group's records share one kind.
    @Test func aFailedEnqueueBreaksTheGroupAndGroupsAreValidated() throws {
        let tmp = try TempDir("spool-groups-refused")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        let g: Int64 = -42
        func packet(_ i: Int, bytes: Int, group: Int64 = g, kind: SpoolKind = .screen) -> SpoolEntry {
            SpoolEntry(id: testID(i, tag: 0xC5), kind: kind, dekID: screenDEK, captureTimeMs: Int64(i),
                       payload: randomBytes(bytes), group: group)
        }
        try spool.enqueue(packet(0, bytes: 30_000))
        try spool.enqueue(packet(1, bytes: 500))
        #expect(throws: SpoolError.self) { try spool.enqueue(packet(2, bytes: Spool.largestRecord(maxBytes: Self.cap) + 1)) }
        do {
            try spool.enqueue(packet(3, bytes: 600))
            Issue.record("a packet after a lost one was stored")
        } catch let error as SpoolError {
            #expect(error.code == .groupBroken, "\(error)")
        }
        let ids = try rawQueue(tmp.path).read { db in try Data.fetchAll(db, sql: "SELECT id FROM record ORDER BY seq") }
        #expect(ids == [testID(0, tag: 0xC5), testID(1, tag: 0xC5)])
        let stats = try spool.stats()
        #expect(stats.dropped[.groupBroken] == SpoolCount(count: 1, bytes: 600))
        #expect(stats.dropped[.tooLarge]?.count == 1)
        #expect(stats.rejected[.screen]?.count == 0, "a broken-group refusal is not a cap refusal")

        var dek = entry(0, .dekRecord, bytes: 300)
        dek.group = 7
        do { try spool.enqueue(dek); Issue.record("a DEK record with a group was stored") } catch let error as SpoolError {
            #expect(error.code == .invalidEntry && error.message.contains("DEK record"), "\(error)")
        }
        try spool.enqueue(packet(10, bytes: 2_000, group: 8))
        do {
            try spool.enqueue(packet(11, bytes: 2_000, group: 8, kind: .generic))
            Issue.record("a group with two kinds was stored")
        } catch let error as SpoolError {
            #expect(error.code == .invalidEntry && error.message.contains("'screen'"), "\(error)")
        }
        try spool.close()
    }

    /// A row of a group that fails to parse is quarantined (as any row); the group's records
    /// enqueued after it could not decode, so they are evicted and counted, the ones before it
    /// are still uploaded, and the group is broken.
    @Test func aQuarantinedPacketCutsItsGroup() throws {
        let tmp = try TempDir("spool-groups-quarantine")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        let g: Int64 = 0x0123_4567_89AB_CDEF
        let packets = (0..<6).map { i in
            SpoolEntry(id: testID(i, tag: 0xC5), kind: .screen, dekID: screenDEK, captureTimeMs: Int64(i),
                       payload: randomBytes(i == 0 ? 20_000 : 1_000 + i), group: g)
        }
        for p in packets { try spool.enqueue(p) }
        let other = entry(50, .screen, bytes: 800, time: 3)
        try spool.enqueue(other)
        try rawQueue(tmp.path).write { db in
            try db.execute(sql: "UPDATE record SET kind = 'hologram' WHERE id = ?", arguments: [packets[2].id])
        }
        let got = try spool.lease(maxItems: 20, maxBytes: 1 << 20)
        #expect(got == [packets[0], packets[1], other])
        let stats = try spool.stats()
        #expect(stats.quarantined == 1)
        #expect(stats.evicted[.screen] == SpoolCount(count: 3, bytes: Int64(packets[3...].reduce(0) { $0 + $1.payload.count })))
        #expect(stats.spooled[.screen]?.count == 3)
        do {
            try spool.enqueue(SpoolEntry(id: testID(6, tag: 0xC5), kind: .screen, dekID: screenDEK, captureTimeMs: 6,
                                         payload: randomBytes(700), group: g))
            Issue.record("a packet of a group cut by quarantine was stored")
        } catch let error as SpoolError {
            #expect(error.code == .groupBroken, "\(error)")
        }
        try spool.close()
    }

    /// A spool written by the v1 schema (before groups), with records and counters, opens
    /// under v2 and v3: v2 adds `grp` and its index, old records keep their bytes and lease with
    /// no group, old counters stay, and eviction under the cap takes old ungrouped frames singly
    /// and new groups whole; v3 moves screens from priority 3 to 4 (room for activity at 2).
    @Test func aV1SpoolWithRecordsMigratesToV2() throws {
        let tmp = try TempDir("spool-v1")
        defer { tmp.remove() }
        var old: [SpoolEntry] = [entry(0, .dekRecord, bytes: 400, time: 0)]
        old += (1...3).map { entry($0, .keystrokes, bytes: 2_000, time: Int64($0)) }
        old += (4...23).map { entry($0, .screen, bytes: 25_000, time: Int64($0)) }
        try V1Spool.create(dir: tmp.path, records: old, counters: ["evicted.screen.count": 7, "evicted.screen.bytes": 70_000])

        let (logger, _) = memoryLogger()
        var spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        let raw = try rawQueue(tmp.path)
        let schema = try raw.read { db in
            (try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier"),
             try String.fetchAll(db, sql: "SELECT name FROM pragma_table_info('record')"),
             try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'record'"),
             try Int.fetchOne(db, sql: "SELECT count(*) FROM record WHERE grp IS NOT NULL"))
        }
        #expect(schema.0 == ["v1", "v2", "v3"])
        let priorities = try raw.read { db in
            try Row.fetchAll(db, sql: "SELECT kind, min(priority) AS lo, max(priority) AS hi FROM record GROUP BY kind")
                .map { "\($0["kind"] as String) \($0["lo"] as Int)-\($0["hi"] as Int)" }.sorted()
        }
        #expect(priorities == ["dek 0-0", "keystrokes 1-1", "screen 4-4"])
        #expect(schema.1.last == "grp")
        #expect(schema.2.contains("record_group"))
        #expect(schema.3 == 0)
        var stats = try spool.stats()
        #expect(stats.evicted[.screen] == SpoolCount(count: 7, bytes: 70_000))
        #expect(stats.totalSpooled.count == old.count)
        let leased = try spool.lease(maxItems: 100, maxBytes: 1 << 20)
        #expect(leased.count >= 5, "the DEK record, keystrokes and the screen frames that fit half the WAL share")
        #expect(leased == Array(old.prefix(leased.count)), "old records come back byte for byte, with no group")
        try spool.release(leased.map(\.id), retryAfter: .zero)

        // Grouped packets: old (older) ungrouped frames are evicted first, one by one; then whole groups.
        var check = try GroupChecker(spool: spool, dir: tmp.path)
        try check.snapshot()
        var rng = SplitMix64(seed: 0x0001_0002)
        var monitor = Monitor(tag: 0xA5, rng: &rng)
        var clock: Int64 = 10_000
        for _ in 0..<300 {
            let e = monitor.nextPacket(rng: &rng, clock: &clock, forever: false)
            try check.accepted(e, result: try spool.enqueue(e))
            try check.snapshot()
        }
        stats = try spool.stats()
        #expect(stats.spooled[.screen]?.count ?? 0 > 0)
        #expect(stats.evicted[.screen]!.count >= 7 + 20 + 10, "old frames and some groups evicted: \(stats.evicted)")
        #expect(stats.spooled[.keystrokes]?.count == 3 && stats.spooled[.dekRecord]?.count == 1)
        #expect(check.evictionCalls > 5)
        try spool.close()
        // v3 opens as v3; the read-only status path reads it.
        spool = try Spool(directory: tmp.path, maxBytes: Self.cap, logger: logger)
        try spool.close()
        let ro = try Spool.openReadOnly(directory: tmp.path)
        #expect(try ro.stats().evicted[.screen] == stats.evicted[.screen])
        try ro.close()
        #expect(try raw.read { db in try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations") }.count == 3)
        let names = try FileManager.default.contentsOfDirectory(atPath: tmp.path)
        #expect(!names.contains { $0.contains(".newer-") || $0.contains(".corrupt-") }, "\(names)")
    }
}

// MARK: - Helpers

/// The DEK id of the test's screen packets (no DEK record spooled for it, so they lease freely).
let screenDEK = Data(repeating: 0x5C, count: 16)

/// A deterministic generator (SplitMix64), so a failing run can be repeated.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// One monitor's video stream as the agent makes it: a random group id per group of pictures,
/// a keyframe (20 to 60 KB, as screen content at 1920x1080) and then inter packets (mostly
/// 100 B to 3 KB, now and then 8 to 16 KB when much of the screen changed). Capture times come
/// from one clock shared by the monitors (`clock`, ms).
struct Monitor {
    let tag: UInt8
    var group: Int64 = 0
    var left = 0        // packets before the next keyframe
    var index = 0       // packet index within the group
    var serial = 0      // ids: testID(serial, tag: tag)

    init(tag: UInt8, rng: inout SplitMix64) {
        self.tag = tag
        startGroup(rng: &rng)
    }

    mutating func startGroup(rng: inout SplitMix64) {
        group = Int64(bitPattern: rng.next())
        left = 10 + Int(rng.next() % 21)
        index = 0
    }

    /// The next packet; with `forever` the group never ends by itself (no periodic keyframe).
    mutating func nextPacket(rng: inout SplitMix64, clock: inout Int64, forever: Bool) -> SpoolEntry {
        if left <= 0 && !forever { startGroup(rng: &rng) }
        let bytes: Int
        if index == 0 {
            bytes = 20_000 + Int(rng.next() % 40_000)
        } else if rng.next() % 10 == 0 {
            bytes = 8_000 + Int(rng.next() % 8_000)
        } else {
            bytes = 100 + Int(rng.next() % 2_900)
        }
        index += 1
        left -= 1
        serial += 1
        clock += 1
        return SpoolEntry(id: testID(serial, tag: tag), kind: .screen, dekID: screenDEK,
                          captureTimeMs: clock, payload: randomBytes(bytes), group: group)
    }

    /// A packet of the current group that is not part of the stream (to probe a broken group).
    mutating func probe(clock: Int64) -> SpoolEntry {
        serial += 1
        return SpoolEntry(id: testID(serial, tag: tag), kind: .screen, dekID: screenDEK,
                          captureTimeMs: clock, payload: randomBytes(500 + serial % 300), group: group)
    }
}

/// Watches the record table across enqueues and checks the group rule after each.
struct GroupChecker {
    let spool: Spool
    let raw: DatabaseQueue
    /// Every packet accepted, by group, in enqueue order.
    var accepted: [Int64: [Data]] = [:]
    var sizes: [Data: Int64] = [:]
    var gone: Set<Data> = []            // acked (uploaded) ids
    var evictedGroups: Set<Int64> = []
    var leasedNow: Set<Data> = []
    /// The table as of the last snapshot: id -> group.
    var rows: [Data: Int64?] = [:]
    var evicted = SpoolCount()
    var evictionCalls = 0
    var leasedEvicted = 0
    var currentGroupsEvicted = 0
    var brokenRefusals = 0
    var refusedCount = 0
    var keep: Set<Data> = []            // ungrouped records that must stay (keystrokes, DEK)

    init(spool: Spool, dir: String) throws {
        self.spool = spool
        raw = try rawQueue(dir)
        evicted = try spool.stats().evicted[.screen] ?? SpoolCount()
    }

    /// Reads the table and checks: every group present is a run of its accepted packets that
    /// ends at its last one, all before it acked; no evicted group has a record; the records
    /// to keep are there.
    mutating func snapshot() throws {
        let table = try raw.read { db in
            try Row.fetchAll(db, sql: "SELECT id, grp, kind, size FROM record ORDER BY seq").map {
                (id: $0["id"] as Data, group: $0["grp"] as Int64?, kind: $0["kind"] as String, size: $0["size"] as Int64)
            }
        }
        for row in table where sizes[row.id] == nil { sizes[row.id] = row.size }  // records spooled before
        if keep.isEmpty { keep = Set(table.filter { $0.kind != "screen" }.map(\.id)) }
        var present: [Int64: [Data]] = [:]
        rows = [:]
        for row in table {
            rows[row.id] = row.group
            if let g = row.group { present[g, default: []].append(row.id) }
        }
        for (g, ids) in present {
            try #require(!evictedGroups.contains(g), "evicted group \(g) still has \(ids.count) records")
            // Every packet of the group since its keyframe is spooled or uploaded (acked), in order.
            let all = accepted[g] ?? []
            let spooled = Set(ids)
            try #require(ids == all.filter(spooled.contains), "group \(g): spooled packets out of order or unknown")
            let missing = all.filter { !spooled.contains($0) && !gone.contains($0) }
            try #require(missing.isEmpty, """
                group \(g) has a hole: \(missing.count) of \(all.count) packets neither spooled nor uploaded, \
                \(ids.count) spooled
                """)
        }
        try #require(keep.isSubset(of: Set(rows.keys)), "a keystroke or DEK record disappeared")
    }

    /// After `e` was accepted: what disappeared is exactly the groups the call reports (and
    /// ungrouped screen frames), and the evicted counter grew by exactly that.
    mutating func accepted(_ e: SpoolEntry, result: SpoolEnqueueResult) throws {
        let before = rows
        if let g = e.group { accepted[g, default: []].append(e.id) }
        sizes[e.id] = Int64(e.payload.count)
        try snapshot()
        let disappeared = Set(before.keys).subtracting(rows.keys)
        if let g = e.group { try #require(!result.evictedGroups.contains(g), "a record evicted its own group") }
        for id in disappeared {
            if let g = before[id]! {
                try #require(result.evictedGroups.contains(g), "a record of group \(g) vanished without its group reported")
            }
        }
        for g in result.evictedGroups {
            try #require(before.values.contains(g), "group \(g) reported evicted was not spooled")
        }
        evictedGroups.formUnion(result.evictedGroups)
        let stats = try spool.stats()
        let now = stats.evicted[.screen] ?? SpoolCount()
        let bytes = disappeared.reduce(Int64(0)) { $0 + (sizes[$1] ?? 0) }
        try #require(now.count - evicted.count == disappeared.count && now.bytes - evicted.bytes == bytes, """
            evicted counter grew by \(now.count - evicted.count) records / \(now.bytes - evicted.bytes) bytes; \
            \(disappeared.count) records / \(bytes) bytes disappeared
            """)
        evicted = now
        if !disappeared.isEmpty { evictionCalls += 1 }
        leasedEvicted += disappeared.intersection(leasedNow).count
        try #require(stats.evicted[.keystrokes]?.count == 0 && stats.evicted[.generic]?.count == 0)
    }

    /// After `e` was refused `.full`: nothing changed; its group (if any) is broken now.
    mutating func refused(_ e: SpoolEntry) throws {
        let before = rows
        try snapshot()
        try #require(rows.keys == before.keys, "a refused enqueue changed the spool")
        refusedCount += 1
    }

    /// `e`, of a broken group, must be refused `.groupBroken`, change nothing and be counted.
    mutating func expectBroken(_ e: SpoolEntry) throws {
        let dropped = try spool.stats().dropped[.groupBroken] ?? SpoolCount()
        let before = rows
        do {
            try spool.enqueue(e)
            Issue.record("a packet of a broken group was stored")
        } catch let error as SpoolError {
            try #require(error.code == .groupBroken, "\(error)")
        }
        brokenRefusals += 1
        let now = try spool.stats().dropped[.groupBroken] ?? SpoolCount()
        try #require(now.count == dropped.count + 1 && now.bytes == dropped.bytes + Int64(e.payload.count))
        try snapshot()
        try #require(rows.keys == before.keys)
    }

    mutating func acked(_ batch: [SpoolEntry]) { ackedIDs(batch.map(\.id)) }
    /// Acked ids that were still spooled count as uploaded (an ack of an evicted id is ignored).
    mutating func ackedIDs(_ ids: [Data]) {
        gone.formUnion(ids.filter { rows[$0] != nil })
        leasedNow.subtract(ids)
    }
    mutating func leased(_ ids: [Data]) { leasedNow.formUnion(ids) }

    func someEvictedGroup(notIn current: Set<Int64>) -> Int64? {
        evictedGroups.subtracting(current).min()
    }
}

/// Writes a spool database the way release v1 did: the v1 schema SQL (copied verbatim from
/// `SpoolSchema` v1, which must never change), GRDB's migration table with `v1`, the pragmas,
/// and records inserted with v1's INSERT.
enum V1Spool {
    static let schema = """
        PRAGMA application_id = 1129534288;
        CREATE TABLE record (
            seq INTEGER PRIMARY KEY,
            id BLOB NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            priority INTEGER NOT NULL,
            dek_id BLOB NOT NULL,
            capture_ms INTEGER NOT NULL,
            size INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ms INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until_ms INTEGER NOT NULL DEFAULT 0,
            payload BLOB NOT NULL
        );
        CREATE INDEX record_order ON record(priority, capture_ms);
        CREATE TABLE quarantine (
            seq INTEGER PRIMARY KEY,
            id BLOB,
            kind TEXT,
            size INTEGER,
            reason TEXT NOT NULL,
            quarantined_ms INTEGER NOT NULL
        );
        CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        """

    static func create(dir: String, records: [SpoolEntry], counters: [String: Int64]) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        var config = Configuration()
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        }
        let queue = try DatabaseQueue(path: dir + "/spool.db", configuration: config)
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in try db.execute(sql: schema) }
        try migrator.migrate(queue)
        let priority: [SpoolKind: Int] = [.dekRecord: 0, .keystrokes: 1, .generic: 2, .screen: 3]
        try queue.write { db in
            for e in records {
                try db.execute(sql: """
                    INSERT INTO record(id, kind, priority, dek_id, capture_ms, size, payload)
                    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING
                    """, arguments: [e.id, e.kind.rawValue, priority[e.kind], e.dekID, e.captureTimeMs,
                                     e.payload.count, e.payload])
            }
            for (name, value) in counters {
                try db.execute(sql: "INSERT INTO counter(name, value) VALUES (?, ?)", arguments: [name, value])
            }
            try db.execute(sql: "INSERT INTO meta(key, value) VALUES ('max-bytes', '1048576')")
        }
        try queue.close()
    }
}
