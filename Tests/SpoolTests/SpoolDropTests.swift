import Foundation
import Spool
import Testing
import TestSupport

/// Captures not kept are counted by reason, persistently, where `status` reads them.
@Suite struct SpoolDropTests {
    /// A record over the per-record limit of a 1 MiB spool is refused `too-large` and counted
    /// under `dropped["too-large"]` with its bytes; the agent's own reasons are counted too; the
    /// counts survive a close and are read by a read-only open (as `custos-agent status` does).
    @Test func tooLargeAndAgentDropsAreCountedAndSurviveRestart() throws {
        let tmp = try TempDir("spool-drop")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let cap: Int64 = 1 << 20
        let limit = Spool.largestRecord(maxBytes: cap)
        #expect(limit > 50_000 && limit < 200_000, "largest record under 1 MiB: \(limit)")
        let spool = try Spool(directory: tmp.path, maxBytes: cap, logger: logger)
        // Exactly at the limit is kept; one byte more is refused.
        try spool.enqueue(entry(1, .screen, bytes: limit))
        for i in 2...4 {
            do {
                try spool.enqueue(entry(i, .screen, bytes: limit + 1))
                Issue.record("a record over the limit was kept")
            } catch let error as SpoolError {
                #expect(error.code == .tooLarge)
            }
        }
        spool.countDropped(.sealingPaused)
        spool.countDropped(.sealingPaused)
        spool.countDropped(.captureError)
        var stats = try spool.stats()
        #expect(stats.dropped[.tooLarge] == SpoolCount(count: 3, bytes: 3 * Int64(limit + 1)))
        #expect(stats.dropped[.sealingPaused]?.count == 2)
        #expect(stats.dropped[.captureError]?.count == 1)
        #expect(stats.totalDropped.count == 6)
        #expect(stats.spooled[.screen]?.count == 1)
        try spool.close()

        let reader = try Spool.openReadOnly(directory: tmp.path)
        stats = try reader.stats()
        #expect(stats.dropped[.tooLarge]?.count == 3)
        #expect(stats.dropped[.sealingPaused]?.count == 2)
        #expect(stats.totalDropped.count == 6)
        try reader.close()
    }

    /// A refusal because the spool is full is a drop too (reason `full`).
    @Test func fullRefusalIsCountedAsDropped() throws {
        let tmp = try TempDir("spool-drop-full")
        defer { tmp.remove() }
        let (logger, _) = memoryLogger()
        let cap: Int64 = 1 << 20
        let spool = try Spool(directory: tmp.path, maxBytes: cap, logger: logger)
        // Keystrokes fill the spool; a screen frame may not evict them.
        var n = 1
        var refused = 0
        while n < 200 {
            do { try spool.enqueue(entry(n, .keystrokes, bytes: 40_000)) } catch { break }
            n += 1
        }
        do { try spool.enqueue(entry(1000, .screen, bytes: 40_000)) } catch let e as SpoolError where e.code == .full { refused += 1 }
        #expect(refused == 1)
        #expect(try spool.stats().dropped[.full]?.count == 1)
        try spool.close()
        #expect(try Spool.openReadOnly(directory: tmp.path).stats().dropped[.full]?.count == 1)
    }

    @Test func dropReasonRawValuesAreCounterSafe() {
        #expect(DropReason(rawValue: "too-large") == .tooLarge)
        #expect(DropReason(rawValue: "a.b") == nil)
        #expect(DropReason(rawValue: "") == nil)
        #expect(DropReason(rawValue: "X") == nil)
    }
}
