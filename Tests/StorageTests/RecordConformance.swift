import CollectorStorage
import CustosBase
import Envelope
import Foundation
import Logging
import ServiceLifecycle
import Testing
import TestSupport

extension StorageConformance {
    /// `DEKStore` on every backend.
    @Suite struct DEKStoreConformance {
        /// DEK records page by creation time, ties broken by DEK id, optionally of one agent.
        @Test(arguments: Backend.testable)
        func recordsPageByCreationTimeThenID(_ backend: Backend) async throws {
            try await withRig(backend, "deks") { rig async throws in
                let s = rig.storage
                let a = agent("a"), b = agent("b")
                // Times with ties (three DEKs at 30 ms), agents interleaved, inserted out of order.
                let deks = [dek(a, time: 50), dek(b, time: 30), dek(a, time: 30), dek(a, time: 10), dek(b, time: 30),
                            dek(b, time: 20), dek(a, time: 40)]
                #expect(try await s.ingest(deks.map { .dek($0) }, receivedAtMs: 99) == Array(repeating: .stored, count: deks.count))
                let order: (StoredDEK, StoredDEK) -> Bool = { ($0.creationTimeMs, $0.dekID.hex) < ($1.creationTimeMs, $1.dekID.hex) }

                for (filter, limit) in [(nil, 2), (nil, 7), (nil, 100), (a, 1), (a, 3), (b, 2)] as [(AgentID?, Int)] {
                    var all: [StoredDEK] = [], after: DEKID?
                    while true {
                        let page = try await s.dekRecords(agent: filter, after: after, limit: limit)
                        #expect(page.count <= limit)
                        all += page
                        guard page.count == limit, let last = page.last else { break }
                        after = last.dekID
                    }
                    let expected = deks.filter { filter == nil || $0.agentID == filter }.sorted(by: order)
                    #expect(all == expected, "agent \(String(describing: filter)), \(limit) a page")
                }
                for d in deks { #expect(try await s.dekRecord(d.dekID) == d.record) }
                #expect(try await s.dekRecord(DEKID.random()) == nil)
                #expect(await storageError { _ = try await s.dekRecords(agent: nil, after: DEKID.random(), limit: 5) }?.code == .notFound)
                for bad in [0, -1, 10_001] {
                    #expect(await storageError { _ = try await s.dekRecords(agent: nil, after: nil, limit: bad) }?.code == .invalidArgument)
                }
                #expect(try await s.dekRecords(agent: nil, after: nil, limit: 10_000).count == deks.count)
                #expect(try await s.dekRecords(agent: agent("nobody"), after: nil, limit: 10).isEmpty)
            }
        }
    }
}

extension StorageConformance {
    /// `CaptureStore.ingest` on every backend.
    @Suite struct IngestConformance {
        @Test(arguments: Backend.testable)
        func outcomes(_ backend: Backend) async throws {
            try await withRig(backend, "ingest") { rig async throws in
                let s = rig.storage
                let a = agent("alice"), m = agent("mallory")
                #expect(try await s.ingest([], receivedAtMs: 1).isEmpty)

                // A DEK record and a blob under it in one batch; a blob whose DEK nobody sent.
                let d = dek(a, time: 100)
                let b1 = blob(d, time: 101), orphan = blob(dek(a, time: 0), time: 102)
                #expect(try await s.ingest([.dek(d), .blob(b1), .blob(orphan)], receivedAtMs: 5)
                    == [.stored, .stored, .unknownDEK])
                // The same again: duplicates (the orphan stays unknown).
                #expect(try await s.ingest([.dek(d), .blob(b1), .blob(orphan)], receivedAtMs: 6)
                    == [.duplicate, .duplicate, .unknownDEK])
                // A blob under a DEK stored by an earlier batch.
                let b2 = blob(d, kind: .keystrokes, time: 103, size: 40, sequence: 1)
                #expect(try await s.ingest([.blob(b2)], receivedAtMs: 7) == [.stored])
                // Batches of blobs only (PostgreSQL's one-statement path): a new blob, a retry, an
                // orphan, one id twice (the second copy compared with the first), other bytes.
                let b3 = blob(d, time: 104, sequence: 2)
                var b3Other = b3
                b3Other.bytes = randomData(b3.bytes.count)
                #expect(try await s.ingest([.blob(b3), .blob(b2), .blob(orphan), .blob(b3), .blob(b3Other)], receivedAtMs: 7)
                    == [.stored, .duplicate, .unknownDEK, .duplicate, .conflict])
                #expect(try await s.capture(b3.blobID) == info(b3, receivedAtMs: 7))

