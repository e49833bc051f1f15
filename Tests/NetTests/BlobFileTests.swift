import Collector
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport
import Spool
import Transport
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// Large sealed blobs are stored once in append-only blob files beside the collector database
/// (`collector.db.blobs/NNNNNNNN.blobs`), small ones inline in `captures.blob`.
@Suite struct BlobFileTests {
    struct Placement: Equatable {
        var inlineBytes: Int
        var file: Int64?
        var offset: Int64?
    }

    /// `captures` columns of each blob, by blob id (lowercase hex), read with the sqlite3 CLI.
    func placements(_ db: String) throws -> [String: Placement] {
        let out = try runChecked(["sqlite3", "-cmd", ".timeout 10000", db,
                                  "select blob_id, length(blob), ifnull(blob_file, ''), ifnull(blob_offset, '') from captures"])
        var result: [String: Placement] = [:]
        for line in out.split(separator: "\n") {
            let f = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            result[f[0]] = Placement(inlineBytes: Int(f[1])!, file: Int64(f[2]), offset: Int64(f[3]))
        }
        return result
    }

    @Test func largeBlobsGoToBlobFilesSmallOnesStayInline() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("blobfiles")
        defer { Task { await f.stop() } }
        let threshold = SQLiteStorage.blobFileMinBytes
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: f.kekPublic), agentID: f.agentID)
        // Plaintext sizes around the threshold (a sealed blob adds its header and tag), plus a frame-sized one.
        var records: [EnvelopeRecord] = [.dekRecord(session.record)]
        for (i, size) in [2_000, threshold - 200, threshold, 256 * 1024, 3 * threshold].enumerated() {
            let plaintext = randomData(size)
            records.append(.blob(try session.seal(plaintext, kind: .screen, captureTimeMs: Int64(i))))
        }
        let client = try f.client()
        let first = try await client.upload(stream(records))
        #expect(first.results.allSatisfy { $0.status == .stored })

        let store = try #require(f.collector.storage as? SQLiteStorage)
        let where_ = try placements(store.path)
        var expectedOffset: Int64 = 0
        for record in records.dropFirst() {
            let id = wireHex(record.id), size = record.serialized.count
            let p = try #require(where_[id])
            if size >= threshold {
                #expect(p == Placement(inlineBytes: 0, file: 1, offset: expectedOffset), "blob of \(size) bytes")
                expectedOffset += Int64(size)
            } else {
                #expect(p == Placement(inlineBytes: size, file: nil, offset: nil), "blob of \(size) bytes")
            }
            #expect(try await store.blob(record.blobID) == record.serialized)
        }
        #expect(expectedOffset > 0)
        // Written once: the file holds exactly the large blobs, back to back; modes 0700 / 0600.
        let file = store.blobDirectory + "/00000001.blobs"
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect((attributes[.size] as? Int).map(Int64.init) == expectedOffset)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect((try FileManager.default.attributesOfItem(atPath: store.blobDirectory)[.posixPermissions] as? Int) == 0o700)

        // Idempotent: the same records again are duplicates and nothing is appended.
        let again = try await client.upload(stream(records))
        #expect(again.results.allSatisfy { $0.status == .duplicate })
        #expect((try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int).map(Int64.init) == expectedOffset)

        // Same id, other bytes (last ciphertext byte flipped: the header still parses): a conflict.
        var forged = records[4].serialized
        forged[forged.count - 1] ^= 0x01
        let conflict = try await client.upload(forged)
        #expect(conflict.results.first?.reason == .conflict)

        // A crash between an append and its commit leaves unreferenced bytes at the end of the
        // file; later blobs go after them.
        let orphan = try #require(FileHandle(forWritingAtPath: file))
        try orphan.seekToEnd()
        try orphan.write(contentsOf: Data(repeating: 0xEE, count: 1_000))
        try orphan.close()
        expectedOffset += 1_000

        // Another store on the same file (the admin CLI, a restarted collector) reads the blobs
        // and a later batch appends after them.
        let reopened = try SQLiteStorage(path: store.path)
        #expect(try await reopened.blob(records[4].blobID) == records[4].serialized)
        let more = try session.seal(Data(count: 2 * threshold), kind: .screen, captureTimeMs: 99)
        #expect(try await client.upload(more.serialized).results.first?.status == .stored)
        #expect(try placements(store.path)[more.header.blobID.hex]?.offset == expectedOffset)
        #expect(try await reopened.blob(more.header.blobID) == more.serialized)
        await reopened.close()
        await client.close()
    }

    /// A blob file that holds 1 GiB is not appended to: the next batch opens the next number.
    @Test func aFullBlobFileRotatesToTheNextNumber() async throws {
        let f = try await NetFixture.start("blobfile-rotate")
        defer { Task { await f.stop() } }
        let (records, _) = try f.records(count: 2, size: 100_000)
        let client = try f.client()
        #expect(try await client.upload(stream(Array(records.prefix(2)))).results.allSatisfy { $0.status == .stored })
        let store = try #require(f.collector.storage as? SQLiteStorage)
        let first = store.blobDirectory + "/00000001.blobs"
        #expect(truncate(first, off_t(1 << 30)) == 0)  // sparse: as if 1 GiB had been written
        #expect(try await client.upload(records[2].serialized).results.first?.status == .stored)
        let second = store.blobDirectory + "/00000002.blobs"
        #expect((try FileManager.default.attributesOfItem(atPath: second)[.size] as? Int) == records[2].serialized.count)
        #expect(try await store.blob(records[1].blobID) == records[1].serialized)
        #expect(try await store.blob(records[2].blobID) == records[2].serialized)
        await client.close()
    }

    /// A storage failure every agent keeps hitting is logged once at error level, and its end
    /// once; the agents get 503 with `Retry-After` meanwhile (nothing acknowledged, so they keep
    /// their records), and health says `storage-failing`.
    @Test func aRepeatedStorageFailureIsLoggedOnce() async throws {
        let f = try await NetFixture.start("blobfile-log")
        defer { Task { await f.stop() } }
        let (records, _) = try f.records(count: 5, size: 100_000)
        let client = try f.client()
        #expect(try await client.upload(stream(Array(records.prefix(2)))).results.allSatisfy { $0.status == .stored })
        let store = try #require(f.collector.storage as? SQLiteStorage)
        let aside = f.dir.file("blobs-aside")
        try FileManager.default.moveItem(atPath: store.blobDirectory, toPath: aside)
        for record in records[2...4] {
            await #expect {
                _ = try await client.upload(record.serialized)
            } throws: { error in
                let e = error as? TransportError
                return e?.httpStatus == 503 && e?.retryAfter == .seconds(5)
            }
        }
        #expect(f.logs.count("storing an upload failed") == 1)
        #expect(try await client.health().status == "storage-failing")
        try FileManager.default.moveItem(atPath: aside, toPath: store.blobDirectory)
        #expect(try await client.upload(stream(Array(records[2...4]))).results.allSatisfy { $0.status == .stored })
        #expect(f.logs.count("storing uploads works again") == 1)
        #expect(f.logs.contains("repeats_not_logged=2"))
        #expect(try await client.health().status == "ok")
        await client.close()
    }

    @Test func aTruncatedBlobFileIsAClearErrorNamingTheFile() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("blobfile-cut")
        defer { Task { await f.stop() } }
        let (records, _) = try f.records(count: 2, size: 100_000)
        #expect(try await f.client().upload(stream(records)).results.allSatisfy { $0.status == .stored })
        let store = try #require(f.collector.storage as? SQLiteStorage)
        let file = store.blobDirectory + "/00000001.blobs"
        #expect(truncate(file, off_t(records[1].serialized.count + 10)) == 0)
        #expect(try await store.blob(records[1].blobID) == records[1].serialized)
        do {
            _ = try await store.blob(records[2].blobID)
            Issue.record("reading a blob past the end of its file did not fail")
        } catch {
            #expect(error.code == .corrupt)
            #expect(error.message.contains(file) && error.message.contains("ends at byte"), "\(error)")
        }
        // An edited row asking for more than the file holds (or a negative offset) is refused
        // before anything is allocated.
        for (column, value) in [("size", "1000000000000"), ("blob_offset", "-5")] {
            let id = wireHex(records[1].id)
            try runChecked(["sqlite3", "-cmd", ".timeout 10000", store.path,
                            "update captures set \(column) = \(value) where blob_id = '\(id)'"])
            do {
                _ = try await store.blob(records[1].blobID)
                Issue.record("a row with \(column) = \(value) was read")
            } catch {
                #expect(error.message.contains(file) && error.message.contains("ends at byte"), "\(error)")
            }
            try runChecked(["sqlite3", "-cmd", ".timeout 10000", store.path,
                            "update captures set size = \(records[1].serialized.count), blob_offset = 0 where blob_id = '\(id)'"])
        }
        #expect(try await store.blob(records[1].blobID) == records[1].serialized)
        try FileManager.default.removeItem(atPath: file)
        do {
            _ = try await store.blob(records[1].blobID)
            Issue.record("reading a blob from a missing file did not fail")
        } catch {
            #expect(error.message.contains(file) && error.message.contains("No such file"), "\(error)")
        }
    }

    /// On a full filesystem a batch fails as a whole with a storage error naming the blob file
    /// (retryable for the agent), the partial append is cut off again, and everything stored
    /// before still reads back.
    @Test(.enabled(if: canMountTmpfs, "needs root to mount a tmpfs")) func diskFullRollsBackTheAppend() async throws {
        let fs = try SmallTmpfs("collector-enospc", size: "3m")
        defer { fs.unmount() }
        let mountPoint = fs.path
        let store = try SQLiteStorage(path: mountPoint + "/collector.db")
        defer { Task { await store.close() } }
        let kek = try KEKPublicKey(pemFile: try sharedMaterial.get().kek.publicKey)
        let session = try DEKSession(kek: kek, agentID: "full-disk")
        _ = try await store.ingest([ingestItem(session.record)], receivedAtMs: 1)
        func item(_ b: SealedBlob) -> IngestItem { ingestItem(b) }
        var stored: [SealedBlob] = []
        var failure: StorageError?
        for i in 0..<40 where failure == nil {
            let batch = try (0..<2).map { j in
                try session.seal(randomData(200_000), kind: .screen,
                                 captureTimeMs: Int64(i * 2 + j))
            }
            do {
                let outcomes = try await store.ingest(batch.map(item), receivedAtMs: 2)
                #expect(outcomes == [.stored, .stored])
                stored += batch
            } catch {
                failure = error
            }
        }
        let error = try #require(failure, "3 MiB filled without a storage error")
        #expect(error.code == .unavailable)
        #expect(["No space left", "enough space", "full"].contains { error.message.contains($0) }, "\(error)")
        #expect(stored.count >= 2)
        // The file holds the committed blobs and at most the failed batch's bytes: cut off when the
        // failure came before COMMIT, left unreferenced when SQLite's COMMIT itself hit the full disk.
        let size = try #require(try FileManager.default.attributesOfItem(atPath: store.blobDirectory + "/00000001.blobs")[.size] as? Int)
        let referenced = stored.reduce(0) { $0 + $1.serialized.count }
        #expect(size >= referenced && size <= referenced + 2 * 200_200, "file \(size) bytes, referenced \(referenced)")
        for b in stored { #expect(try await store.blob(b.header.blobID) == b.serialized) }
        #expect(try await store.counts().captures == stored.count)
        #expect(try runChecked(["sqlite3", mountPoint + "/collector.db", "pragma integrity_check"])
            .trimmingCharacters(in: .whitespacesAndNewlines) == "ok")
    }
}

