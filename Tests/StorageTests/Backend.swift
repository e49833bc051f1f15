import CollectorStorage
import CollectorStoragePostgres
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
    case postgres

    var testDescription: String { rawValue }

    /// The backends to test here: every one, but PostgreSQL only where its server is installed
    /// or under `CI=true` (where a missing server then fails the tests), like the other
    /// PostgreSQL suites' `.enabled(if: PostgresCluster.isAvailable)`.
    static var testable: [Backend] { allCases.filter { $0 != .postgres || PostgresCluster.isAvailable } }

    /// A fresh, empty storage: SQLite's files live in `dir`; PostgreSQL's is a fresh database
    /// of the conformance suite's throwaway cluster (``StorageConformance``), owned by the
    /// collector's role, and nil the returned database for SQLite.
    func make(in dir: TempDir) async throws -> (any CollectorStorage, PostgresDatabase?) {
        switch self {
        case .sqlite:
            return (try SQLiteStorage(path: dir.file("collector.db")), nil)
        case .postgres:
            let (cluster, name) = try await freshDatabase()
            return (try makePostgresStorage(cluster: cluster, database: name), PostgresDatabase(cluster: cluster, name: name))
        }
    }

    /// Runs `sql` verbatim with the backend's own command-line client (`sqlite3`, `psql` as the
    /// collector's role) on the storage of `rig`; returns its standard output.
    func runCLI(_ sql: String, on rig: Rig) async throws -> String {
        switch self {
        case .sqlite:
            try requireTool("sqlite3")
            let file = rig.dir.file("collector.db")
            return try await offPool { try runChecked(["sqlite3", "-cmd", ".timeout 10000", file, sql]) }
        case .postgres:
            let db = try #require(rig.postgres)
            return try await db.cluster.psqlAsync(sql, database: db.name, user: collectorRole)
        }
    }

    /// SQL (for ``runCLI(_:on:)``) that makes the database refuse to store the capture `id` (a
    /// trigger raising an error), so a batch holding it fails midway, after earlier items.
    func refuseCaptureSQL(_ id: BlobID) -> String {
        switch self {
        case .sqlite:
            """
            CREATE TRIGGER refuse_capture BEFORE INSERT ON captures WHEN NEW.blob_id = '\(id.hex)'
            BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;
            """
        case .postgres:
            """
            CREATE FUNCTION refuse_capture() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.blob_id = '\(id.hex)' THEN RAISE EXCEPTION 'refused by the test'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_capture BEFORE INSERT ON captures FOR EACH ROW EXECUTE FUNCTION refuse_capture();
            """
        }
    }

    /// Whether ``CollectorStorage/kekChanges()`` hears rows inserted by anyone (PostgreSQL
    /// LISTEN/NOTIFY); SQLite's stream yields nothing.
    var hearsKEKChanges: Bool {
        switch self {
        case .sqlite: false
        case .postgres: true
        }
    }
}

/// The conformance suite: every test of the suites nested in it (AgentAndKEKConformance.swift,
/// RecordConformance.swift) runs on every backend (``Backend/testable``). The PostgreSQL cases
/// share one throwaway cluster, started at the first of them; each test gets its own database.
@Suite(.postgresCluster) struct StorageConformance {}

/// A database of a test cluster.
struct PostgresDatabase: Sendable {
    let cluster: PostgresCluster
    let name: String
}

/// A storage made by a backend in its own temp dir (and, for PostgreSQL, its own database),
/// with its ``CollectorStorage/run()`` running on a task of the test, as its owner would;
/// ``close()`` closes it, checks that `run()` returned without error, and removes the dir.
struct Rig: Sendable {
    let backend: Backend
    let dir: TempDir
    let storage: any CollectorStorage
    /// The PostgreSQL database, nil for SQLite.
    let postgres: PostgresDatabase?
    /// The task running `storage.run()`.
    let runner: Task<Void, any Error>

    init(_ backend: Backend, _ name: String = "storage") async throws {
        self.backend = backend
        dir = try TempDir("custos-\(name)-\(backend.rawValue)")
        do {
            (storage, postgres) = try await backend.make(in: dir)
        } catch {
            dir.remove()
            throw error
        }
        let storage = self.storage
        runner = Task { try await storage.run() }
        do {
            // Migrated before the test starts, so SQL typed into the backend's client finds the
            // tables (SQLite migrates in init; PostgreSQL at its first call).
            if let pg = storage as? PostgresStorage { try await pg.prepare() }
        } catch {
            await close()
            throw error
        }
    }

    func cli(_ sql: String) async throws -> String { try await backend.runCLI(sql, on: self) }

    /// Returns once the storage's `LISTEN` connection is up (PostgreSQL; at once for SQLite),
    /// so a change made next is heard.
    func listening() async throws {
        if let db = postgres { try await waitForListener(db.cluster, db.name, count: 1) }
    }

    /// Closes the storage (again, when the test did: nothing happens), waits for `run()` to
    /// return, and removes the dir.
    func close() async {
        await storage.close()
        if case .failure(let error) = await runner.result {
            Issue.record("\(backend): run() threw \(error)")
        }
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
                captureTimeMs: b.captureTimeMs, size: b.bytes.count, receivedAtMs: receivedAtMs, user: b.user, display: b.display)
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

/// Checks a ``KEKRow/createdAt`` made between `before` and `after`: `YYYY-MM-DD HH:MM:SS` in
/// UTC on every backend (whole seconds: the bounds are widened to them).
func expectCreatedAt(_ text: String?, between before: Date, and after: Date,
                     sourceLocation: SourceLocation = #_sourceLocation) {
    let format = DateFormatter()
    format.locale = Locale(identifier: "en_US_POSIX")
    format.timeZone = TimeZone(identifier: "UTC")
    format.dateFormat = "yyyy-MM-dd HH:mm:ss"
    guard let text, text.count == 19, let date = format.date(from: text) else {
        Issue.record("createdAt \(String(describing: text)) is not YYYY-MM-DD HH:MM:SS", sourceLocation: sourceLocation)
        return
    }
    let low = before.timeIntervalSince1970.rounded(.down), high = after.timeIntervalSince1970.rounded(.up)
    #expect((low...high).contains(date.timeIntervalSince1970), "createdAt \(text) is UTC and now", sourceLocation: sourceLocation)
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