                // Same id, other bytes: a conflict, nothing changed.
                var otherRecord = d
                otherRecord.record = randomData(120)
                var otherBytes = b1
                otherBytes.bytes = randomData(b1.bytes.count)
                var otherTime = b1
                otherTime.captureTimeMs += 1
                var otherSize = b1
                otherSize.bytes = randomData(b1.bytes.count + 1)
                var otherSequence = b1
                otherSequence.sequence += 5
                #expect(try await s.ingest([.dek(otherRecord), .blob(otherBytes), .blob(otherTime), .blob(otherSize),
                                            .blob(otherSequence)], receivedAtMs: 8)
                    == [.conflict, .conflict, .conflict, .conflict, .conflict])
                #expect(try await s.dekRecord(d.dekID) == d.record)
                #expect(try await s.blob(b1.blobID) == b1.bytes)
                #expect(try await s.capture(b1.blobID) == info(b1, receivedAtMs: 5), "the first receipt time stays")

                // Another agent's ids: `otherAgent`, nothing stored or changed; another agent's DEK id
                // under a new blob is an unknown DEK.
                let md = dek(m, time: 200)
                var stolenDEK = d
                stolenDEK.agentID = m
                var stolenBlob = b1
                stolenBlob.agentID = m
                stolenBlob.dekID = md.dekID
                var sameBytesOtherAgent = b2
                sameBytesOtherAgent.agentID = m
                let underAlicesDEK = blob(d, time: 300).with(agent: m)
                #expect(try await s.ingest([.dek(md), .dek(stolenDEK), .blob(stolenBlob), .blob(sameBytesOtherAgent),
                                            .blob(underAlicesDEK)], receivedAtMs: 9)
                    == [.stored, .otherAgent, .otherAgent, .otherAgent, .unknownDEK])
                #expect(try await s.capture(b1.blobID)?.agentID == a)
                #expect(try await s.dekRecords(agent: m, after: nil, limit: 10).map(\.dekID) == [md.dekID])
                #expect(try await s.capture(underAlicesDEK.blobID) == nil)
                // The same without a DEK record in the batch.
                let underAlicesDEKAgain = blob(d, time: 301).with(agent: m)
                #expect(try await s.ingest([.blob(underAlicesDEKAgain), .blob(stolenBlob)], receivedAtMs: 10)
                    == [.unknownDEK, .otherAgent])
                #expect(try await s.capture(underAlicesDEKAgain.blobID) == nil)
                #expect(try await s.counts() == (3, 2))
            }
        }

        /// Blobs of every size read back byte for byte, empty, small and large ones (blob files on
        /// SQLite, TOAST on PostgreSQL), in one batch and later; capture(id) gives the metadata
        /// without the bytes.
        @Test(arguments: Backend.testable)
        func blobsOfEverySizeReadBack(_ backend: Backend) async throws {
            try await withRig(backend, "ingest-sizes") { rig async throws in
                let s = rig.storage
                let d = dek(agent("sizes"), time: 1)
                let sizes = [0, 100, 32 * 1024 - 1, 32 * 1024, 32 * 1024 + 1, 300_000, 3 * 1024 * 1024 + 17]
                let blobs = sizes.enumerated().map { i, size in blob(d, time: Int64(10 + i), size: size, sequence: Int64(i)) }
                #expect(try await s.ingest([.dek(d)] + blobs.prefix(4).map { .blob($0) }, receivedAtMs: 2)
                    == Array(repeating: .stored, count: 5))
                #expect(try await s.ingest(blobs.dropFirst(4).map { .blob($0) }, receivedAtMs: 3)
                    == [.stored, .stored, .stored])
                for (i, b) in blobs.enumerated() {
                    #expect(try await s.blob(b.blobID) == b.bytes, "\(b.bytes.count) bytes")
                    #expect(try await s.capture(b.blobID) == info(b, receivedAtMs: i < 4 ? 2 : 3))
                }
                #expect(try await s.ingest(blobs.map { .blob($0) }, receivedAtMs: 4) == Array(repeating: .duplicate, count: blobs.count))
                #expect(try await s.blob(BlobID.random()) == nil)
                #expect(try await s.capture(BlobID.random()) == nil)
                #expect(try await s.counts() == (blobs.count, 1))
            }
        }

        /// A batch that fails midway (the database refuses its last capture) stores nothing: not
        /// the DEK record, small or large blob before it; without the refused item it goes through.
        @Test(arguments: Backend.testable)
        func aBatchThatFailsMidwayStoresNothing(_ backend: Backend) async throws {
            try await withRig(backend, "ingest-atomic") { rig async throws in
                let s = rig.storage
                let earlier = dek(agent("atom"), time: 1)
                #expect(try await s.ingest([.dek(earlier)], receivedAtMs: 1) == [.stored])
                let d = dek(agent("atom"), time: 2)
                let small = blob(d, time: 3), large = blob(d, time: 4, size: 100_000), refused = blob(d, time: 5)
                _ = try await rig.cli(backend.refuseCaptureSQL(refused.blobID))
                let error = await storageError {
                    _ = try await s.ingest([.dek(d), .blob(small), .blob(large), .blob(refused)], receivedAtMs: 2)
                }
                #expect(error?.code == .failed, "\(String(describing: error))")
                #expect(error?.message.contains("refused by the test") == true, "the database's reason is kept")
                #expect(try await s.counts() == (0, 1))
                #expect(try await s.dekRecord(d.dekID) == nil)
                #expect(try await s.capture(small.blobID) == nil)
                #expect(try await s.blob(large.blobID) == nil)

                #expect(try await s.ingest([.dek(d), .blob(small), .blob(large)], receivedAtMs: 3) == [.stored, .stored, .stored])
                #expect(try await s.blob(large.blobID) == large.bytes)
                #expect(try await s.blob(small.blobID) == small.bytes)
                #expect(try await s.counts() == (2, 2))

                // A batch of blobs only (PostgreSQL's one-statement path) fails whole as well.
                let small2 = blob(d, time: 6), large2 = blob(d, time: 7, size: 100_000)
                let again = await storageError {
                    _ = try await s.ingest([.blob(small2), .blob(large2), .blob(refused)], receivedAtMs: 4)
                }
                #expect(again?.code == .failed, "\(String(describing: again))")
                #expect(try await s.counts() == (2, 2))
                #expect(try await s.capture(small2.blobID) == nil)
                #expect(try await s.ingest([.blob(small2), .blob(large2)], receivedAtMs: 5) == [.stored, .stored])
                #expect(try await s.blob(large2.blobID) == large2.bytes)
            }
        }
    }
}