@Suite struct CollectorCrashTests {
    /// `kill -9` of the `custos-collector` executable while batches of large blobs are being
    /// stored, then a restart on the same database: every blob arrives exactly once and reads back
    /// intact, and the database passes `integrity_check`. (Bytes of a batch cut off between its
    /// blob-file append and its commit may stay in the file, unreferenced.)
    @Test func killedCollectorLosesAndDuplicatesNothing() async throws {
        try requireTool("sqlite3")
        let binary = try builtProduct("custos-collector")
        let dir = try TempDir("custos-collector-kill")
        defer { dir.remove() }
        let (pki, kek) = try sharedMaterial.get()
        let port = try freeLocalPort()
        try writeCollectorConfig(dir.file("collector.cfg"), pki: pki, listen: "127.0.0.1:\(port)")
        let db = dir.file("collector.db")
        let store = try SQLiteStorage(path: db)
        defer { Task { await store.close() } }
        let token = try await store.addAgent(try AgentID("kill-agent")).revealed
        _ = try await store.registerKEK(pathOnlyKEK(kek.publicKey))

        let session = try DEKSession(kek: try KEKPublicKey(pemFile: kek.publicKey), agentID: "kill-agent")
        var records: [EnvelopeRecord] = [.dekRecord(session.record)]
        for i in 0..<600 {
            let p = randomData(60_000)
            records.append(.blob(try session.seal(p, kind: .screen, captureTimeMs: Int64(i))))
        }
        let logs = LogCapture()
        let spool = try Spool(directory: dir.file("spool"), maxBytes: 256 << 20, logger: logs.logger("spool"))
        _ = try UploaderTests.spool(records, into: spool)
        let client = try CollectorClient(configuration: testTransport(
            serverURL: "https://127.0.0.1:\(port)", agentID: "kill-agent", agentToken: token,
            pins: [try pki.pin("leaf")], caFile: nil), logger: logs.logger("transport"))
        let uploader = Uploader(queue: spool, client: client,
                                configuration: .init(maxBatchItems: 16, maxBatchBytes: 1 << 20, retryableRefusalDelay: .zero),
                                logger: logs.logger("uploader"))

        func startCollector(_ n: Int) async throws -> BackgroundProcess {
            let p = try BackgroundProcess(binary, ["--config", dir.file("collector.cfg")], logPath: dir.file("collector-\(n).log"))
            for _ in 0..<100 {
                if (try? await client.health()) != nil { return p }
                try await Task.sleep(for: .milliseconds(100))
            }
            throw TestSupportError("custos-collector did not come up: \(p.log)")
        }

        let first = try await startCollector(1)
        let uploading = Task {
            for _ in 0..<100 where (try? spool.stats().totalSpooled.count) ?? 0 > 0 {
                do { _ = try await uploader.uploadOnce() } catch { break }
            }
        }
        // Kill it once some batches are stored, while the rest are in flight.
        let sawProgress = try await waitUntil(timeout: 60, every: .milliseconds(20)) { try await store.counts().captures >= 16 }
        first.send(SIGKILL)
        #expect(first.waitExit(timeout: 10) != nil)
        await uploading.value
        let storedAtKill = try await store.counts().captures
        try #require(sawProgress && storedAtKill < 600, "the kill came too late to test anything (\(storedAtKill) stored)")

        let second = try await startCollector(2)
        defer { second.send(SIGTERM); _ = second.waitExit(timeout: 10) }
        for _ in 0..<200 where try spool.stats().totalSpooled.count > 0 {
            do { _ = try await uploader.uploadOnce() } catch { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(try spool.stats().totalSpooled.count == 0)
        #expect(try await store.counts() == (600, 1))
        for record in records.dropFirst() {
            #expect(try await store.blob(record.blobID) == record.serialized)
        }
        #expect(try runChecked(["sqlite3", "-cmd", ".timeout 10000", db, "pragma integrity_check"])
            .trimmingCharacters(in: .whitespacesAndNewlines) == "ok")
        let referenced = records.dropFirst().reduce(0) { $0 + $1.serialized.count }
        let onDisk = try FileManager.default.contentsOfDirectory(atPath: store.blobDirectory).reduce(0) {
            $0 + ((try FileManager.default.attributesOfItem(atPath: store.blobDirectory + "/" + $1)[.size] as? Int) ?? 0)
        }
        #expect(onDisk >= referenced)
        print("collector killed with \(storedAtKill) of 600 blobs stored; blob files hold \(onDisk) bytes, \(onDisk - referenced) unreferenced")
        await client.close()
    }
}

/// Damage around blob files (found in review): nothing is ever written over a referenced byte,
/// an unreadable stored copy is repaired by the agent's re-sent one, and files that are not
/// regular files in a private directory are never written.
@Suite struct BlobFileDamageTests {
    /// A store in a fresh temp dir, with a DEK session whose record is stored already.
    struct Rig {
        let dir: TempDir
        let store: SQLiteStorage
        let session: DEKSession

