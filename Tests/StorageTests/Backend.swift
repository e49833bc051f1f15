import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport

/// The storage backends the conformance suite runs against. A backend plugs in with one case
/// here and its arms in the switches below (its factory, its command-line client, a trigger).
enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite

    var testDescription: String { rawValue }

    /// A fresh, empty storage whose files live in `dir`.
    func make(in dir: TempDir) async throws -> any CollectorStorage {
        switch self {
        case .sqlite: try SQLiteStorage(path: dir.file("collector.db"))
        }
    }

    /// Runs `sql` verbatim with the backend's own command-line client (`sqlite3`, `psql`) on the
    /// storage made by ``make(in:)`` in `dir`; returns its standard output.
    func runCLI(_ sql: String, in dir: TempDir) throws -> String {
        switch self {
        case .sqlite:
            try requireTool("sqlite3")
            return try runChecked(["sqlite3", "-cmd", ".timeout 10000", dir.file("collector.db"), sql])
        }
    }

    /// SQL (for ``runCLI(_:in:)``) that makes the database refuse to store the capture `id` (a
    /// trigger raising an error), so a batch holding it fails midway, after earlier items.
    func refuseCaptureSQL(_ id: BlobID) -> String {
        switch self {
        case .sqlite:
            """
            CREATE TRIGGER refuse_capture BEFORE INSERT ON captures WHEN NEW.blob_id = '\(id.hex)'
            BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;
            """
        }
    }

    /// Whether ``CollectorStorage/kekChanges()`` hears rows inserted by anyone (PostgreSQL
    /// LISTEN/NOTIFY); SQLite's stream yields nothing.
    var hearsKEKChanges: Bool {
        switch self {
        case .sqlite: false
        }
    }
}

/// A storage made by a backend in its own temp dir; `close()` closes it and removes the dir.
struct Rig {
    let backend: Backend
    let dir: TempDir
    let storage: any CollectorStorage

    init(_ backend: Backend, _ name: String = "storage") async throws {
        self.backend = backend
        dir = try TempDir("custos-\(name)-\(backend.rawValue)")
        do {
            storage = try await backend.make(in: dir)
        } catch {
            dir.remove()
            throw error
        }
    }

    func cli(_ sql: String) throws -> String { try backend.runCLI(sql, in: dir) }

    func close() async {
        await storage.close()
        dir.remove()
    }
}

// MARK: Test values

/// An agent id known to be valid.
func agent(_ text: String) -> AgentID { try! AgentID(text) }

/// A KEK id made from one byte (distinct per byte).
func kekID(_ n: UInt8) -> KEKID { KEKID(bytes: [UInt8](repeating: n, count: 32))! }

/// A blob id whose bytes sort by `high` first, then `low` (for ties broken by blob id).
func blobID(_ high: UInt8, _ low: UInt8 = 0) -> BlobID {
    BlobID(bytes: [high] + [UInt8](repeating: 0, count: 14) + [low])!
}

/// A DEK record of `agent` (record bytes random).
func dek(_ agent: AgentID, time: Int64, id: DEKID = .random(), kek: KEKID = kekID(1)) -> StoredDEK {
    StoredDEK(dekID: id, kekID: kek, agentID: agent, creationTimeMs: time, record: randomData(120))
}

/// A sealed blob of `size` random bytes under `dek`.
func blob(_ dek: StoredDEK, kind: CaptureKind = .screen, time: Int64, size: Int = 200, id: BlobID = .random(),
          sequence: Int64 = 0) -> StoredBlob {
    StoredBlob(blobID: id, agentID: dek.agentID, kind: kind, dekID: dek.dekID, kekID: dek.kekID, sequence: sequence,
               captureTimeMs: time, bytes: randomData(size))
}

/// The ``CaptureInfo`` a stored blob should list as (its `receivedAtMs` as given to ingest).
func info(_ b: StoredBlob, receivedAtMs: Int64) -> CaptureInfo {
    CaptureInfo(blobID: b.blobID, agentID: b.agentID, kind: b.kind, dekID: b.dekID, kekID: b.kekID, sequence: b.sequence,
                captureTimeMs: b.captureTimeMs, size: b.bytes.count, receivedAtMs: receivedAtMs)
}

/// The listing order: capture time, then blob id bytes.
func listingOrder(_ a: CaptureInfo, _ b: CaptureInfo) -> Bool {
    (a.captureTimeMs, a.blobID.hex) < (b.captureTimeMs, b.blobID.hex)
}

/// Every page of `query`, `limit` at a time; fails the test on a page over the limit or a loop.
func allPages(_ storage: any CollectorStorage, _ query: CaptureQuery, limit: Int) async throws -> [[CaptureInfo]] {
    var pages: [[CaptureInfo]] = []
    var cursor: CaptureCursor?
    repeat {
        let page = try await storage.captures(query, after: cursor, limit: limit)
        #expect(page.items.count <= limit)
        if let next = page.next {
            #expect(next == page.items.last?.cursor, "next is the last item's cursor")
            #expect(page.items.count == limit, "a page before the last one is full")
        }
        pages.append(page.items)
        cursor = page.next
        try #require(pages.count < 10_000, "paging does not end")
    } while cursor != nil
    return pages
}

/// Runs `body` and returns the ``StorageError`` it throws (failing the test when it throws
/// nothing or another error).
func storageError(_ body: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async -> StorageError? {
    do {
        try await body()
        Issue.record("expected a StorageError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let e as StorageError {
        return e
    } catch {
        Issue.record("expected a StorageError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Runs `body` with a fresh storage of `backend`, then closes it and removes its files (also
/// when `body` throws).
func withRig(_ backend: Backend, _ name: String, _ body: (Rig) async throws -> Void) async throws {
    let rig = try await Rig(backend, name)
    do {
        try await body(rig)
    } catch {
        await rig.close()
        throw error
    }
    await rig.close()
}
