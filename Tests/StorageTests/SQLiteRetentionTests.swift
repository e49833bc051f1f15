import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport

/// What SQLite's expiry does with blob files (RetentionConformance covers the rest on every backend).
@Suite struct SQLiteRetentionTests {
    static let day = RetentionPolicy.dayMs
    static let now: Int64 = 1_767_225_600_000

    /// Disk blocks (512-byte units) of a file.
    static func blocks(_ path: String) throws -> Int64 {
        var st = stat()
        try #require(stat(path, &st) == 0, "stat \(path)")
        return Int64(st.st_blocks)
    }

    /// Expired blobs in a blob file still holding live ones: their bytes are punched out (the
    /// file keeps its size and the live blobs read back byte for byte); a blob file no row
    /// points to any more is deleted, and the next large blob starts a new one. Inline blobs
    /// go with their rows. Nothing referenced is removed.
    @Test func expiryReleasesBlobFileBytesAndDeletesUnreferencedFiles() async throws {
        let dir = try TempDir("custos-sqlite-expire")
        defer { dir.remove() }
        let s = try SQLiteStorage(path: dir.file("collector.db"))
        let d = dek(agent("a"), time: Self.now - 40 * Self.day)
        // Back to back in file 1: old, live, old, live (64 KiB each), plus small inline ones.
        let large = [40, 1, 40, 1].map { age in blob(d, time: Self.now - Int64(age) * Self.day, size: 64 * 1024) }
        let small = [40, 1].map { age in blob(d, kind: .keystrokes, time: Self.now - Int64(age) * Self.day, size: 300) }
        #expect(try await s.ingest([.dek(d)] + (large + small).map { .blob($0) }, receivedAtMs: Self.now).count == 7)
        let file1 = s.blobDirectory + "/00000001.blobs"
        let size1 = try FileManager.default.attributesOfItem(atPath: file1)[.size] as? Int
        let blocksBefore = try Self.blocks(file1)

        let policy = try RetentionPolicy(defaultDays: 30)
        let outcome = try await expireAll(s, policy, nowMs: Self.now, limit: 10)
        #expect(outcome.removed == [.screen: .init(captures: 2, bytes: 2 * 64 * 1024), .keystrokes: .init(captures: 1, bytes: 300)])
        #expect(try FileManager.default.attributesOfItem(atPath: file1)[.size] as? Int == size1, "the file keeps its size")
        #expect(try Self.blocks(file1) <= blocksBefore - 2 * 64 * 1024 / 512, "the expired ranges are punched out")
        for b in [large[1], large[3], small[1]] { #expect(try await s.blob(b.blobID) == b.bytes) }
        for b in [large[0], large[2], small[0]] { #expect(try await s.blob(b.blobID) == nil) }

        // Everything left expires: file 1 is referenced by nothing and goes.
        let all = try await expireAll(s, policy, nowMs: Self.now + 40 * Self.day, limit: 10)
        #expect(all.captures == 3)
        #expect(!FileManager.default.fileExists(atPath: file1))
        #expect(FileManager.default.fileExists(atPath: s.blobDirectory + "/.custos-blobs"), "the marker stays")
        #expect(try await s.counts() == (0, 1), "DEK records stay")
        // A new large blob is stored and read back (the appender starts a file again).
        let next = blob(d, time: Self.now + 40 * Self.day, size: 50_000)
        #expect(try await s.ingest([.blob(next)], receivedAtMs: Self.now) == [.stored])
        #expect(try await s.blob(next.blobID) == next.bytes)
        await s.close()
    }
}