extension StoredBlob {
    /// The same blob claimed by another agent.
    func with(agent: AgentID) -> StoredBlob {
        var b = self
        b.agentID = agent
        return b
    }
}

extension StorageConformance {
    /// `CaptureStore.captures` (cursor paging) on every backend.
    @Suite struct CaptureListingConformance {
        /// 60 captures of two agents and four kinds (activity among them), many at equal capture times.
        static func fill(_ s: any CollectorStorage) async throws -> [CaptureInfo] {
            let agents = [agent("north"), agent("south")]
            let deks = agents.map { dek($0, time: 0) }
            var blobs: [StoredBlob] = []
            for i in 0..<60 {
                let d = deks[i % 2]
                let kind: CaptureKind = [.screen, .keystrokes, .screen, .generic, .activity][i % 5]
                // Capture times 1000, 1000, 1000, 1010, …: runs of three ties; blob ids random, so
                // the order within a tie is the blob id's.
                blobs.append(blob(d, kind: kind, time: 1000 + Int64(i / 3) * 10, size: 10 + i, sequence: Int64(i)))
            }
            #expect(try await s.ingest(deks.map { .dek($0) } + blobs.map { .blob($0) }, receivedAtMs: 7).allSatisfy { $0 == .stored })
            return blobs.map { info($0, receivedAtMs: 7) }.sorted(by: listingOrder)
        }

