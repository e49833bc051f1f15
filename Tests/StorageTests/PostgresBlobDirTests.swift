import CollectorStorage
@testable import CollectorStoragePostgres
import CustosBase
import Envelope
import Foundation
import Logging
import Synchronization
import Testing
import TestSupport

/// `blob-dir=` on PostgreSQL: large sealed blobs in append-only files of a directory shared by
/// several instances, the rows keeping a `blob_ref` (docs/STORAGE.md "Blobs"). Real cluster,
/// real files, real sealed blobs (the reads check that the bytes parse as the blob with that id).
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"), .postgresCluster)
struct PostgresBlobDirTests {
    /// Blobs of 32 KiB or more land in this instance's file under blob-dir and read back byte
    /// for byte; smaller ones stay in the row; re-sending is `duplicate` and appends nothing.
    @Test func largeBlobsGoToFilesSmallOnesStayInTheRow() async throws {
        let (cluster, db) = try await freshDatabase()
        let dir = try BlobDir()
        defer { dir.remove() }
        let (dek, blobs) = try sealedBatch(agent: "blobs-1", sizes: [100, 32 * 1024 - 200, 32 * 1024, 300_000])
        let batch: [IngestItem] = [.dek(dek)] + blobs.map { .blob($0) }
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path) { s in
            #expect(try await s.ingest(batch, receivedAtMs: 1_700_000_100_000) == Array(repeating: .stored, count: 5))
            for b in blobs { #expect(try await s.blob(b.blobID) == b.bytes) }
            let files = dir.blobFiles()
            #expect(files == [SharedBlobDirectory.fileName(instance: s.blobInstance, number: 1)])
            let large = blobs.filter { $0.bytes.count >= 32 * 1024 }
            #expect(dir.size(of: files[0]) == large.reduce(0) { $0 + Int64($1.bytes.count) })
            let marker = try String(contentsOfFile: dir.path + "/.custos-blobs", encoding: .utf8)
            let storeID = try await cluster.psqlAsync("SELECT id FROM blob_store", database: db)
            #expect(marker == storeID)
            // The rows: an empty blob and a reference for the large ones, the bytes for the small.
            let rows = try await cluster.psqlAsync(
                "SELECT blob_id, length(blob), coalesce(blob_ref, '-') FROM captures ORDER BY size", database: db)
            let lines = rows.split(separator: "\n").map { $0.split(separator: "|").map(String.init) }
            #expect(lines.count == 4)
            for (line, b) in zip(lines, blobs) {
                #expect(line[0] == b.blobID.hex)
                if b.bytes.count >= 32 * 1024 {
                    #expect(line[1] == "0")
                    let ref = try BlobRef(text: line[2], context: "test")
                    #expect(ref.instance == s.blobInstance && ref.size == Int64(b.bytes.count))
                } else {
                    #expect(line[1] == "\(b.bytes.count)" && line[2] == "-")
                }
            }
            // Re-sent (the agent did not see the answer): duplicate, and no byte is appended.
            #expect(try await s.ingest(batch, receivedAtMs: 1_700_000_200_000) == Array(repeating: .duplicate, count: 5))
            #expect(dir.size(of: files[0]) == large.reduce(0) { $0 + Int64($1.bytes.count) })
            // Other bytes under a stored id (read back through the file to compare): conflict.
            var changed = large[1]
            changed.bytes[changed.bytes.count - 1] ^= 1
            #expect(try await s.ingest([.blob(changed)], receivedAtMs: 1) == [.conflict])
            #expect(try await s.blob(changed.blobID) == large[1].bytes)
        }
        // Without blob-dir=, a row pointing into a blob file says where its bytes are.
        try await withPostgresStorage(cluster: cluster, database: db) { (s: PostgresStorage) async throws in
            let refused = await storageError { _ = try await s.blob(blobs[3].blobID) }
            expectError(refused, .unavailable, "blob-dir=")
            #expect(try await s.blob(blobs[0].blobID) == blobs[0].bytes)
        }
    }