        init(_ name: String, databaseName: String = "collector.db") async throws {
            dir = try TempDir(name)
            store = try SQLiteStorage(path: dir.file(databaseName))
            session = try DEKSession(kek: try KEKPublicKey(pemFile: try sharedMaterial.get().kek.publicKey), agentID: "dmg")
            _ = try await store.ingest([ingestItem(session.record)], receivedAtMs: 1)
        }

        /// Closes the storage and removes the directory.
        func remove() async {
            await store.close()
            dir.remove()
        }

        func blob(_ size: Int) throws -> SealedBlob {
            try session.seal(randomData(size), kind: .screen, captureTimeMs: 1_700_000_000_000)
        }

        func ingest(_ blobs: [SealedBlob]) async throws -> [IngestOutcome] {
            try await store.ingest(blobs.map { ingestItem($0) }, receivedAtMs: 2)
        }

        func file(_ n: Int) -> String { store.blobDirectory + "/" + String(format: "%08d.blobs", n) }
        func size(_ path: String) -> Int? { (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int }
        func read(_ b: SealedBlob) async throws -> Data? { try await store.blob(b.header.blobID) }
    }

    @Test(arguments: ["lost", "cut short"])
    func aDamagedFileIsNeverWrittenOverAndResendingRepairs(_ damage: String) async throws {
        let rig = try await Rig("blob-damage")
        defer { Task { await rig.remove() } }
        let old = try (0..<3).map { _ in try rig.blob(100_000) }
        #expect(try await rig.ingest(old) == [.stored, .stored, .stored])
        if damage == "lost" {
            try FileManager.default.moveItem(atPath: rig.file(1), toPath: rig.dir.file("elsewhere.blobs"))
        } else {
            #expect(truncate(rig.file(1), 50_000) == 0)
        }
        // New blobs go to a new file: file 1's referenced bytes are never overwritten.
        let new = try rig.blob(200_000)
        #expect(try await rig.ingest([new]) == [.stored])
        #expect(rig.size(rig.file(2)) == new.serialized.count)
        #expect(try await rig.read(new) == new.serialized)
        for b in old {
            await #expect(throws: StorageError.self) { try await rig.read(b) }
        }
        // The agent's copy of a damaged blob repairs it, in a batch with a new small blob that
        // is stored as usual; sending it once more is a duplicate.
        let small = try rig.blob(1_000)
        #expect(try await rig.ingest([old[0], small]) == [.stored, .stored])
        #expect(try await rig.read(old[0]) == old[0].serialized)
        #expect(try await rig.read(small) == small.serialized)
        #expect(try await rig.ingest([old[0]]) == [.duplicate])
        // With its stored copy gone, the collector cannot tell other bytes under the same header
        // and size from the original: they repair the row too (Ingestor only accepts them from the
        // blob's own agent), and decryption's AEAD tag check is what catches them.
        var forged = old[1].serialized
        forged[forged.count - 1] ^= 1
        #expect(try await rig.store.ingest([ingestItem(old[1], bytes: forged)], receivedAtMs: 3) == [.stored])
        #expect(try await rig.read(old[1]) == forged)
    }