        @Test(arguments: Backend.testable)
        func pagesInBothOrdersWithEveryFilter(_ backend: Backend) async throws {
            try await withRig(backend, "listing") { rig async throws in
                let all = try await Self.fill(rig.storage)
                let queries: [CaptureQuery] = [
                    CaptureQuery(),
                    CaptureQuery(agentID: agent("north")),
                    CaptureQuery(kind: .screen),
                    CaptureQuery(agentID: agent("south"), kind: .keystrokes),
                    CaptureQuery(kind: .activity),
                    CaptureQuery(agentID: agent("north"), kind: .activity),
                    CaptureQuery(sinceMs: 1030),
                    CaptureQuery(untilMs: 1030),
                    CaptureQuery(sinceMs: 1050, untilMs: 1120),
                    CaptureQuery(agentID: agent("north"), kind: .screen, sinceMs: 1010, untilMs: 1150),
                    CaptureQuery(agentID: agent("nobody")),
                    CaptureQuery(sinceMs: 1100, untilMs: 1100),
                ]
                for base in queries {
                    let expected = all.filter { c in
                        (base.agentID.map { $0 == c.agentID } ?? true) && (base.kind.map { $0 == c.kind } ?? true)
                            && (base.sinceMs.map { c.captureTimeMs >= $0 } ?? true) && (base.untilMs.map { c.captureTimeMs < $0 } ?? true)
                    }
                    for order in [CaptureQuery.Order.ascending, .descending] {
                        var q = base
                        q.order = order
                        for limit in [1, 4, 7, 10_000] {
                            let pages = try await allPages(rig.storage, q, limit: limit)
                            let got = pages.flatMap { $0 }
                            #expect(got == (order == .ascending ? expected : expected.reversed()), "\(q), \(limit) a page")
                        }
                    }
                }
                // A page that ends exactly at the last row says so (no empty page after it).
                let exact = try await rig.storage.captures(CaptureQuery(), after: nil, limit: all.count)
                #expect(exact.items == all && exact.next == nil)
                let short = try await rig.storage.captures(CaptureQuery(), after: nil, limit: all.count - 1)
                #expect(short.next == all[all.count - 2].cursor)
                // A cursor is only a position: one past the end, or of a row that never existed, works.
                let past = try await rig.storage.captures(CaptureQuery(), after: all.last!.cursor, limit: 5)
                #expect(past.items.isEmpty && past.next == nil)
                let between = CaptureCursor(captureTimeMs: all[10].captureTimeMs, blobID: all[10].blobID)
                #expect(try await rig.storage.captures(CaptureQuery(), after: between, limit: 3).items == Array(all[11..<14]))
                // A cursor outside the time bounds: the bound decides.
                let late = try await allPages(rig.storage, CaptureQuery(sinceMs: 1100), limit: 1000).flatMap { $0 }
                #expect(try await rig.storage.captures(CaptureQuery(sinceMs: 1100), after: all[0].cursor, limit: 1000).items == late)
                #expect(late == all.filter { $0.captureTimeMs >= 1100 } && !late.isEmpty)
                let early = all.filter { $0.captureTimeMs < 1050 }.reversed() as [CaptureInfo]
                #expect(try await rig.storage.captures(CaptureQuery(untilMs: 1050, order: .descending), after: all.last!.cursor,
                                                       limit: 1000).items == early)
                // Cursor tokens round-trip, and a page resumes from one.
                #expect(CaptureCursor(token: all[5].cursor.token) == all[5].cursor)
                let resumed = try await rig.storage.captures(CaptureQuery(), after: CaptureCursor(token: all[5].cursor.token), limit: 3)
                #expect(resumed.items == Array(all[6..<9]))
            }
        }

        /// Ties at one capture time are ordered by blob id bytes (here ids chosen to sort
        /// opposite to insertion), in both directions, across page boundaries.
        @Test(arguments: Backend.testable)
        func tiesAreBrokenByBlobID(_ backend: Backend) async throws {
            try await withRig(backend, "listing-ties") { rig async throws in
                let d = dek(agent("tie"), time: 0)
                let ids = [blobID(0xf0), blobID(0x80, 2), blobID(0x80, 1), blobID(0x0a), blobID(0x00, 0xff)]
                let blobs = ids.map { blob(d, time: 5_000, id: $0) }
                _ = try await rig.storage.ingest([.dek(d)] + blobs.map { .blob($0) }, receivedAtMs: 1)
                let ascending = try await allPages(rig.storage, CaptureQuery(), limit: 2).flatMap { $0 }.map(\.blobID)
                #expect(ascending == [blobID(0x00, 0xff), blobID(0x0a), blobID(0x80, 1), blobID(0x80, 2), blobID(0xf0)])
                let descending = try await allPages(rig.storage, CaptureQuery(order: .descending), limit: 2).flatMap { $0 }.map(\.blobID)
                #expect(descending == ascending.reversed())
            }
        }

        /// Rows inserted between two pages (before the cursor, at its capture time on both sides of
        /// its blob id, after it) cause no duplicate and no gap: the next pages hold exactly the
        /// rows after the cursor.
        @Test(arguments: Backend.testable)
        func insertsBetweenPagesCauseNoDuplicatesOrGaps(_ backend: Backend) async throws {
            try await withRig(backend, "listing-inserts") { rig async throws in
                let s = rig.storage
                let d = dek(agent("live"), time: 0)
                let first = (0..<10).map { i in blob(d, time: 100 * Int64(i), id: blobID(0x40 + UInt8(i))) }
                _ = try await s.ingest([.dek(d)] + first.map { .blob($0) }, receivedAtMs: 1)
                for order in [CaptureQuery.Order.ascending, .descending] {
                    let q = CaptureQuery(agentID: agent("live"), order: order)
                    let page1 = try await s.captures(q, after: nil, limit: 4)
                    let cursor = try #require(page1.next)
                    // New rows: before the cursor, at its time just before and after its id, after it.
                    let t = cursor.captureTimeMs, high = cursor.blobID.bytes[0]
                    let new = [blob(d, time: order == .ascending ? -50 : 5_000), blob(d, time: t, id: blobID(high, 1)),
                               blob(d, time: t, id: blobID(high &- 1, 9)), blob(d, time: order == .ascending ? 5_000 : -50),
                               blob(d, time: order == .ascending ? t + 50 : t - 50)]
                    _ = try await s.ingest(new.map { .blob($0) }, receivedAtMs: 2)
                    var rest: [CaptureInfo] = [], next: CaptureCursor? = cursor
                    while let c = next {
                        let page = try await s.captures(q, after: c, limit: 3)
                        rest += page.items
                        next = page.next
                    }
                    let everything = try await allPages(s, q, limit: 10_000).flatMap { $0 }
                    let afterCursor = everything.filter { c in
                        order == .ascending ? listingOrder(info(cursor), c) : listingOrder(c, info(cursor))
                    }
                    #expect(rest == afterCursor, "\(order)")
                    #expect(Set(page1.items.map(\.blobID)).isDisjoint(with: rest.map(\.blobID)), "no duplicates")
                    #expect(Set(rest.map(\.blobID)).count == rest.count, "no duplicates")
                }
            }
        }

        @Test(arguments: Backend.testable)
        func limitsOutsideTheRangeAreRefused(_ backend: Backend) async throws {
            try await withRig(backend, "listing-limits") { rig async throws in
                for bad in [0, -5, 10_001, Int.max] {
                    let e = await storageError { _ = try await rig.storage.captures(CaptureQuery(), after: nil, limit: bad) }
                    #expect(e?.code == .invalidArgument)
                }
                #expect(try await rig.storage.captures(CaptureQuery(), after: nil, limit: 10_000) == CapturePage(items: [], next: nil))
            }
        }
    }
}

