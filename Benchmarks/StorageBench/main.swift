// custos-bench-storage: the collector's storage seam on SQLite and on PostgreSQL, same run (issue 14).
//
//  1. Ingest: the same captures (one DEK record, then `--captures` sealed blobs of `--blob-bytes`
//     random bytes in batches of `--batch`, as agent uploads arrive) into a fresh SQLite file and
//     into a fresh PostgreSQL database; captures per second each, and PostgreSQL ÷ SQLite (goal
//     ≥ 0.8). Each backend gets three runs on fresh databases; the median is reported.
//  2. Listing: the newest 100 captures of a table of `--rows` rows (default 1,000,000; the rows
//     are made in SQL, 100 agents, 100-byte blobs), through the seam
//     (`captures(order: .descending, limit: 100)`), median and p95 of 30 calls; also one agent's
//     newest 100, and the page after a cursor 500,000 rows deep (goal: < 50 ms each).
//
// PostgreSQL is a throwaway cluster this program starts (Debian's server, TestSupport's
// PostgresCluster: initdb in a temp dir, pg_ctl on a free loopback port, fsync on as in
// production) and stops. SQLite runs in WAL mode with synchronous=NORMAL, as the collector does.
//
// Usage: custos-bench-storage [--captures N] [--blob-bytes N] [--batch N] [--rows N]

import BenchSupport
import CollectorStorage
import CollectorStorageOpen
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Logging
import TestSupport

/// One line to standard output, written at once (also when piped).
func out(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
let quiet = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }

let captureCount = argument("--captures", 20_000)
let blobBytes = argument("--blob-bytes", 2048)
let batchSize = argument("--batch", 200)
let listingRows = argument("--rows", 1_000_000)

func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }
func percentile(_ xs: [Double], _ p: Double) -> Double { let s = xs.sorted(); return s[min(s.count - 1, Int(Double(s.count) * p))] }
func ms(_ d: Duration) -> Double { Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15 }

// MARK: Material

let work = try TempDir("custos-bench-storage")
defer { work.remove() }
let kek = try makeTestKEK(in: work.path, name: "kek")
let session = try DEKSession(kek: try KEKPublicKey(pemFile: kek.publicKey), agentID: "bench-agent")
let batches: [[IngestItem]] = try {
    var batches: [[IngestItem]] = []
    var items: [IngestItem] = []
    let agent = try AgentID("bench-agent")
    items.append(.dek(StoredDEK(dekID: session.record.dekID, kekID: session.record.kekID, agentID: agent,
                                creationTimeMs: session.record.creationTimeMs, record: session.record.serialized)))
    var rng = SystemRandomNumberGenerator()
    for i in 0..<captureCount {
        let payload = Data((0..<blobBytes).map { _ in UInt8.random(in: 0...255, using: &rng) })
        let blob = try session.seal(payload, kind: i % 2 == 0 ? .screen : .keystrokes, captureTimeMs: 1_700_000_000_000 + Int64(i))
        let h = blob.header
        items.append(.blob(StoredBlob(blobID: h.blobID, agentID: agent, kind: h.kind, dekID: h.dekID, kekID: h.kekID,
                                      sequence: Int64(bitPattern: h.sequence), captureTimeMs: h.captureTimeMs,
                                      bytes: blob.serialized)))
        if items.count >= batchSize { batches.append(items); items = [] }
    }
    if !items.isEmpty { batches.append(items) }
    return batches
}()

