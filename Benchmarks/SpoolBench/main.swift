// custos-bench-spool: Spool throughput against raw SQLite with the same settings, in one run.
//
// Usage: custos-bench-spool [--rounds N] [--dir PATH]
// Measures, alternating Spool and raw SQLite (sqlite3 C API, WAL, synchronous=FULL,
// auto_vacuum=INCREMENTAL, SQLite's default automatic checkpoints, the same table and
// index, one transaction per insert; `sync(2)` before each timed part, order swapped
// every round):
//   - enqueue of 200-byte blobs and of 200 KiB blobs (blobs/s, MB/s);
//   - ack (delete) of 64-blob batches in steady state (blobs/s);
//   - a steady-state cycle: enqueue 64 blobs, lease them, ack them (raw: insert 64, mark
//     them leased in one transaction, delete them) (blobs/s).
// Prints the median of each over the rounds and the ratio Spool/raw (goal ≥ 0.8).
import Foundation
import GRDBSQLite
import Logging
import Spool

#if canImport(Glibc)
import Glibc
#endif

let SQLITE_STATIC_DESTRUCTOR: sqlite3_destructor_type? = nil

/// One raw SQLite connection (owns the `sqlite3*`, closed in `deinit`).
final class RawDB {
    private let handle: OpaquePointer
    private var insert: OpaquePointer?
    private var delete: OpaquePointer?

    init(path: String) {
        var db: OpaquePointer?
        guard sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nil) == SQLITE_OK, let db else {
            fatalError("cannot open \(path)")
        }
        handle = db
        exec("""
            PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
            CREATE TABLE record (seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, kind TEXT NOT NULL,
                priority INTEGER NOT NULL, dek_id BLOB NOT NULL, capture_ms INTEGER NOT NULL, size INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL DEFAULT 0, lease_owner TEXT,
                lease_until_ms INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL);
            CREATE INDEX record_order ON record(priority, capture_ms);
            """)
        sqlite3_prepare_v2(handle, """
            INSERT INTO record(id, kind, priority, dek_id, capture_ms, size, payload) VALUES (?, ?, ?, ?, ?, ?, ?)
            """, -1, &insert, nil)
        sqlite3_prepare_v2(handle, "DELETE FROM record WHERE id = ?", -1, &delete, nil)
    }

    deinit {
        sqlite3_finalize(insert)
        sqlite3_finalize(delete)
        sqlite3_close_v2(handle)
    }

    func exec(_ sql: String) {
        var err: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(handle, sql, nil, nil, &err) != SQLITE_OK {
            fatalError("raw sqlite: \(String(cString: err!))")
        }
    }

    private func bind(_ stmt: OpaquePointer?, _ index: Int32, _ data: Data) {
        _ = data.withUnsafeBytes { sqlite3_bind_blob(stmt, index, $0.baseAddress, Int32($0.count), SQLITE_STATIC_DESTRUCTOR) }
    }

    func insert(_ e: SpoolEntry) {
        exec("BEGIN IMMEDIATE")
        e.id.withUnsafeBytes { id in
            e.dekID.withUnsafeBytes { dek in
                e.payload.withUnsafeBytes { payload in
                    sqlite3_bind_blob(insert, 1, id.baseAddress, Int32(id.count), SQLITE_STATIC_DESTRUCTOR)
                    sqlite3_bind_text(insert, 2, e.kind.rawValue, -1, SQLITE_STATIC_DESTRUCTOR)
                    sqlite3_bind_int64(insert, 3, 3)
                    sqlite3_bind_blob(insert, 4, dek.baseAddress, Int32(dek.count), SQLITE_STATIC_DESTRUCTOR)
                    sqlite3_bind_int64(insert, 5, e.captureTimeMs)
                    sqlite3_bind_int64(insert, 6, Int64(payload.count))
                    sqlite3_bind_blob(insert, 7, payload.baseAddress, Int32(payload.count), SQLITE_STATIC_DESTRUCTOR)
                    guard sqlite3_step(insert) == SQLITE_DONE else { fatalError("raw insert failed") }
                    sqlite3_reset(insert)
                }
            }
        }
        exec("COMMIT")
    }

    func delete(_ ids: [Data]) {
        exec("BEGIN IMMEDIATE")
        for id in ids {
            bind(delete, 1, id)
            guard sqlite3_step(delete) == SQLITE_DONE else { fatalError("raw delete failed") }
            sqlite3_reset(delete)
        }
        exec("COMMIT")
    }

    /// What a lease must write at least: mark the batch leased, in one transaction.
    func markLeased(_ ids: [Data]) {
        exec("BEGIN IMMEDIATE")
        var stmt: OpaquePointer?
        sqlite3_prepare_v2(handle, "UPDATE record SET lease_owner = 'bench', lease_until_ms = 1 WHERE id = ?", -1, &stmt, nil)
        for id in ids {
            bind(stmt, 1, id)
            guard sqlite3_step(stmt) == SQLITE_DONE else { fatalError("raw lease failed") }
            sqlite3_reset(stmt)
        }
        sqlite3_finalize(stmt)
        exec("COMMIT")
    }

    func checkpoint() { exec("PRAGMA wal_checkpoint(TRUNCATE)") }
}

