import CollectorStorage
import CollectorStoragePostgres
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport

/// The backends these conformance tests run against; the SQLite backend joins as another case
/// with its factory in ``withStorage(_:_:)`` (the coordinator merges this with the SQLite
/// helper's `Backend`).
enum ConformanceBackend: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case postgresql

    var testDescription: String { rawValue }
}

/// A fresh, empty storage of `backend`, open for `body`, closed after it.
func withStorage(_ backend: ConformanceBackend, _ body: (any CollectorStorage) async throws -> Void) async throws {
    switch backend {
    case .postgresql:
        let (cluster, db) = try await freshDatabase()
        try await withPostgresStorage(cluster: cluster, database: db) { try await body($0) }
    }
}

/// Every method of the seam against each backend: the behaviour every backend must have
/// (docs/STORAGE.md "The seam").
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"), .postgresCluster)
struct StorageConformanceTests {
    @Test(arguments: ConformanceBackend.allCases)
    func agentsAndTokens(_ backend: ConformanceBackend) async throws {
        try await withStorage(backend) { s in
            let b = agent("host-b"), a = agent("host-a")
            let tokenB = try await s.addAgent(b)
            let tokenA = try await s.addAgent(a)
            #expect(tokenA.revealed.count == 43 && tokenA != tokenB)
            #expect(try await s.agents().map(\.id) == [a, b])
            #expect(await storageError { _ = try await s.addAgent(a) }?.code == .alreadyExists)

            #expect(try await s.authenticate(a, token: tokenA))
            #expect(try await !s.authenticate(a, token: tokenB))
            #expect(try await !s.authenticate(agent("nobody"), token: tokenA))

            let rotated = try await s.rotateToken(a)
            #expect(try await !s.authenticate(a, token: tokenA))
            #expect(try await s.authenticate(a, token: rotated))
            #expect(await storageError { _ = try await s.rotateToken(agent("nobody")) }?.code == .notFound)

            try await s.removeAgent(b)
            #expect(try await s.agents().map(\.id) == [a])
            #expect(try await !s.authenticate(b, token: tokenB))
            #expect(await storageError { try await s.removeAgent(b) }?.code == .notFound)
            let created = try await s.agents()[0].createdAtMs
            #expect(abs(created - Int64(Date().timeIntervalSince1970 * 1000)) < 60_000)
        }
    }

    @Test(arguments: ConformanceBackend.allCases)
    func kekRegistry(_ backend: ConformanceBackend) async throws {
        try await withStorage(backend) { s in
            let kek = KEKID.random()
            let byPath = try await s.registerKEK(KEKRegistration(pubDatafile: "/etc/custos/keys/publickey.crt", publicKeyPEM: nil,
                                                                 privDatafile: "/etc/custos/keys/keypair.pem", kekID: nil))
            let pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"
            let byPEM = try await s.registerKEK(KEKRegistration(pubDatafile: nil, publicKeyPEM: pem, privDatafile: nil,
                                                                privEncrypted: false, active: false, kekID: kek))
            #expect(byPEM > byPath)
            #expect(await storageError {
                _ = try await s.registerKEK(KEKRegistration(pubDatafile: nil, publicKeyPEM: nil, privDatafile: "/x", kekID: nil))
            }?.code == .invalidArgument)

            var rows = try await s.keks()
            #expect(rows.map(\.rowID) == [byPath, byPEM])
            #expect(rows[0].active && rows[0].privEncrypted && rows[0].pubDatafile == "/etc/custos/keys/publickey.crt")
            #expect(rows[0].privDatafile == "/etc/custos/keys/keypair.pem" && rows[0].publicKeyPEM == nil && rows[0].kekID == nil)
            #expect(rows[0].createdAt?.isEmpty == false)
            #expect(!rows[1].active && !rows[1].privEncrypted && rows[1].publicKeyPEM == pem && rows[1].kekID == kek)

