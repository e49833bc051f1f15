import CollectorStorage
@testable import CollectorStoragePostgres
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport

/// Retention with `blob-dir=` on PostgreSQL: expiry erases the expired blobs' bytes from the
/// blob files (docs/STORAGE.md "Retention", "Releasing blob bytes"). Real cluster, real files
/// read back after each step, real sealed blobs.
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"), .postgresCluster)
struct PostgresBlobReleaseTests {
    static let day: Int64 = 86_400_000
    static let now: Int64 = 1_800_000_000_000
    static let policy = Result { try RetentionPolicy(defaultDays: 2) }

    /// The references of every row that has one, by blob id hex (read before expiry deletes them).
    static func blobRefs(_ cluster: PostgresCluster, _ db: String) async throws -> [String: BlobRef] {
        let text = try await cluster.psqlAsync("SELECT blob_id || '|' || blob_ref FROM captures WHERE blob_ref IS NOT NULL", database: db)
        var refs: [String: BlobRef] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "|").map(String.init)
            refs[parts[0]] = try BlobRef(text: parts[1], context: "test")
        }
        return refs
    }

    static func count(_ cluster: PostgresCluster, _ db: String, _ sql: String) async throws -> Int {
        Int(try await cluster.psqlAsync(sql, database: db).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    /// Expired blobs' ranges read as zeros afterwards and their blocks are freed (holes); the
    /// held and the unexpired blobs read back byte for byte, at the same offsets of a file that
    /// keeps its size. Once every blob of the file expired and its writer ended, the next run
    /// deletes the file and the writer's end marker; nothing stays queued.
    @Test func expiredBytesBecomeHolesAndTheRestStaysReadable() async throws {
        let (cluster, db) = try await freshDatabase()
        let dir = try BlobDir()
        defer { dir.remove() }
        let (oldDEK, old) = try sealedBatch(agent: "expiring", sizes: [70_000, 100_000, 100], timeMs: Self.now - 10 * Self.day)
        let (newDEK, fresh) = try sealedBatch(agent: "expiring", sizes: [80_000, 100], timeMs: Self.now - Self.day / 2)
        let (heldDEK, held) = try sealedBatch(agent: "held", sizes: [90_000], timeMs: Self.now - 10 * Self.day)
        let policy = try Self.policy.get()
        let refs = try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path,
                                                 blobFileQuietPeriod: .zero) { s in
            let batch: [IngestItem] = [.dek(oldDEK)] + old.map { .blob($0) } + [.dek(newDEK)] + fresh.map { .blob($0) }
                + [.dek(heldDEK)] + held.map { .blob($0) }
            #expect(try await s.ingest(batch, receivedAtMs: Self.now).allSatisfy { $0 == .stored })
            let refs = try await Self.blobRefs(cluster, db)
            #expect(refs.count == 4)
            let file = try #require(dir.blobFiles().first)
            let (size, allocated) = (dir.size(of: file), dir.allocated(file))
            let hold = try await s.addHold(agent: try AgentID("held"), untilMs: Self.now + Self.day, reason: "case 1", createdBy: "t")

            let outcome = try await s.expire(policy: policy, nowMs: Self.now, limit: 100)
            let expired = old.filter { refs[$0.blobID.hex] != nil }
            let erased = expired.reduce(Int64(0)) { $0 + refs[$1.blobID.hex]!.size }
            #expect(outcome.captures == 3 && outcome.released.ranges == 2 && outcome.released.bytes == erased, "\(outcome)")
            #expect(outcome.released.zeroed == 0 && outcome.released.pending == 0 && outcome.released.problem == nil, "\(outcome)")
            #expect(outcome.description.contains("blob files: 2 ranges, \(erased) bytes erased, 0 files deleted"), "\(outcome)")
            for b in expired {
                let ref = refs[b.blobID.hex]!
                #expect(try dir.bytes(ref) == Data(count: Int(ref.size)), "blob \(b.blobID): its bytes are still in \(file)")
                #expect(try await s.blob(b.blobID) == nil)
            }
            #expect(dir.size(of: file) == size, "the file keeps its size (every other blob its offset)")
            #expect(allocated - dir.allocated(file) >= erased - 4 * 4096, "holes: \(allocated) → \(dir.allocated(file)) bytes allocated")
            for b in fresh + held {
                #expect(try await s.blob(b.blobID) == b.bytes)
                if let ref = refs[b.blobID.hex] { #expect(try dir.bytes(ref) == b.bytes) }
            }
            // The file still holds live blobs: it stays, and nothing waits in the queue.
            #expect(try await Self.count(cluster, db, "SELECT count(*) FROM blob_release") == 0)

            // Everything expires (the hold removed, a week later). The file no longer holds a
            // live byte, but this instance still appends to it: kept, its ranges remembered.
            _ = try await s.removeHold(id: hold.id, removedBy: "t")
            let all = try await s.expire(policy: policy, nowMs: Self.now + 7 * Self.day, limit: 100)
            #expect(all.captures == 3 && all.released.ranges == 2 && all.released.filesDeleted == 0, "\(all)")
            #expect(try dir.contents(file).allSatisfy { $0 == 0 }, "every byte of the file is erased")
            #expect(dir.exists(file))
            #expect(try await Self.count(cluster, db, "SELECT count(*) FROM blob_release WHERE punched_at IS NOT NULL") == 2)
            return refs
        }
        // Its writer ended (its end marker); the next run, by another instance, deletes the file.
        let writer = try #require(refs.values.first?.instance)
        #expect(dir.exists(SharedBlobDirectory.endedName(instance: writer)))
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path, blobFileQuietPeriod: .zero) { t in
            let next = try await t.expire(policy: policy, nowMs: Self.now + 7 * Self.day, limit: 100)
            #expect(next.captures == 0 && next.released.filesDeleted == 1 && next.released.problem == nil, "\(next)")
        }
        #expect(dir.blobFiles().isEmpty && !dir.exists(SharedBlobDirectory.endedName(instance: writer)))
        #expect(try await Self.count(cluster, db, "SELECT count(*) FROM blob_release") == 0)
    }

    /// A crash between the rows' delete and the erasure (phase 1 alone: the rows are gone, the
    /// ranges queued, the bytes still in the file), and one between erasing and recording it
    /// (a range erased, its queue row not marked): the next run, by another instance after a
    /// restart, finishes both; erasing twice is harmless.
    @Test func aCrashBetweenTheStepsIsFinishedByTheNextRun() async throws {
        let (cluster, db) = try await freshDatabase()
        let dir = try BlobDir()
        defer { dir.remove() }
        let (oldDEK, old) = try sealedBatch(agent: "crash", sizes: [70_000, 60_000], timeMs: Self.now - 10 * Self.day)
        let (newDEK, fresh) = try sealedBatch(agent: "crash", sizes: [50_000], timeMs: Self.now)
        let policy = try Self.policy.get()
        let refs = try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path) { s in
            _ = try await s.ingest([.dek(oldDEK)] + old.map { .blob($0) } + [.dek(newDEK)] + fresh.map { .blob($0) },
                                   receivedAtMs: Self.now)
            let refs = try await Self.blobRefs(cluster, db)
            let rows = try await s.expireRows(policy: policy, nowMs: Self.now, limit: 100)
            #expect(rows.captures == 2 && rows.released == ExpiryOutcome.Released())
            #expect(try await Self.count(cluster, db, "SELECT count(*) FROM blob_release WHERE punched_at IS NULL") == 2)
            for b in old { #expect(try dir.bytes(refs[b.blobID.hex]!) == b.bytes, "the state a crash leaves: bytes still there") }
            // The second crash: one range erased, the queue not told.
            let store = try #require(try await s.sharedBlobDirectory())
            let report = try await store.erase([refs[old[0].blobID.hex]!])
            #expect(report.erased.count == 1 && report.problems.isEmpty)
            return refs
        }
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path) { t in
            let next = try await t.expire(policy: policy, nowMs: Self.now, limit: 100)
            #expect(next.captures == 0 && next.released.ranges == 2 && next.released.pending == 0 && next.released.problem == nil,
                    "\(next)")
            for b in old {
                let ref = refs[b.blobID.hex]!
                #expect(try dir.bytes(ref) == Data(count: Int(ref.size)))
            }
            #expect(try await t.blob(fresh[0].blobID) == fresh[0].bytes)
        }
        #expect(try await Self.count(cluster, db, "SELECT count(*) FROM blob_release") == 0, "the file holds a live blob: done")
    }

    /// Another instance's files: instance B erases A's expired ranges while A still appends to
    /// the same file (A's next blob lands after them and reads back; the erased ranges stay
    /// zero), and once A ended, B deletes A's file that no row points into any more.
    @Test func anotherInstancesFilesAreErasedWhileItAppendsAndDeletedOnceItEnded() async throws {
        let (cluster, db) = try await freshDatabase()
        let dir = try BlobDir()
        defer { dir.remove() }
        let (dekA, oldA) = try sealedBatch(agent: "a", sizes: [70_000, 40_000], timeMs: Self.now - 10 * Self.day)
        let (dekA2, laterA) = try sealedBatch(agent: "a", sizes: [45_000], timeMs: Self.now - Self.day)
        let (dekB, freshB) = try sealedBatch(agent: "b", sizes: [50_000], timeMs: Self.now)
        let policy = try Self.policy.get()
        let (instanceA, fileA) = try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path) { a in
            _ = try await a.ingest([.dek(dekA)] + oldA.map { .blob($0) }, receivedAtMs: Self.now)
            let fileA = SharedBlobDirectory.fileName(instance: a.blobInstance, number: 1)
            let refs = try await Self.blobRefs(cluster, db)
            try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path, blobFileQuietPeriod: .zero) { b in
                _ = try await b.ingest([.dek(dekB)] + freshB.map { .blob($0) }, receivedAtMs: Self.now)
                let outcome = try await b.expire(policy: policy, nowMs: Self.now, limit: 100)
                #expect(outcome.captures == 2 && outcome.released.ranges == 2 && outcome.released.filesDeleted == 0, "\(outcome)")
                #expect(try dir.contents(fileA).allSatisfy { $0 == 0 }, "A's expired bytes erased by B")
                // A appends again: after the erased ranges, in the same file, readable.
                let size = dir.size(of: fileA)
                #expect(try await a.ingest([.dek(dekA2)] + laterA.map { .blob($0) }, receivedAtMs: Self.now) == [.stored, .stored])
                let later = try #require(try await Self.blobRefs(cluster, db)[laterA[0].blobID.hex])
                #expect(later.fileName == fileA && later.offset == size)
                #expect(try await b.blob(laterA[0].blobID) == laterA[0].bytes)
                for b in oldA {
                    let ref = refs[b.blobID.hex]!
                    #expect(try dir.bytes(ref) == Data(count: Int(ref.size)))
                }
                // A's file holds a live blob again: the next run is done with its queue rows.
                #expect(try await Self.count(cluster, db, "SELECT count(*) FROM blob_release") == 2)
                let again = try await b.expire(policy: policy, nowMs: Self.now, limit: 100)
                #expect(again.captures == 0 && again.released.ranges == 0, "\(again)")
                #expect(try await Self.count(cluster, db, "SELECT count(*) FROM blob_release") == 0)
            }
            return (a.blobInstance, fileA)
        }
        // A ended. Its last blob expires; B (a new instance) erases it and deletes A's file and
        // end marker; B's own file and blob stay.
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path, blobFileQuietPeriod: .zero) { b in
            let outcome = try await b.expire(policy: policy, nowMs: Self.now + 2 * Self.day, limit: 100)
            #expect(outcome.captures == 1 && outcome.released.ranges == 1 && outcome.released.filesDeleted == 1, "\(outcome)")
            #expect(!dir.exists(fileA) && !dir.exists(SharedBlobDirectory.endedName(instance: instanceA)))
            #expect(try await b.blob(freshB[0].blobID) == freshB[0].bytes)
        }
        #expect(dir.blobFiles().count == 1 && !dir.blobFiles()[0].hasPrefix(instanceA))
    }

    /// Ranges wait, never erased in the wrong place: a collector without `blob-dir=` deletes the
    /// rows and queues the ranges (saying why they wait); one whose directory is another
    /// database's (its marker) touches none of its files; the right directory erases them.
    @Test func rangesWaitWithoutTheirDirectoryAndAreNeverErasedElsewhere() async throws {
        let (cluster, db) = try await freshDatabase()
        let dir = try BlobDir()
        defer { dir.remove() }
        let (dek, old) = try sealedBatch(agent: "waits", sizes: [70_000, 80_000], timeMs: Self.now - 10 * Self.day)
        let policy = try Self.policy.get()
        let refs = try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path) { s in
            _ = try await s.ingest([.dek(dek)] + old.map { .blob($0) }, receivedAtMs: Self.now)
            return try await Self.blobRefs(cluster, db)
        }
        let file = try #require(dir.blobFiles().first)
        let original = try dir.contents(file)
        try await withPostgresStorage(cluster: cluster, database: db) { s in
            let outcome = try await s.expire(policy: policy, nowMs: Self.now, limit: 100)
            #expect(outcome.captures == 2 && outcome.released.ranges == 0 && outcome.released.pending == 2, "\(outcome)")
            #expect(outcome.released.problem?.contains("no blob directory (blob-dir=)") == true, "\(outcome)")
        }
        // A directory of another database holding a file of the same name: left alone.
        let foreign = dir.path + "/foreign"
        try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        try Data("0123456789abcdef0123456789abcdef\n".utf8).write(to: URL(fileURLWithPath: foreign + "/.custos-blobs"))
        try original.write(to: URL(fileURLWithPath: foreign + "/" + file))
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: foreign) { s in
            let outcome = try await s.expire(policy: policy, nowMs: Self.now, limit: 100)
            #expect(outcome.released.ranges == 0 && outcome.released.pending == 2, "\(outcome)")
            #expect(outcome.released.problem?.contains("another database") == true, "\(outcome)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: foreign + "/" + file)) == original)
        #expect(try dir.contents(file) == original)
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path) { s in
            let outcome = try await s.expire(policy: policy, nowMs: Self.now, limit: 100)
            #expect(outcome.released.ranges == 2 && outcome.released.pending == 0 && outcome.released.problem == nil, "\(outcome)")
        }
        for ref in refs.values { #expect(try dir.bytes(ref) == Data(count: Int(ref.size))) }
    }

    /// The erasure itself on real files, without a database: zeros written where holes are not
    /// punched (the path a file system without hole punching takes), a hole punched otherwise;
    /// neighbours untouched, size kept; a range past a file cut short erases what is there and
    /// never extends the file; after ``SharedBlobDirectory/finish()`` nothing is appended.
    @Test func erasingWritesZerosOrPunchesAndNeverTouchesNeighbours() async throws {
        let dir = try BlobDir()
        defer { dir.remove() }
        let store = try SharedBlobDirectory(directory: dir.path, instance: SharedBlobDirectory.newInstanceID(),
                                            storeID: "0123456789abcdef0123456789abcdef")
        let blobs = [randomBytes(40_000), randomBytes(50_000), randomBytes(60_000)]
        let refs = try await store.put(blobs, mayCreateMarker: true)
        let file = refs[0].fileName
        let (size, allocated) = (dir.size(of: file), dir.allocated(file))

        let zeroed = try await store.erase([refs[1]], zeroOnly: true)
        #expect(zeroed.erased == [refs[1]] && zeroed.zeroed == 1 && zeroed.bytes == refs[1].size && zeroed.problems.isEmpty)
        #expect(try dir.bytes(refs[1]) == Data(count: 50_000))
        #expect(try dir.bytes(refs[0]) == blobs[0] && dir.bytes(refs[2]) == blobs[2])
        #expect(dir.size(of: file) == size && dir.allocated(file) == allocated, "zeros written in place, nothing freed")

        let punched = try await store.erase([refs[0]])
        #expect(punched.zeroed == 0 && punched.bytes == refs[0].size)
        #expect(try dir.bytes(refs[0]) == Data(count: 40_000) && dir.bytes(refs[2]) == blobs[2])
        #expect(dir.allocated(file) < allocated, "a hole: blocks freed")

        // A file cut short (damaged): only what is there is erased; the file is not extended.
        #expect(truncate(dir.path + "/" + file, off_t(refs[2].offset + 10)) == 0)
        let short = try await store.erase([refs[2]])
        #expect(short.erased == [refs[2]] && short.bytes == 10)
        #expect(dir.size(of: file) == refs[2].offset + 10)

        await store.finish()
        #expect(dir.exists(SharedBlobDirectory.endedName(instance: store.instance)))
        let refused = await storageError { _ = try await store.put([randomBytes(40_000)]) }
        expectError(refused, .unavailable, "closed")
    }
}

func randomBytes(_ n: Int) -> Data {
    var g = SystemRandomNumberGenerator()
    return Data((0..<n).map { _ in UInt8.random(in: 0...255, using: &g) })
}