// MARK: - Workloads

var counter = 0
@MainActor func makeEntries(_ count: Int, bytes: Int) -> [SpoolEntry] {
    let payload = Data((0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
    return (0..<count).map { _ in
        counter += 1
        var id = [UInt8](repeating: 0, count: 16)
        withUnsafeBytes(of: UInt64(counter).bigEndian) { for i in 0..<8 { id[8 + i] = $0[i] } }
        return SpoolEntry(id: Data(id), kind: .screen, dekID: Data(repeating: 0xD0, count: 16),
                          captureTimeMs: Int64(counter), payload: payload)
    }
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = ContinuousClock.now
    try body()
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

let logger = Logger(label: "custos-bench-spool", factory: { _ in SwiftLogNoOpLogHandler() })
let args = CommandLine.arguments
var rounds = 5
var baseDir = FileManager.default.temporaryDirectory.path
if let i = args.firstIndex(of: "--rounds"), i + 1 < args.count, let n = Int(args[i + 1]) { rounds = n }
if let i = args.firstIndex(of: "--dir"), i + 1 < args.count { baseDir = args[i + 1] }

@MainActor func freshDir(_ name: String) -> String {
    let dir = "\(baseDir)/custos-bench-spool-\(getpid())-\(name)"
    try? FileManager.default.removeItem(atPath: dir)
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

struct Result { var spool: [Double] = []; var raw: [Double] = [] }
var results: [String: Result] = [:]
let cases: [(name: String, count: Int, bytes: Int)] = [("enqueue 200 B", 2000, 200), ("enqueue 200 KiB", 200, 200 * 1024)]
let maxBytes: Int64 = 4 << 30

if ProcessInfo.processInfo.environment["SPOOL_BENCH_PROFILE"] != nil {
    // Only Spool enqueues of 200-byte blobs, for a profiler.
    let dir = freshDir("profile")
    let entries = makeEntries(3000, bytes: 200)
    let t: Double
    if ProcessInfo.processInfo.environment["SPOOL_BENCH_PROFILE"] == "raw" {
        let raw = RawDB(path: dir + "/raw.db")
        t = seconds { for e in entries { raw.insert(e) } }
    } else {
        let spool = try Spool(directory: dir, maxBytes: maxBytes, logger: logger)
        t = try seconds { for e in entries { try spool.enqueue(e) } }
        try spool.close()
    }
    print(String(format: "profile: %.0f enqueues/s", 3000 / t))
    try? FileManager.default.removeItem(atPath: dir)
    exit(0)
}

for round in 0..<rounds {
    for c in cases {
        let entries = makeEntries(c.count, bytes: c.bytes)
        let spoolDir = freshDir("spool"), rawDir = freshDir("raw")
        var ts = 0.0, tr = 0.0
        func runSpool() throws {
            let spool = try Spool(directory: spoolDir, maxBytes: maxBytes, logger: logger)
            sync()
            ts = try seconds { for e in entries { try spool.enqueue(e) } }
            try spool.close()
        }
        func runRaw() {
            let raw = RawDB(path: rawDir + "/raw.db")
            sync()
            tr = seconds { for e in entries { raw.insert(e) } }
        }
        if round % 2 == 0 { try runSpool(); runRaw() } else { runRaw(); try runSpool() }
        results[c.name, default: Result()].spool.append(Double(c.count) / ts)
        results[c.name, default: Result()].raw.append(Double(c.count) / tr)
        try? FileManager.default.removeItem(atPath: spoolDir)
        try? FileManager.default.removeItem(atPath: rawDir)
    }
    // Ack steady state: a backlog of 200 B blobs, acked in batches of 64.
    do {
        let batches = 40, batch = 64
        let entries = makeEntries(batches * batch, bytes: 200)
        let spoolDir = freshDir("spool-ack"), rawDir = freshDir("raw-ack")
        let spool = try Spool(directory: spoolDir, maxBytes: maxBytes, logger: logger)
        let raw = RawDB(path: rawDir + "/raw.db")
        for e in entries { try spool.enqueue(e); raw.insert(e) }
        raw.checkpoint()
        var leased: [[Data]] = []
        for _ in 0..<batches { leased.append(try spool.lease(maxItems: batch, maxBytes: 1 << 30).map(\.id)) }
        sync()
        let ts = try seconds { for ids in leased { try spool.ack(ids) } }
        sync()
        let tr = seconds { for ids in leased { raw.delete(ids) } }
        results["ack 64-blob batches", default: Result()].spool.append(Double(batches * batch) / ts)
        results["ack 64-blob batches", default: Result()].raw.append(Double(batches * batch) / tr)

        // Full cycle: enqueue 64, lease them, ack them (raw: insert 64, delete 64).
        let cycle = makeEntries(batches * batch, bytes: 200)
        sync()
        var enqueueTime = 0.0, leaseTime = 0.0, ackTime = 0.0
        let cs = try seconds {
            for b in 0..<batches {
                enqueueTime += try seconds { for e in cycle[(b * batch)..<((b + 1) * batch)] { try spool.enqueue(e) } }
                var ids: [Data] = []
                leaseTime += try seconds { ids = try spool.lease(maxItems: batch, maxBytes: 1 << 30).map(\.id) }
                ackTime += try seconds { try spool.ack(ids) }
            }
        }
        if ProcessInfo.processInfo.environment["SPOOL_BENCH_VERBOSE"] != nil {
            FileHandle.standardError.write(Data(String(format: "cycle: enqueue %.3f s, lease %.3f s, ack %.3f s\n",
                                                       enqueueTime, leaseTime, ackTime).utf8))
        }
        sync()
        let cr = seconds {
            for b in 0..<batches {
                let slice = cycle[(b * batch)..<((b + 1) * batch)]
                for e in slice { raw.insert(e) }
                raw.markLeased(slice.map(\.id))
                raw.delete(slice.map(\.id))
            }
        }
        results["steady enqueue+lease+ack", default: Result()].spool.append(Double(batches * batch) / cs)
        results["steady enqueue+lease+ack", default: Result()].raw.append(Double(batches * batch) / cr)
        try spool.close()
        try? FileManager.default.removeItem(atPath: spoolDir)
        try? FileManager.default.removeItem(atPath: rawDir)
    }
    FileHandle.standardError.write(Data("round \(round + 1)/\(rounds) done\n".utf8))
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

print("custos-bench-spool: \(rounds) rounds, medians; WAL, synchronous=FULL, one transaction per enqueue")
print("workload".padding(toLength: 28, withPad: " ", startingAt: 0) + "   spool blobs/s    raw blobs/s   spool MB/s  ratio")
var allOK = true
for name in ["enqueue 200 B", "enqueue 200 KiB", "ack 64-blob batches", "steady enqueue+lease+ack"] {
    guard let r = results[name] else { continue }
    let s = median(r.spool), w = median(r.raw)
    let bytes = name == "enqueue 200 KiB" ? 200.0 * 1024 : 200
    let ratio = s / w
    if ratio < 0.8 { allOK = false }
    print(name.padding(toLength: 28, withPad: " ", startingAt: 0)
          + String(format: " %15.0f %14.0f %12.2f  %.2f%@", s, w, s * bytes / 1e6, ratio, ratio < 0.8 ? "  (below 0.8)" : ""))
}
print(allOK ? "all ratios >= 0.8" : "some ratios < 0.8")