/// A cursor as an item at that position, for comparisons.
private func info(_ c: CaptureCursor) -> CaptureInfo {
    CaptureInfo(blobID: c.blobID, agentID: agent("x"), kind: .generic, dekID: DEKID.random(), kekID: kekID(0), sequence: 0,
                captureTimeMs: c.captureTimeMs, size: 0, receivedAtMs: 0)
}

extension StorageConformance {
    /// The graphical session of sealed session blobs (user, display: docs/FORMAT.md) on every
    /// backend: stored beside the row, listed back, filtered by user (alone and with an agent,
    /// with every order and page size), part of what a second upload is compared with.
    @Suite struct SessionConformance {
        @Test(arguments: Backend.testable)
        func usersAreStoredListedAndFiltered(_ backend: Backend) async throws {
            try await withRig(backend, "sessions") { rig async throws in
                let s = rig.storage
                let agents = [agent("term-1"), agent("term-2")]
                let deks = agents.map { dek($0, time: 0) }
                var blobs: [StoredBlob] = []
                for i in 0..<30 {
                    var b = blob(deks[i % 2], kind: [.screen, .keystrokes, .activity][i % 3], time: 1000 + Int64(i / 2) * 10,
                                 size: 20 + i, sequence: Int64(i))
                    // Users alice (:1), bob (:2), and plain blobs without a session.
                    switch i % 3 {
                    case 0: (b.user, b.display) = (try UserName("alice"), ":1")
                    case 1: (b.user, b.display) = (try UserName("bob"), ":2")
                    default: break
                    }
                    blobs.append(b)
                }
                #expect(try await s.ingest(deks.map { .dek($0) } + blobs.map { .blob($0) }, receivedAtMs: 5).allSatisfy { $0 == .stored })
                let all = blobs.map { info($0, receivedAtMs: 5) }.sorted(by: listingOrder)
                #expect(try await allPages(s, CaptureQuery(), limit: 1000).flatMap { $0 } == all)
                for (query, expected) in [
                    (CaptureQuery(user: try UserName("alice")), all.filter { $0.user?.rawValue == "alice" }),
                    (CaptureQuery(agentID: agents[1], user: try UserName("bob")),
                     all.filter { $0.user?.rawValue == "bob" && $0.agentID == agents[1] }),
                    (CaptureQuery(kind: .screen, user: try UserName("alice")),
                     all.filter { $0.user?.rawValue == "alice" && $0.kind == .screen }),
                    (CaptureQuery(user: try UserName("carol")), []),
                ] {
                    #expect(!expected.isEmpty || query.user?.rawValue == "carol")
                    for limit in [1, 4, 1000] {
                        #expect(try await allPages(s, query, limit: limit).flatMap { $0 } == expected, "\(query) \(limit)")
                        var down = query
                        down.order = .descending
                        #expect(try await allPages(s, down, limit: limit).flatMap { $0 } == expected.reversed(), "\(down) \(limit)")
                    }
                }
                #expect(try await s.capture(blobs[0].blobID)?.user?.rawValue == "alice")
                #expect(try await s.capture(blobs[0].blobID)?.display == ":1")
                #expect(try await s.capture(blobs[2].blobID)?.user == nil)
                // The same upload again is a duplicate; the same id naming another user a conflict.
                #expect(try await s.ingest([.blob(blobs[0])], receivedAtMs: 6) == [.duplicate])
                var other = blobs[0]
                other.user = try UserName("mallory")
                #expect(try await s.ingest([.blob(other)], receivedAtMs: 6) == [.conflict])
                #expect(try await s.capture(blobs[0].blobID)?.user?.rawValue == "alice")
            }
        }
    }
}