            try await s.setKEKActive(rowID: byPath, active: false)
            let computed = KEKID.random()
            try await s.setKEKID(rowID: byPath, kekID: computed)
            rows = try await s.keks()
            #expect(!rows[0].active && rows[0].kekID == computed)
            #expect(await storageError { try await s.setKEKActive(rowID: 9999, active: true) }?.code == .notFound)
            #expect(await storageError { try await s.setKEKID(rowID: 9999, kekID: computed) }?.code == .notFound)
        }
    }

    @Test(arguments: ConformanceBackend.allCases)
    func ingestOutcomes(_ backend: ConformanceBackend) async throws {
        try await withStorage(backend) { s in
            let a = agent("a1"), other = agent("a2")
            let dek = sampleDEK(a)
            let blob1 = sampleBlob(dek, sequence: 0)
            // A DEK record earlier in the same batch counts for the blobs after it.
            #expect(try await s.ingest([.dek(dek), .blob(blob1)], receivedAtMs: 1_700_000_001_000) == [.stored, .stored])
            #expect(try await s.counts() == (1, 1))

            // Same bytes again: duplicate; other bytes under the same id: conflict.
            var changedRecord = dek
            changedRecord.record = Data("another record".utf8)
            var changedBytes = blob1
            changedBytes.bytes = Data("other sealed bytes".utf8)
            var changedHeader = blob1
            changedHeader.sequence = 5
            let outcomes = try await s.ingest([.dek(dek), .blob(blob1), .dek(changedRecord), .blob(changedBytes),
                                               .blob(changedHeader)], receivedAtMs: 1_700_000_002_000)
            #expect(outcomes == [.duplicate, .duplicate, .conflict, .conflict, .conflict])

            // No DEK record, or another agent's: unknownDEK. Another agent's ids: otherAgent.
            let orphan = sampleBlob(sampleDEK(a), sequence: 1)
            var foreignDEKBlob = sampleBlob(dek, sequence: 2)
            foreignDEKBlob.agentID = other
            var stolenDEK = dek
            stolenDEK.agentID = other
            var stolenBlob = blob1
            stolenBlob.agentID = other
            #expect(try await s.ingest([.blob(orphan), .blob(foreignDEKBlob), .dek(stolenDEK), .blob(stolenBlob)],
                                       receivedAtMs: 1_700_000_003_000) == [.unknownDEK, .unknownDEK, .otherAgent, .otherAgent])
            #expect(try await s.counts() == (1, 1))
            #expect(try await s.ingest([], receivedAtMs: 0) == [])

            // Read back.
            #expect(try await s.dekRecord(dek.dekID) == dek.record)
            #expect(try await s.dekRecord(.random()) == nil)
            #expect(try await s.blob(blob1.blobID) == blob1.bytes)
            #expect(try await s.blob(.random()) == nil)
            let info = try #require(try await s.capture(blob1.blobID))
            #expect(info == CaptureInfo(blobID: blob1.blobID, agentID: a, kind: .screen, dekID: dek.dekID, kekID: dek.kekID,
                                        sequence: 0, captureTimeMs: blob1.captureTimeMs, size: blob1.bytes.count,
                                        receivedAtMs: 1_700_000_001_000))
            #expect(try await s.capture(.random()) == nil)

            // Empty and large sealed bytes come back whole.
            let big = sampleBlob(dek, sequence: 3, kind: .generic, bytes: randomData(3 * 1024 * 1024 + 17))
            let empty = sampleBlob(dek, sequence: 4, kind: .keystrokes, bytes: Data())
            #expect(try await s.ingest([.blob(big), .blob(empty)], receivedAtMs: 1_700_000_004_000) == [.stored, .stored])
            #expect(try await s.blob(big.blobID) == big.bytes)
            #expect(try await s.blob(empty.blobID) == Data())
            #expect(try await s.capture(empty.blobID)?.kind == .keystrokes)
        }
    }

    @Test(arguments: ConformanceBackend.allCases)
    func captureListingPages(_ backend: ConformanceBackend) async throws {
        try await withStorage(backend) { s in
            let a = agent("a1"), b = agent("b1")
            let dekA = sampleDEK(a), dekB = sampleDEK(b)
            var items: [IngestItem] = [.dek(dekA), .dek(dekB)]
            var blobs: [StoredBlob] = []
            for i in 0..<25 {
                // Pairs share a capture time: the blob id breaks the tie.
                let t = 1_700_000_000_000 + Int64(i / 2) * 1000
                let blob = sampleBlob(i % 3 == 0 ? dekB : dekA, sequence: Int64(i), timeMs: t,
                                      kind: i % 5 == 0 ? .keystrokes : .screen)
                blobs.append(blob)
                items.append(.blob(blob))
            }
            _ = try await s.ingest(items, receivedAtMs: 1_700_000_100_000)
            let expected = blobs.sorted { ($0.captureTimeMs, $0.blobID.hex) < ($1.captureTimeMs, $1.blobID.hex) }

            func all(_ q: CaptureQuery, limit: Int) async throws -> ([BlobID], Int) {
                var ids: [BlobID] = [], pages = 0, cursor: CaptureCursor?
                repeat {
                    let page = try await s.captures(q, after: cursor, limit: limit)
                    #expect(page.items.count <= limit)
                    ids += page.items.map(\.blobID)
                    pages += 1
                    cursor = page.next
                    if let next = page.next { #expect(next == page.items.last?.cursor) }
                } while cursor != nil && pages < 100
                return (ids, pages)
            }
            let (asc, pages) = try await all(CaptureQuery(), limit: 4)
            #expect(asc == expected.map(\.blobID))
            #expect(pages == 7)
            let (desc, _) = try await all(CaptureQuery(order: .descending), limit: 5)
            #expect(desc == expected.reversed().map(\.blobID))
            // A full last page says there is no next one.
            #expect(try await s.captures(CaptureQuery(), after: nil, limit: 25).next == nil)
            #expect(try await s.captures(CaptureQuery(), after: nil, limit: 24).next != nil)

            let (ofA, _) = try await all(CaptureQuery(agentID: a), limit: 3)
            #expect(ofA == expected.filter { $0.agentID == a }.map(\.blobID))
            let (keys, _) = try await all(CaptureQuery(kind: .keystrokes), limit: 2)
            #expect(keys == expected.filter { $0.kind == .keystrokes }.map(\.blobID))
            let window = CaptureQuery(agentID: b, sinceMs: 1_700_000_002_000, untilMs: 1_700_000_009_000, order: .descending)
            let (inWindow, _) = try await all(window, limit: 2)
            #expect(inWindow == expected.reversed().filter {
                $0.agentID == b && $0.captureTimeMs >= 1_700_000_002_000 && $0.captureTimeMs < 1_700_000_009_000
            }.map(\.blobID))
            #expect(!inWindow.isEmpty)

            let token = try #require(try await s.captures(CaptureQuery(), after: nil, limit: 3).next).token
            let resumed = try await s.captures(CaptureQuery(), after: CaptureCursor(token: token), limit: 3)
            #expect(resumed.items.map(\.blobID) == Array(expected.map(\.blobID)[3..<6]))

            for bad in [0, 10_001] {
                #expect(await storageError { _ = try await s.captures(CaptureQuery(), after: nil, limit: bad) }?.code == .invalidArgument)
            }
        }
    }

    @Test(arguments: ConformanceBackend.allCases)
    func dekRecordsPage(_ backend: ConformanceBackend) async throws {
        try await withStorage(backend) { s in
            let a = agent("a1"), b = agent("b1")
            var deks: [StoredDEK] = []
            for i in 0..<9 {
                deks.append(sampleDEK(i % 3 == 0 ? b : a, timeMs: 1_700_000_000_000 + Int64(i / 2) * 1000))
            }
            _ = try await s.ingest(deks.map { .dek($0) }, receivedAtMs: 1_700_000_100_000)
            let expected = deks.sorted { ($0.creationTimeMs, $0.dekID.hex) < ($1.creationTimeMs, $1.dekID.hex) }
            var got: [StoredDEK] = [], after: DEKID?
            while true {
                let page = try await s.dekRecords(agent: nil, after: after, limit: 4)
                got += page
                guard page.count == 4, let last = page.last else { break }
                after = last.dekID
            }
            #expect(got == expected)
            #expect(try await s.dekRecords(agent: b, after: nil, limit: 100) == expected.filter { $0.agentID == b })
            #expect(await storageError { _ = try await s.dekRecords(agent: nil, after: .random(), limit: 5) }?.code == .notFound)
            #expect(await storageError { _ = try await s.dekRecords(agent: nil, after: nil, limit: 0) }?.code == .invalidArgument)
        }
    }

    @Test(arguments: ConformanceBackend.allCases)
    func auditLog(_ backend: ConformanceBackend) async throws {
        try await withStorage(backend) { s in
            var appended: [AuditEntry] = []
            for i in 0..<7 {
                appended.append(try await s.appendAudit(actor: "admin", action: "agents.add", detail: "agent a\(i) \u{1B}[31m"))
            }
            #expect(appended.map(\.id) == appended.map(\.id).sorted() && Set(appended.map(\.id)).count == 7)
            #expect(abs(appended[0].atMs - Int64(Date().timeIntervalSince1970 * 1000)) < 60_000)
            let newest = try await s.auditEntries(before: nil, limit: 3)
            #expect(newest == Array(appended.reversed()[0..<3]))
            let older = try await s.auditEntries(before: newest.last!.id, limit: 10)
            #expect(older == Array(appended.reversed()[3...]))
            #expect(await storageError { _ = try await s.auditEntries(before: nil, limit: 10_001) }?.code == .invalidArgument)
        }
    }

    @Test(arguments: ConformanceBackend.allCases)
    func healthAndClose(_ backend: ConformanceBackend) async throws {
        try await withStorage(backend) { s in
            let health = await s.health()
            #expect(health.reachable && health.problem == nil)
            #expect(health.backend == backend.rawValue)
            let changes = s.kekChanges()
            await s.close()
            #expect(await storageError { _ = try await s.agents() }?.code == .unavailable)
            var iterator = changes.makeAsyncIterator()
            #expect(await iterator.next() == nil)  // the stream ends when the storage closes
            #expect(await !s.health().reachable)
        }
    }

    @Test(arguments: ConformanceBackend.allCases)
    func timesOutOfRangeStoreNothing(_ backend: ConformanceBackend) async throws {
        try await withStorage(backend) { (s: any CollectorStorage) async throws in
            let dek = sampleDEK(agent("a1"))
            let wild = sampleBlob(dek, timeMs: Int64.max)
            #expect(await storageError { _ = try await s.ingest([.dek(dek), .blob(wild)], receivedAtMs: 1) }?.code == .invalidArgument)
            #expect(try await s.counts() == (0, 0))
            // Negative (before 1970) and millisecond-exact times round-trip.
            let old = sampleBlob(dek, timeMs: -86_400_001)
            #expect(try await s.ingest([.dek(dek), .blob(old)], receivedAtMs: 1_700_000_000_999) == [.stored, .stored])
            #expect(try await s.capture(old.blobID)?.captureTimeMs == -86_400_001)
            #expect(try await s.capture(old.blobID)?.receivedAtMs == 1_700_000_000_999)
        }
    }
}