    /// Two instances (two instance ids) on one database and one directory ingest the same
    /// batches at once: every blob is stored once, each instance wrote only files named with its
    /// own id, and every blob reads back from either.
    @Test func twoInstancesShareOneDirectory() async throws {
        let (cluster, db) = try await freshDatabase()
        let dir = try BlobDir()
        defer { dir.remove() }
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path) { first in
            try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: dir.path) { second in
                #expect(first.blobInstance != second.blobInstance)
                var batches: [[IngestItem]] = []
                var all: [StoredBlob] = []
                for i in 0..<4 {
                    let (dek, blobs) = try sealedBatch(agent: "shared-\(i)", sizes: [64 * 1024, 40_000, 500, 100_000])
                    batches.append([.dek(dek)] + blobs.map { .blob($0) })
                    all += blobs
                }
                // Every batch is sent to both instances at once, twice (an agent failing over).
                let results = try await withThrowingTaskGroup(of: (Int, [IngestOutcome]).self) { group in
                    for (n, batch) in batches.enumerated() {
                        for k in 0..<4 {
                            let s = k % 2 == 0 ? first : second
                            group.addTask { (n, try await s.ingest(batch, receivedAtMs: 1_700_000_100_000 + Int64(k))) }
                        }
                    }
                    return try await group.reduce(into: [Int: [[IngestOutcome]]]()) { $0[$1.0, default: []].append($1.1) }
                }
                for (n, outcomes) in results {
                    for item in 0..<batches[n].count {
                        let column = outcomes.map { $0[item] }
                        #expect(column.filter { $0 == .stored }.count == 1, "batch \(n) item \(item): \(column)")
                        #expect(column.filter { $0 == .duplicate }.count == 3, "batch \(n) item \(item): \(column)")
                    }
                }
                #expect(try await first.counts() == (16, 4))
                for b in all {
                    #expect(try await first.blob(b.blobID) == b.bytes)
                    #expect(try await second.blob(b.blobID) == b.bytes)
                }
                // Each file is named with one of the two instance ids; each id wrote its own.
                let files = dir.blobFiles()
                #expect(!files.isEmpty)
                let owners = Set(files.map { String($0.prefix(32)) })
                #expect(owners.isSubset(of: [first.blobInstance, second.blobInstance]), "\(files)")
                // Every reference points into a file that exists, and names its writer.
                let refs = try await cluster.psqlAsync("SELECT blob_ref FROM captures WHERE blob_ref IS NOT NULL", database: db)
                let parsed = try refs.split(separator: "\n").map { try BlobRef(text: String($0), context: "test") }
                #expect(parsed.count == 12)
                for ref in parsed { #expect(files.contains(ref.fileName)) }
                // A loser's appended copy (another instance stored the id first) was erased once
                // its batch committed without it: every byte no row points to reads as zero.
                let referenced = parsed.reduce(Int64(0)) { $0 + $1.size }
                #expect(files.reduce(Int64(0)) { $0 + dir.size(of: $1) } >= referenced)
                for file in files {
                    var contents = try dir.contents(file)
                    for ref in parsed where ref.fileName == file {
                        contents.replaceSubrange(Int(ref.offset)..<Int(ref.offset + ref.size), with: Data(count: Int(ref.size)))
                    }
                    #expect(contents.allSatisfy { $0 == 0 }, "\(file): unreferenced bytes are not erased")
                }
            }
        }
    }

    /// A missing directory, another database's directory, and a directory without the marker
    /// after one was marked (an unmounted volume) each refuse the batch with an error naming
    /// the directory; nothing is stored, and the same batch goes through once it is fixed.
    @Test func missingOrForeignDirectoryIsRefusedAndNothingStored() async throws {
        let (cluster, db) = try await freshDatabase()
        let dir = try BlobDir()
        defer { dir.remove() }
        let missing = dir.path + "/not-mounted"
        let (dek, blobs) = try sealedBatch(agent: "refused", sizes: [50_000, 200])
        let batch: [IngestItem] = [.dek(dek)] + blobs.map { .blob($0) }
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: missing) { (s: PostgresStorage) async throws in
            let refused = await storageError { _ = try await s.ingest(batch, receivedAtMs: 1) }
            expectError(refused, .unavailable, "not-mounted", "does not exist")
            #expect(try await s.counts() == (0, 0))
        }
        // Another database's directory (its marker names another id).
        let foreign = dir.path + "/foreign"
        try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        try Data("0123456789abcdef0123456789abcdef\n".utf8).write(to: URL(fileURLWithPath: foreign + "/.custos-blobs"))
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: foreign) { (s: PostgresStorage) async throws in
            let refused = await storageError { _ = try await s.ingest(batch, receivedAtMs: 1) }
            expectError(refused, .unavailable, "another database")
            #expect(try await s.counts() == (0, 0))
        }
        #expect(dir.blobFiles(in: foreign).isEmpty)
        // The right directory: stored, and the directory is now marked.
        let good = dir.path + "/good"
        try FileManager.default.createDirectory(atPath: good, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: good) { (s: PostgresStorage) async throws in
            #expect(try await s.ingest(batch, receivedAtMs: 1) == [.stored, .stored, .stored])
        }
        // An empty directory in its place (the volume unmounted): refused, not marked anew.
        let empty = dir.path + "/empty-mount-point"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        let (dek2, blobs2) = try sealedBatch(agent: "refused", sizes: [60_000])
        try await withPostgresStorage(cluster: cluster, database: db, blobDirectory: empty) { (s: PostgresStorage) async throws in
            let refused = await storageError { _ = try await s.ingest([.dek(dek2), .blob(blobs2[0])], receivedAtMs: 1) }
            expectError(refused, .unavailable, "unmounted")
            #expect(try await s.counts() == (2, 1))
        }
        #expect(!FileManager.default.fileExists(atPath: empty + "/.custos-blobs"))
    }
}