extension StorageConformance {
    /// `AuditStore`, `counts`, `health` and `close` on every backend.
    @Suite struct AuditAndLifecycleConformance {
        @Test(arguments: Backend.testable)
        func auditAppendsAndPagesNewestFirst(_ backend: Backend) async throws {
            try await withRig(backend, "audit") { rig async throws in
                let s = rig.storage
                let before = Int64(Date().timeIntervalSince1970 * 1000) - 1
                var appended: [AuditEntry] = []
                for i in 0..<7 {
                    appended.append(try await s.appendAudit(actor: "admin-\(i % 2)", action: "agents.add",
                                                            detail: "agent host-\(i) 'quoted' \u{1b}[31m"))
                }
                let after = Int64(Date().timeIntervalSince1970 * 1000) + 1
                #expect(zip(appended, appended.dropFirst()).allSatisfy { $0.id < $1.id && $0.atMs <= $1.atMs })
                #expect(appended.allSatisfy { (before...after).contains($0.atMs) })
                #expect(appended[3].detail == "agent host-3 'quoted' \u{1b}[31m", "stored as given")

                var pages: [[AuditEntry]] = [], cursor: Int64?
                repeat {
                    let page = try await s.auditEntries(before: cursor, limit: 3)
                    pages.append(page)
                    cursor = page.count == 3 ? page.last?.id : nil
                } while cursor != nil
                #expect(pages.map(\.count) == [3, 3, 1])
                #expect(pages.flatMap { $0 } == appended.reversed())
                #expect(try await s.auditEntries(before: appended[0].id, limit: 10).isEmpty)
                #expect(try await s.auditEntries(before: nil, limit: 10_000) == appended.reversed())
                for bad in [0, 10_001] {
                    #expect(await storageError { _ = try await s.auditEntries(before: nil, limit: bad) }?.code == .invalidArgument)
                }
            }
        }