    /// A batch that fails before its COMMIT (here a trigger refuses one row) leaves the blob file
    /// exactly as it was, and stores nothing; the same batch later goes through whole.
    @Test func aBatchThatFailsBeforeCommitIsCutOffTheFile() async throws {
        try requireTool("sqlite3")
        let rig = try await Rig("blob-abort")
        defer { Task { await rig.remove() } }
        let first = try rig.blob(60_000)
        #expect(try await rig.ingest([first]) == [.stored])
        let good = try rig.blob(70_000), poisoned = try rig.blob(77_000)
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", rig.store.path, """
            CREATE TRIGGER boom BEFORE INSERT ON captures WHEN NEW.size = \(poisoned.serialized.count)
            BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;
            """])
        await #expect(throws: (any Error).self) { try await rig.ingest([good, poisoned]) }
        #expect(rig.size(rig.file(1)) == first.serialized.count)
        #expect(try await rig.store.counts().captures == 1)
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", rig.store.path, "DROP TRIGGER boom"])
        #expect(try await rig.ingest([good, poisoned]) == [.stored, .stored])
        for b in [first, good, poisoned] { #expect(try await rig.read(b) == b.serialized) }
    }

    /// Only the blob's own agent (and KEK, kind, DEK, sequence, time, size) can repair a row
    /// whose stored copy is unreadable; anything else under that id is a conflict, and another
    /// agent's upload under that id is `otherAgent` (answered as a new id, never stored).
    @Test func anotherAgentCannotRepairABlob() async throws {
        let rig = try await Rig("blob-other-agent")
        defer { Task { await rig.remove() } }
        let b = try rig.blob(100_000)
        #expect(try await rig.ingest([b]) == [.stored])
        #expect(truncate(rig.file(1), 10) == 0)
        func item(agent: String) throws -> IngestItem { ingestItem(b, agent: try AgentID(agent)) }
        #expect(try await rig.store.ingest([try item(agent: "intruder")], receivedAtMs: 3) == [.otherAgent])
        await #expect(throws: StorageError.self) { try await rig.read(b) }
        #expect(try await rig.store.ingest([try item(agent: "dmg")], receivedAtMs: 4) == [.stored])
        #expect(try await rig.read(b) == b.serialized)
    }

    @Test func symlinksFIFOsAndStrayNamesAreNeverAppendedTo() async throws {
        let rig = try await Rig("blob-strays")
        defer { Task { await rig.remove() } }
        let first = try rig.blob(50_000)
        #expect(try await rig.ingest([first]) == [.stored])
        // A symlink as the newest file: the target is never written.
        let victim = rig.dir.file("victim")
        try Data("untouched".utf8).write(to: URL(fileURLWithPath: victim))
        try FileManager.default.createSymbolicLink(atPath: rig.file(2), withDestinationPath: victim)
        let second = try rig.blob(50_000)
        #expect(try await rig.ingest([second]) == [.stored])
        #expect(try Data(contentsOf: URL(fileURLWithPath: victim)) == Data("untouched".utf8))
        #expect(rig.size(rig.file(3)) == second.serialized.count)
        // A FIFO as the newest file: no blocking, the next number is used.
        #expect(mkfifo(rig.file(4), 0o600) == 0)
        let third = try rig.blob(50_000)
        #expect(try await rig.ingest([third]) == [.stored])
        #expect(rig.size(rig.file(5)) == third.serialized.count)
        // Names that are not exactly eight digits do not count.
        try Data().write(to: URL(fileURLWithPath: rig.store.blobDirectory + "/+0000099.blobs"))
        let fourth = try rig.blob(50_000)
        #expect(try await rig.ingest([fourth]) == [.stored])
        #expect(rig.size(rig.file(5)) == third.serialized.count + fourth.serialized.count)
        for b in [first, second, third, fourth] { #expect(try await rig.read(b) == b.serialized) }
    }

    /// The blob directory carries a marker with its database's id: a missing directory, an empty
    /// one (an unmounted volume's mount point) or another database's, while rows point into blob
    /// files, refuses large blobs with an error naming it, instead of filling a directory that
    /// would hide them; small blobs still go in, and all is well once the right one is back.
    @Test func aMissingEmptyOrForeignBlobDirectoryIsRefused() async throws {
        let rig = try await Rig("blob-marker")
        defer { Task { await rig.remove() } }
        let other = try await Rig("blob-marker-other")
        defer { Task { await other.remove() } }
        let first = try rig.blob(50_000)
        #expect(try await rig.ingest([first]) == [.stored])
        #expect(try await other.ingest([try other.blob(50_000)]) == [.stored])
        let marker = rig.store.blobDirectory + "/.custos-blobs"
        #expect((try FileManager.default.attributesOfItem(atPath: marker)[.posixPermissions] as? Int) == 0o600)
        let aside = rig.dir.file("aside")
        try FileManager.default.moveItem(atPath: rig.store.blobDirectory, toPath: aside)

        func refused(_ why: String) async throws {
            do {
                _ = try await rig.ingest([try rig.blob(50_000)])
                Issue.record("a large blob was stored with the blob directory \(why)")
            } catch {
                #expect("\(error)".contains(rig.store.blobDirectory) && "\(error)".contains("refused"), "\(why): \(error)")
            }
            #expect(try await rig.ingest([try rig.blob(1_000)]) == [.stored], "small blobs with the directory \(why)")
        }
        try await refused("missing")
        #expect(!FileManager.default.fileExists(atPath: rig.store.blobDirectory))
        try FileManager.default.createDirectory(atPath: rig.store.blobDirectory, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        try await refused("empty")
        try FileManager.default.removeItem(atPath: rig.store.blobDirectory)
        try runChecked(["cp", "-a", other.store.blobDirectory, rig.store.blobDirectory])
        try await refused("of another database")
        #expect(rig.size(rig.file(1)) == rig.size(other.file(1)))  // the other database's file untouched

        try FileManager.default.removeItem(atPath: rig.store.blobDirectory)
        try FileManager.default.moveItem(atPath: aside, toPath: rig.store.blobDirectory)
        let later = try rig.blob(50_000)
        #expect(try await rig.ingest([later]) == [.stored])
        #expect(try await rig.read(first) == first.serialized)
        #expect(try await rig.read(later) == later.serialized)
    }

    @Test func aBlobDirectoryOthersCanWriteIsRefused() async throws {
        let rig = try await Rig("blob-mode")
        defer { Task { await rig.remove() } }
        try FileManager.default.createDirectory(atPath: rig.store.blobDirectory, withIntermediateDirectories: false)
        #expect(chmod(rig.store.blobDirectory, 0o777) == 0)
        do {
            _ = try await rig.ingest([try rig.blob(50_000)])
            Issue.record("a world-writable blob directory was used")
        } catch {
            #expect("\(error)".contains(rig.store.blobDirectory) && "\(error)".contains("writable by group or others"), "\(error)")
        }
        // Small blobs do not need the directory.
        #expect(try await rig.ingest([try rig.blob(1_000)]) == [.stored])
        #expect(chmod(rig.store.blobDirectory, 0o700) == 0)
        #expect(try await rig.ingest([try rig.blob(50_000)]) == [.stored])
    }

    @Test func aSymlinkedDatabaseKeepsItsBlobsBesideTheRealFile() async throws {
        let dir = try TempDir("blob-dblink")
        defer { dir.remove() }
        try FileManager.default.createDirectory(atPath: dir.file("real"), withIntermediateDirectories: false)
        try await SQLiteStorage(path: dir.file("real/collector.db")).close()
        try FileManager.default.createSymbolicLink(atPath: dir.file("link.db"), withDestinationPath: dir.file("real/collector.db"))
        let viaLink = try SQLiteStorage(path: dir.file("link.db"))
        defer { Task { await viaLink.close() } }
        #expect(viaLink.blobDirectory.hasSuffix("/real/collector.db.blobs"))
    }
}