// MARK: Fixtures

/// `error` has `code` and its message holds each of `words`.
func expectError(_ error: StorageError?, _ code: StorageError.Code, _ words: String...,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    let message = error?.message ?? "(no error)"
    #expect(error?.code == code, "\(message)", sourceLocation: sourceLocation)
    for word in words {
        let found = message.contains(word)
        #expect(found, "expected \(word) in: \(message)", sourceLocation: sourceLocation)
    }
}

/// A temporary directory (mode 0700) for blob files, removed by ``remove()``.
struct BlobDir {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("custos-blobdir-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
    }

    /// The `*.blobs` files of `directory` (default: this one), sorted.
    func blobFiles(in directory: String? = nil) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory ?? path)) ?? []).filter { $0.hasSuffix(".blobs") }.sorted()
    }

    func size(of name: String) -> Int64 {
        ((try? FileManager.default.attributesOfItem(atPath: path + "/" + name))?[.size] as? NSNumber)?.int64Value ?? -1
    }

    /// A file's whole contents, read from the file.
    func contents(_ name: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path + "/" + name)) }

    /// The bytes `ref` points to, as its file holds them now.
    func bytes(_ ref: BlobRef) throws -> Data {
        let data = try contents(ref.fileName)
        return data.subdata(in: Int(ref.offset)..<Int(ref.offset + ref.size))
    }

    /// Bytes the file system has allocated to a file (`st_blocks` × 512): a punched hole frees them.
    func allocated(_ name: String) -> Int64 {
        var st = stat()
        return stat(path + "/" + name, &st) == 0 ? Int64(st.st_blocks) * 512 : -1
    }

    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: path + "/" + name) }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// One KEK for the suite's sealed blobs (RSA-2048 made once).
let testKEK: Result<KEKPublicKey, any Error> = Result {
    let pair = try KeyGeneration.generateRSA(bits: 2048, passphrase: SecretBytes(copying: Array("test passphrase".utf8)))
    return try KEKPublicKey(pemRepresentation: pair.publicKeyPEM, source: "test KEK")
}

/// A DEK record and real sealed blobs with plaintexts of the given sizes (bytes; the sealed
/// record is about 120 bytes more: header and tag), all of `agent`, captured at `timeMs`.
func sealedBatch(agent text: String, sizes: [Int], timeMs: Int64 = 1_700_000_000_500) throws -> (StoredDEK, [StoredBlob]) {
    let session = try DEKSession(kek: try testKEK.get(), agentID: text)
    let record = session.record
    let agentID = try AgentID(text)
    let dek = StoredDEK(dekID: record.dekID, kekID: record.kekID, agentID: agentID, creationTimeMs: record.creationTimeMs,
                        record: record.serialized)
    let blobs = try sizes.map { size -> StoredBlob in
        let sealed = try session.seal(Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }),
                                      kind: .screen, captureTimeMs: timeMs)
        let h = sealed.header
        return StoredBlob(blobID: h.blobID, agentID: agentID, kind: h.kind, dekID: h.dekID, kekID: h.kekID,
                          sequence: Int64(h.sequence), captureTimeMs: h.captureTimeMs, bytes: sealed.serialized)
    }
    return (dek, blobs)
}