        @Test(arguments: Backend.testable)
        func healthAndClose(_ backend: Backend) async throws {
            let rig = try await Rig(backend, "lifecycle")
            let s = rig.storage
            #expect(try await s.counts() == (0, 0))
            let healthy = await s.health()
            #expect(healthy.reachable && healthy.problem == nil && healthy.backend == (backend == .sqlite ? "sqlite" : "postgresql"))
            #expect(!healthy.location.isEmpty)
            await s.close()
            await s.close()  // twice: nothing happens
            let closed = await s.health()
            #expect(!closed.reachable && closed.problem != nil)
            #expect(await storageError { _ = try await s.counts() }?.code == .unavailable)
            #expect(await storageError { _ = try await s.addAgent(agent("late")) }?.code == .unavailable)
            #expect(await storageError { _ = try await s.ingest([.dek(dek(agent("late"), time: 1))], receivedAtMs: 1) }?.code
                == .unavailable)
            #expect(await storageError { _ = try await s.authenticate(agent("late"), token: Secret("x")) }?.code == .unavailable)
            // close() ended run(): it returned without error.
            await #expect(throws: Never.self) { try await rig.runner.value }
            await rig.close()
        }

        /// `run()` returns, and the storage is closed, when its task is cancelled or its
        /// `ServiceGroup` shuts down gracefully (SIGTERM to the collector): it never keeps the
        /// owner waiting.
        @Test(arguments: Backend.testable)
        func runEndsOnCancellationAndGracefulShutdown(_ backend: Backend) async throws {
            let cancelled = try await Rig(backend, "run-cancel")
            #expect(try await cancelled.storage.counts() == (0, 0))
            cancelled.runner.cancel()
            await #expect(throws: Never.self) { try await cancelled.runner.value }
            #expect(await storageError { _ = try await cancelled.storage.counts() }?.code == .unavailable)
            await cancelled.close()

            let dir = try TempDir("custos-run-group-\(backend.rawValue)")
            defer { dir.remove() }
            let (storage, _) = try await backend.make(in: dir)
            let group = ServiceGroup(configuration: .init(services: [storage], logger: Logger(label: "test.storage.group")))
            let running = Task { try await group.run() }
            #expect(await storage.health().reachable)
            await group.triggerGracefulShutdown()
            await #expect(throws: Never.self) { try await running.value }
            #expect(await storageError { _ = try await storage.counts() }?.code == .unavailable)
        }