out("PostgreSQL: starting a throwaway cluster …")
let cluster = try PostgresCluster(fsync: true)
defer { try? cluster.stop() }
let pgPassword = try cluster.createRole("custos")
let passwordFile = work.file("pg.password")
try (pgPassword + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
chmod(passwordFile, 0o600)

func postgres() throws -> StorageLocation {
    let name = try cluster.createDatabase(owner: "custos")
    return try StorageLocation(cluster.url(database: name, user: "custos"), passwordFile: passwordFile)
}
func sqlite() -> StorageLocation {
    .sqlite(path: work.file("bench-\(UUID().uuidString.prefix(8)).db"))
}

// MARK: 1. Ingest

func ingestRun(_ location: StorageLocation) async throws -> Double {
    try await StorageOpener.withStorage(location, logger: quiet) { storage in
        let clock = ContinuousClock()
        let start = clock.now
        var receivedAt: Int64 = 1_700_000_100_000
        for batch in batches {
            receivedAt += 1
            let outcomes = try await storage.ingest(batch, receivedAtMs: receivedAt)
            guard outcomes.allSatisfy({ $0 == .stored }) else { throw BenchError("\(location): not every item was stored") }
        }
        let seconds = ms(start.duration(to: clock.now)) / 1000
        guard try await storage.counts() == (captureCount, 1) else { throw BenchError("\(location): counts differ") }
        return Double(captureCount) / seconds
    }
}

out("\n1. Ingest: \(captureCount) captures of \(blobBytes) B sealed payload, batches of \(batchSize) (median of 3 runs each, fresh database each run)")
var sqliteRates: [Double] = [], pgRates: [Double] = []
for round in 1...3 {
    let s = try await ingestRun(sqlite())
    let p = try await ingestRun(try postgres())
    sqliteRates.append(s); pgRates.append(p)
    out(String(format: "   run %d: SQLite %.0f captures/s, PostgreSQL %.0f captures/s", round, s, p))
}
let ratio = median(pgRates) / median(sqliteRates)
out(String(format: "   median: SQLite %.0f captures/s, PostgreSQL %.0f captures/s; PostgreSQL ÷ SQLite = %.2f (goal ≥ 0.8: %@)",
             median(sqliteRates), median(pgRates), ratio, ratio >= 0.8 ? "met" : "MISSED"))

// MARK: 2. Listing

out("\n2. Listing: newest 100 of \(listingRows) captures (rows made in SQL; median and p95 of 30 calls through the seam)")
let pgList = try postgres()
guard case .postgres(let pgLocation) = pgList else { throw BenchError("not PostgreSQL") }
try await StorageOpener.withStorage(pgList, logger: quiet) { _ in }  // the schema
_ = try cluster.psql("""
    INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob, received_at)
    SELECT lpad(to_hex(g), 32, '0'), 'agent-' || (g % 100), CASE WHEN g % 2 = 0 THEN 'screen' ELSE 'keystrokes' END,
           repeat('a', 32), repeat('b', 64), g, to_timestamp(1700000000 + g / 10.0), 100, '\\x00'::bytea, now()
    FROM generate_series(1, \(listingRows)) g;
    ANALYZE captures;
    """, database: pgLocation.database)
let sqliteList = sqlite()
try await StorageOpener.withStorage(sqliteList, logger: quiet) { _ in }
guard case .sqlite(let sqlitePath) = sqliteList else { throw BenchError("not SQLite") }
let fill = Process()
fill.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
fill.arguments = [sqlitePath, """
    WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < \(listingRows))
    INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob, received_at)
    SELECT printf('%032x', n), 'agent-' || (n % 100), CASE WHEN n % 2 = 0 THEN 'screen' ELSE 'keystrokes' END,
           printf('%032d', 0), printf('%064d', 0), n, 1700000000000 + n * 100, 100, x'00', 1700000000000 FROM g;
    ANALYZE;
    """]
try fill.run()
fill.waitUntilExit()
guard fill.terminationStatus == 0 else { throw BenchError("sqlite3 could not fill \(sqlitePath)") }

func listing(_ location: StorageLocation, _ label: String) async throws {
    try await StorageOpener.withStorage(location, logger: quiet) { storage in
        let clock = ContinuousClock()
        func time(_ name: String, _ call: () async throws -> Int) async throws {
            var samples: [Double] = []
            for _ in 0..<30 {
                let start = clock.now
                let n = try await call()
                samples.append(ms(start.duration(to: clock.now)))
                guard n == 100 else { throw BenchError("\(label) \(name): \(n) rows instead of 100") }
            }
            let m = median(samples)
            out(String(format: "   %@ %@: median %.2f ms, p95 %.2f ms (goal < 50 ms: %@)", label, name, m, percentile(samples, 0.95),
                         m < 50 ? "met" : "MISSED"))
        }
        try await time("newest 100") {
            try await storage.captures(CaptureQuery(order: .descending), after: nil, limit: 100).items.count
        }
        try await time("one agent's newest 100") {
            try await storage.captures(CaptureQuery(agentID: try AgentID("agent-7"), order: .descending), after: nil, limit: 100).items.count
        }
        // A cursor half-way down: the page after it must not scan what lies before.
        let deep = CaptureCursor(captureTimeMs: 1_700_000_000_000 + Int64(listingRows / 2) * 100,
                                 blobID: BlobID(hex: String(repeating: "0", count: 32))!)
        try await time("the page after a cursor \(listingRows / 2) rows deep") {
            try await storage.captures(CaptureQuery(order: .descending), after: deep, limit: 100).items.count
        }
    }
}
try await listing(sqliteList, "SQLite")
try await listing(pgList, "PostgreSQL")