        /// Times outside years 1–9999 are `invalidArgument` on every backend, before anything is
        /// stored (one behaviour, though SQLite's integers could hold them); the bounds
        /// themselves, times before 1970 and odd milliseconds store and read back exactly.
        @Test(arguments: Backend.testable)
        func timesOutsideYears1To9999AreRefused(_ backend: Backend) async throws {
            try await withRig(backend, "times") { rig async throws in
                let s = rig.storage
                let first = StorageCheck.timeRangeMs.lowerBound, last = StorageCheck.timeRangeMs.upperBound
                #expect(first == -62_135_596_800_000 && last == 253_402_300_799_999, "0001-01-01 to 9999-12-31T23:59:59.999Z")
                let d = dek(agent("clock"), time: first)
                for bad in [Int64.min, first - 1, last + 1, Int64.max] {
                    #expect(await storageError { _ = try await s.ingest([.dek(d), .dek(dek(agent("clock"), time: bad))], receivedAtMs: 1) }?.code
                        == .invalidArgument, "creation time \(bad)")
                    #expect(await storageError { _ = try await s.ingest([.dek(d), .blob(blob(d, time: bad))], receivedAtMs: 1) }?.code
                        == .invalidArgument, "capture time \(bad)")
                    #expect(await storageError { _ = try await s.ingest([.dek(d)], receivedAtMs: bad) }?.code
                        == .invalidArgument, "receivedAtMs \(bad)")
                    for query in [CaptureQuery(sinceMs: bad), CaptureQuery(untilMs: bad)] {
                        #expect(await storageError { _ = try await s.captures(query, after: nil, limit: 10) }?.code
                            == .invalidArgument, "\(query)")
                    }
                    let cursor = CaptureCursor(captureTimeMs: bad, blobID: blobID(1))
                    #expect(await storageError { _ = try await s.captures(CaptureQuery(), after: cursor, limit: 10) }?.code
                        == .invalidArgument, "cursor time \(bad)")
                }
                #expect(try await s.counts() == (0, 0), "nothing of a refused batch is stored")

                let edges = [blob(d, time: first), blob(d, time: -86_400_001), blob(d, time: 1_700_000_000_999),
                             blob(d, time: last)]
                #expect(try await s.ingest([.dek(d)] + edges.map { .blob($0) }, receivedAtMs: last)
                    == Array(repeating: .stored, count: 5))
                for b in edges { #expect(try await s.capture(b.blobID) == info(b, receivedAtMs: last)) }
                #expect(try await s.dekRecords(agent: nil, after: nil, limit: 10).map(\.creationTimeMs) == [first])
                let page = try await s.captures(CaptureQuery(sinceMs: first, untilMs: last), after: nil, limit: 10)
                #expect(page.items.map(\.blobID) == edges.dropLast().map(\.blobID), "until is exclusive")
            }
        }

        /// Text holding NUL is `invalidArgument` on every backend (PostgreSQL `text` cannot store
        /// it; SQLite refuses too, for one behaviour), and nothing is stored.
        @Test(arguments: Backend.testable)
        func textWithNULIsRefused(_ backend: Backend) async throws {
            try await withRig(backend, "nul") { rig async throws in
                let s = rig.storage
                for fields in [["a\u{0}b", "x", "y"], ["a", "x\u{0}", "y"], ["a", "x", "\u{0}"]] {
                    let e = await storageError { _ = try await s.appendAudit(actor: fields[0], action: fields[1], detail: fields[2]) }
                    #expect(e?.code == .invalidArgument && e?.message.contains("NUL") == true)
                }
                for registration in [KEKRegistration(pubDatafile: "/k\u{0}.pem", publicKeyPEM: nil, privDatafile: nil, kekID: nil),
                                     KEKRegistration(pubDatafile: nil, publicKeyPEM: "PEM\u{0}", privDatafile: nil, kekID: nil),
                                     KEKRegistration(pubDatafile: "/k.pem", publicKeyPEM: nil, privDatafile: "/\u{0}", kekID: nil)] {
                    let e = await storageError { _ = try await s.registerKEK(registration) }
                    #expect(e?.code == .invalidArgument && e?.message.contains("NUL") == true)
                }
                #expect(try await s.auditEntries(before: nil, limit: 10).isEmpty)
                #expect(try await s.keks().isEmpty)
            }
        }
    }
}
