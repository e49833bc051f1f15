// custos-bench-collectors: ingest by many concurrent simulated agents (default 1,000) over real
// TLS on 127.0.0.1 into real `custos-collector` processes, same run (issue 14):
//
//  1. one collector on SQLite against one collector on PostgreSQL: requests/s, captures/s and
//     p99 acknowledgement time each, PostgreSQL ÷ SQLite (goal ≥ 0.8);
//  2. 1, 2 and 3 collectors (separate processes, each its own port) on one PostgreSQL, the
//     agents spread over them round-robin: requests/s and p99 acknowledgement time each.
//
// Every run starts its collectors from the real binary (`--config`, as in production; collector
// N always on the same port) on a fresh copy of a database that holds the agents (imported with
// their token hashes, the same tokens in every database) and the active KEK (PostgreSQL: `CREATE
// DATABASE … TEMPLATE`; SQLite: `VACUUM INTO`), so no run inherits the rows of another.
// PostgreSQL is one throwaway cluster (TestSupport's PostgresCluster, fsync on, as in
// production) for the whole program. Each agent is one `CollectorClient` per collector port
// (pinned TLS, one keep-alive connection): a warm-up upload (its DEK record and one blob; the
// TLS handshake), then, all agents at once, uploads back to back for `--seconds` (closed loop:
// each agent waits for its acknowledgement before sealing and sending the next, so the ack time
// includes the queueing of 1,000 agents on whatever the machine serves). Requests/s counts the
// uploads acknowledged within the window; the ack time is measured per upload (send to answer).
// Rounds rotate the order of the set-ups; the summary gives the median of the rounds, column by
// column. Each round also times one 8 KiB overwrite + fdatasync on the same file system: about
// what a commit that waits for the disk costs at that time (other work on the host loads it).
//
// Sanity: every upload must answer 200 with every record `stored`; non-2xx answers, failed
// connections, broken requests, records not stored and collector log lines at warning or above
// are counted per kind and printed, and after each run the stored captures are counted in the
// database and must equal the records acknowledged as stored. Any error makes the exit status 1
// (after the figures are printed).
//
// CPU: utime+stime from /proc/PID/stat (man 5 proc) from the window's start to its last answer,
// for the load generator (this process), each collector, and PostgreSQL (the postmaster and
// every child of it; ended children through its cutime/cstime), and the machine from /proc/stat
// (busy = all but idle and iowait; softirq shown apart); "other work" is what the machine spent
// beyond these (other programs on the host), with the busiest of them still running named.
//
// Usage: custos-bench-collectors [--agents N] [--seconds N] [--rounds N] [--blobs N] [--blob-bytes N]
//                                [--set-ups sqlite1,pg1,pg2,pg3]   (default: all four)
//                                [--collector PATH]   (default: custos-collector beside this program)

import CollectorStorage
import CollectorStorageOpen
import CustosBase
import Envelope
import Foundation
import Logging
import TestSupport
import Transport
import Wire

// MARK: Arguments and small helpers

/// One line to standard output, written at once (also when piped).
func out(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

func argument(_ name: String, _ fallback: Int, _ range: ClosedRange<Int>) -> Int {
    let a = CommandLine.arguments
    guard let i = a.firstIndex(of: name) else { return fallback }
    guard i + 1 < a.count, let v = Int(a[i + 1]), range.contains(v) else {
        FileHandle.standardError.write(Data("custos-bench-collectors: \(name) expects an integer in \(range.lowerBound)...\(range.upperBound)\n".utf8))
        exit(2)
    }
    return v
}
let agentCount = argument("--agents", 1000, 1...20_000)
let windowSeconds = argument("--seconds", 4, 1...3600)
let rounds = argument("--rounds", 3, 1...100)
let blobsPerRequest = argument("--blobs", 4, 1...1000)
let blobBytes = argument("--blob-bytes", 2048, 1...(1 << 20))
/// `--set-ups sqlite1,pg1,pg2,pg3` (default: all four, in this order): the set-ups to run.
let chosenSetUps: [String] = {
    let a = CommandLine.arguments, known = ["sqlite1", "pg1", "pg2", "pg3"]
    guard let i = a.firstIndex(of: "--set-ups") else { return known }
    let list = i + 1 < a.count ? a[i + 1].split(separator: ",").map(String.init) : []
    guard !list.isEmpty, list.allSatisfy(known.contains), Set(list).count == list.count else {
        FileHandle.standardError.write(Data("custos-bench-collectors: --set-ups expects a comma-separated list of distinct names from \(known.joined(separator: ","))\n".utf8))
        exit(2)
    }
    return known.filter(list.contains)
}()
let collectorBinary: String = {
    let a = CommandLine.arguments
    if let i = a.lastIndex(of: "--collector"), i + 1 < a.count { return a[i + 1] }  // the last one: collectors.sh passes one first
    return URL(fileURLWithPath: a[0]).deletingLastPathComponent().appendingPathComponent("custos-collector").path
}()

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

let quiet = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
let clock = ContinuousClock()
func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}
/// `1234567.8` as `1,234,568`.
func grouped(_ x: Double) -> String {
    let f = NumberFormatter()
    f.numberStyle = .decimal
    f.maximumFractionDigits = 0
    f.locale = Locale(identifier: "en_US")
    return f.string(from: NSNumber(value: x.rounded())) ?? "\(Int(x))"
}

// MARK: CPU accounting (man 5 proc: /proc/PID/stat fields 4 ppid, 14 utime, 15 stime, 16 cutime, 17 cstime; /proc/stat "cpu")

let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

/// One process's `/proc/PID/stat` (man 5 proc): its name, parent and CPU seconds.
struct ProcessStat {
    /// `comm` (field 2), the executable's name cut to 15 bytes.
    let name: String
    /// Field 4.
    let parent: Int32
    /// utime + stime (fields 14, 15), seconds.
    let cpu: Double
    /// cutime + cstime (fields 16, 17): its ended children it waited for, seconds.
    let childrenCPU: Double

    /// Nil when the process is gone or its stat cannot be read.
    init?(_ pid: Int32) {
        // The name may hold spaces and parentheses: it runs from the first "(" to the last ")".
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")"), open < close else { return nil }
        let f = text[text.index(after: close)...].split(separator: " ")  // f[0] is field 3
        guard f.count > 14, let parent = Int32(f[1]), let u = Int(f[11]), let s = Int(f[12]),
              let cu = Int(f[13]), let cs = Int(f[14]) else { return nil }
        name = String(text[text.index(after: open)..<close])
        self.parent = parent
        cpu = Double(u + s) / ticksPerSecond
        childrenCPU = Double(cu + cs) / ticksPerSecond
    }
}

/// Every process of the machine now, by pid.
func allProcesses() -> [Int32: ProcessStat] {
    var all: [Int32: ProcessStat] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        if let pid = Int32(entry), let stat = ProcessStat(pid) { all[pid] = stat }
    }
    return all
}

/// The machine's CPU seconds so far, summed over its cores (`/proc/stat`, first line: user nice
/// system idle iowait irq softirq steal …): busy (all but idle and iowait), and of it softirq
/// (mostly the loopback TCP of this benchmark: packet processing is not always charged to a process).
func machineCPU() -> (busy: Double, softirq: Double) {
    guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return (0, 0) }
    let v = line.split(separator: " ").dropFirst().compactMap { Int($0) }
    guard v.count >= 8 else { return (0, 0) }
    return (Double(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / ticksPerSecond, Double(v[6]) / ticksPerSecond)
}

/// CPU seconds spent so far by every process and by the machine, at one instant.
struct CPUSample {
    let at: ContinuousClock.Instant
    let processes: [Int32: ProcessStat]
    let machine: (busy: Double, softirq: Double)
    init() {
        at = ContinuousClock.now
        processes = allProcesses()
        machine = machineCPU()
    }
}

/// Cores used between two samples (CPU seconds per second), by party.
struct CPUUse {
    var generator = 0.0
    var collectors: [Double] = []
    var postgres: Double?
    var softirq = 0.0
    /// The rest of the machine's busy time: other work on the host.
    var other = 0.0
    var machine = 0.0
    /// The busiest other processes still running at the end, by name (cores), at most three.
    var otherTop: [(name: String, cores: Double)] = []

    /// - Parameters: `collectors`: their pids; `postmaster`: PostgreSQL's, when it serves this run.
    init(from a: CPUSample, to b: CPUSample, collectors pids: [Int32], postmaster: Int32?) {
        let wall = seconds(a.at.duration(to: b.at))
        func used(_ pid: Int32) -> Double { max(0, (b.processes[pid]?.cpu ?? 0) - (a.processes[pid]?.cpu ?? 0)) }
        generator = used(getpid()) / wall
        collectors = pids.map { used($0) / wall }
        var ours: Set<Int32> = Set(pids + [getpid()])
        // All PostgreSQL processes are the postmaster's children (backends, checkpointer, WAL
        // writer…); a child that ended meanwhile moved into the postmaster's cutime/cstime.
        var pgProcesses: Set<Int32> = []
        for (pid, stat) in a.processes.merging(b.processes, uniquingKeysWith: { $1 }) where stat.parent == postmaster {
            pgProcesses.insert(pid)
        }
        if let postmaster {
            var pg = used(postmaster)
            pg += max(0, (b.processes[postmaster]?.childrenCPU ?? 0) - (a.processes[postmaster]?.childrenCPU ?? 0))
            pg += pgProcesses.reduce(0) { $0 + used($1) }
            postgres = pg / wall
            ours.formUnion(pgProcesses)
            ours.insert(postmaster)
        } else {
            // Between runs PostgreSQL idles; still not "other work".
            ours.formUnion(b.processes.filter { $0.value.parent == postmasterPID }.map(\.key))
            ours.insert(postmasterPID)
        }
        machine = (b.machine.busy - a.machine.busy) / wall
        softirq = (b.machine.softirq - a.machine.softirq) / wall
        other = max(0, machine - generator - collectors.reduce(0, +) - (postgres ?? 0) - softirq)
        // Only processes still running at the end can be named (a compiler that ended
        // meanwhile is in "other" but not here).
        var byName: [String: Double] = [:]
        for (pid, stat) in b.processes where !ours.contains(pid) {
            byName[stat.name, default: 0] += max(0, stat.cpu - (a.processes[pid]?.cpu ?? 0)) / wall
        }
        otherTop = byName.filter { $0.value >= 0.05 }.sorted { $0.value > $1.value }.prefix(3).map { ($0.key, $0.value) }
    }
}

// MARK: Material: certificates, KEK, PostgreSQL cluster, template databases

guard FileManager.default.isExecutableFile(atPath: collectorBinary) else {
    FileHandle.standardError.write(Data("custos-bench-collectors: no collector binary at \(collectorBinary) (build the custos-collector product, or pass --collector PATH)\n".utf8))
    exit(2)
}
try requireTool("sqlite3")
let work = try TempDir("custos-bench-collectors")
let pki = try makeTestPKI(in: work.path)
let pin = try SPKIPin(try pki.pin("leaf"))
let kekFiles = try makeTestKEK(in: work.path)
let kek = try KEKPublicKey(pemFile: kekFiles.publicKey)
let kekPEM = try String(contentsOfFile: kekFiles.publicKey, encoding: .utf8)
let cpuCount = ProcessInfo.processInfo.activeProcessorCount

out("Collectors: \(agentCount) agents, each its own pinned TLS connection to a real custos-collector process on 127.0.0.1")
out("   upload: \(blobsPerRequest) sealed blobs of \(blobBytes) B each (Envelope records); window \(windowSeconds) s per run; \(rounds) rounds; \(cpuCount) cores shared by everything")
out("PostgreSQL: starting a throwaway cluster (fsync on) …")
let cluster = try PostgresCluster(fsync: true)
let postmasterPID: Int32 = try {
    let text = try String(contentsOfFile: cluster.dataDirectory + "/postmaster.pid", encoding: .utf8)
    guard let first = text.split(separator: "\n").first, let pid = Int32(first) else {
        throw BenchError("\(cluster.dataDirectory)/postmaster.pid: no process id on its first line")
    }
    return pid
}()
let pgPassword = try cluster.createRole("custos")
let passwordFile = work.file("pg.password")
try (pgPassword + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
chmod(passwordFile, 0o600)

/// One token per agent, the same in every database (their SHA-256 hashes are imported as
/// `custos db migrate` copies agents), so one client per agent serves every set-up.
let tokens = (0..<agentCount).map { _ in AgentToken.new() }

/// Puts the agents `agent-0` … (with ``tokens``) and the active KEK into `location`.
func fillTemplate(_ location: StorageLocation) async throws {
    let now = Int64(Date().timeIntervalSince1970 * 1000)
    let credentials = try tokens.indices.map { i in
        AgentCredential(id: try AgentID("agent-\(i)"), tokenHash: AgentToken.hash(tokens[i]), createdAtMs: now)
    }
    try await StorageOpener.withStorage(location, logger: quiet) { storage in
        _ = try await storage.registerKEK(KEKRegistration(pubDatafile: nil, publicKeyPEM: kekPEM, privDatafile: nil,
                                                          privEncrypted: false, active: true, kekID: nil))
        guard try await storage.importAgents(credentials) == agentCount else {
            throw BenchError("\(location): not every agent was imported")
        }
    }
}
out("Templates: \(agentCount) agents and one active KEK in SQLite and in PostgreSQL …")
let sqliteTemplate = work.file("template.db")
try await fillTemplate(.sqlite(path: sqliteTemplate))
let pgTemplate = try cluster.createDatabase(owner: "custos")
try await fillTemplate(try StorageLocation(cluster.url(database: pgTemplate, user: "custos"), passwordFile: passwordFile))

/// One DEK per agent for the whole program (each run's fresh database gets its DEK record in
/// the warm-up upload); blob ids are random, so no run repeats another's.
let sessions = try (0..<agentCount).map { try DEKSession(kek: kek, agentID: "agent-\($0)") }
let plaintext = randomData(blobBytes)

// MARK: A run

enum Backend: String { case sqlite = "SQLite", postgres = "PostgreSQL" }
struct SetUp: Hashable {
    let backend: Backend
    let collectors: Int
    var name: String { "\(backend.rawValue) ×\(collectors)" }
}

/// Errors of a run, by kind (all must be zero).
struct Errors: Sendable {
    /// Answers other than 200/422, by HTTP status.
    var statuses: [Int: Int] = [:]
    /// TCP connect, TLS handshake or certificate (pin) failures.
    var connections = 0
    /// Requests that broke or timed out after connecting.
    var broken = 0
    /// Unreadable answers, and any other failure (with the first message).
    var other = 0
    var firstMessage: String?
    /// Records answered otherwise than `stored` (refused, or `duplicate` of a fresh id).
    var notStored = 0
    /// Collector log lines at warning level or above.
    var logWarnings = 0

    var total: Int { statuses.values.reduce(0, +) + connections + broken + other + notStored + logWarnings }
    mutating func add(_ e: Errors) {
        statuses.merge(e.statuses, uniquingKeysWith: +)
        connections += e.connections; broken += e.broken; other += e.other; notStored += e.notStored
        logWarnings += e.logWarnings
        firstMessage = firstMessage ?? e.firstMessage
    }
    mutating func record(_ error: any Error) {
        if let t = error as? TransportError {
            switch t.code {
            case .rejected: statuses[t.httpStatus ?? 0, default: 0] += 1
            case .connect, .handshake, .peerRefused: connections += 1
            case .io: broken += 1
            default: other += 1
            }
        } else {
            other += 1
        }
        firstMessage = firstMessage ?? "\(error)"
    }
    var summary: String {
        var parts = statuses.sorted { $0.key < $1.key }.map { "HTTP \($0.key): \($0.value)" }
        parts += [("failed connections", connections), ("broken requests", broken), ("other failures", other),
                  ("records not stored", notStored), ("collector log warnings", logWarnings)].filter { $0.1 > 0 }.map { "\($0.0): \($0.1)" }
        return parts.isEmpty ? "none" : parts.joined(separator: ", ") + (firstMessage.map { "; first: \($0)" } ?? "")
    }
}

/// What one agent saw in a run.
struct Tally: Sendable {
    var requests = 0        // acknowledged within the window
    var answered = 0        // every upload of the measured phase that was answered, late ones too
    var captures = 0        // records stored by those
    var latencies: [Double] = []
    var storedTotal = 0     // every record answered `stored`, warm-up and late answers included
    var errors = Errors()
}

/// What a run measured.
struct RunResult {
    let setUp: SetUp
    let requestsPerSecond: Double
    let capturesPerSecond: Double
    let p50: Double, p99: Double, max: Double
    let warmUpSeconds: Double
    /// Cores used over the window (from its start until the last answer).
    let cpu: CPUUse
    /// Multiplies cores into CPU milliseconds per answered upload.
    let cpuMillisecondsPerRequest: Double
    /// PostgreSQL's WAL syncs per answered upload (below 1: commits shared a sync).
    let walSyncsPerUpload: Double?
    let errors: Errors
}

/// A collector could not listen on its slot's port (another program took it meanwhile).
struct PortTaken: Error {}

/// A `custos-collector` process started from a config file on a given port of 127.0.0.1.
@MainActor final class CollectorProcess {
    let process: BackgroundProcess
    let port: Int
    let name: String

    /// Starts it and waits (at most 60 s) for its "collector listening" log line.
    /// - Throws: ``PortTaken`` when it cannot listen on `port`; ``BenchError`` with its log
    ///   when it stops or does not listen in time.
    init(index: Int, port: Int, database: [String], in dir: String, maxConnections: Int) async throws {
        name = "collector \(index + 1)"
        self.port = port
        let config = dir + "/collector-\(index).cfg"
        try ([
            "listen=127.0.0.1:\(port)",
            "tls-cert=\(pki.chain("leaf"))",
            "tls-key=\(pki.key("leaf"))",
            "max-connections=\(maxConnections)",
        ] + database).joined(separator: "\n").appending("\n").write(toFile: config, atomically: true, encoding: .utf8)
        process = try BackgroundProcess(collectorBinary, ["--config", config], logPath: dir + "/collector-\(index).log")
        let deadline = clock.now.advanced(by: .seconds(60))
        while !process.log.contains("collector.port=\(port)") {
            guard process.isRunning, clock.now < deadline else {
                if process.log.contains("cannot listen there") { throw PortTaken() }
                throw BenchError("\(name) did not start listening on port \(port) within 60 s; its log:\n\(SafeText.escaped(process.log))")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// SIGTERM, then waits (off the pool) up to 60 s for a graceful exit.
    /// - Throws: when it does not exit, or exits non-zero.
    func stop() async throws {
        process.send(SIGTERM)
        let p = process
        let status = try await offPool { p.waitExit(timeout: 60) }
        guard let status else { throw BenchError("\(name) did not stop within 60 s of SIGTERM") }
        guard status == 0 else { throw BenchError("\(name) exited \(status); its log:\n\(SafeText.escaped(process.log))") }
    }

    /// Log lines at warning level or above (StreamLogHandler: `TIME LEVEL LABEL: …`).
    var problems: [String] {
        process.log.split(separator: "\n").filter { line in
            [" warning ", " error ", " critical "].contains { line.contains($0) }
        }.map { SafeText.escaped(String($0)) }
    }
}

/// How often PostgreSQL has synced its WAL to disk so far (`pg_stat_wal.wal_sync`, PostgreSQL
/// 14+; every server process adds its count at most once a second, so a delta over a few
/// seconds is close, not exact).
/// - Throws: ``TestSupportError`` when psql fails; ``BenchError`` when the answer is not a number.
@MainActor func walSyncs() throws -> Int {
    let text = try cluster.psql("SELECT wal_sync FROM pg_stat_wal;").trimmingCharacters(in: .whitespacesAndNewlines)
    guard let n = Int(text) else { throw BenchError("pg_stat_wal.wal_sync: expected a number, found \(SafeText.quoted(text))") }
    return n
}

/// The captures and DEK records stored at `location` (opened, counted, closed).
func storedCounts(_ location: StorageLocation) async throws -> (captures: Int, deks: Int) {
    try await StorageOpener.withStorage(location, createIfMissing: false, logger: quiet) { try await $0.counts() }
}

var runNumber = 0

/// The port of each collector slot (collector 1, 2, 3), the same in every run, so an agent's
/// client (whose making loads the system's trust store: ~5 ms each) is made once per slot.
var slotPorts = try (0..<3).map { _ in try freeLocalPort() }
/// Clients by slot, then agent index.
var clientCache: [Int: [Int: CollectorClient]] = [:]

/// Agent `agent`'s client for the collector in `slot` (made on first use; a closed client
/// connects again on its next request).
@MainActor func client(agent i: Int, slot: Int) throws -> CollectorClient {
    if let c = clientCache[slot]?[i] { return c }
    let c = try CollectorClient(configuration: TransportConfiguration(
        server: try CollectorURL("https://127.0.0.1:\(slotPorts[slot])"),
        agentID: try AgentID("agent-\(i)"), agentToken: tokens[i], policy: TLSPolicy(pins: [pin])), logger: quiet)
    clientCache[slot, default: [:]][i] = c
    return c
}

/// Starts the collectors of `setUp` on a fresh database, runs the warm-up and the measured
/// window, stops the collectors and checks what the database holds.
/// - Throws: ``BenchError`` or the helpers' errors when a set-up step fails (a collector that
///   does not start, answer health or stop cleanly, a database that cannot be made); errors of
///   uploads are counted in the result instead.
@MainActor func run(_ setUp: SetUp) async throws -> RunResult {
    runNumber += 1
    let dir = work.file("run-\(runNumber)")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }

    // A fresh database holding the agents and the KEK.
    let database: [String], location: StorageLocation
    var pgDatabase: String?
    switch setUp.backend {
    case .sqlite:
        let path = dir + "/collector.db"
        try runChecked(["sqlite3", sqliteTemplate, "VACUUM INTO '\(path)'"])
        database = ["database=\(path)"]
        location = .sqlite(path: path)
    case .postgres:
        let name = "custos_run_\(runNumber)"
        // The template's last sessions may take a moment to end after its storage closed.
        var attempt = 0
        while true {
            let r = try cluster.psqlResult("CREATE DATABASE \(name) TEMPLATE \(pgTemplate) OWNER custos;")
            if r.status == 0 { break }
            attempt += 1
            guard attempt < 50, r.stderrString.contains("being accessed by other users") else {
                throw BenchError("CREATE DATABASE \(name): \(r.stderrString)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        pgDatabase = name
        let url = cluster.url(database: name, user: "custos")
        database = ["database=\(url)", "database-password-file=\(passwordFile)"]
        location = try StorageLocation(url, passwordFile: passwordFile)
    }

    var collectors: [CollectorProcess] = []
    for slot in 0..<setUp.collectors {
        for attempt in 1...3 {
            do {
                collectors.append(try await CollectorProcess(index: slot, port: slotPorts[slot], database: database, in: dir,
                                                             maxConnections: agentCount / setUp.collectors + 64))
                break
            } catch is PortTaken where attempt < 3 {
                out("   collector \(slot + 1): port \(slotPorts[slot]) was taken meanwhile; another free port")
                slotPorts[slot] = try freeLocalPort()
                clientCache[slot] = [:]
            }
        }
    }
    // Each collector answers health with its storage up and the KEK loaded.
    for c in collectors {
        let client = try CollectorClient(configuration: TransportConfiguration(
            server: try CollectorURL("https://127.0.0.1:\(c.port)"), agentID: try AgentID("agent-0"), agentToken: tokens[0],
            policy: TLSPolicy(pins: [pin])), logger: quiet)
        let health = try await client.health(timeout: .seconds(30))
        await client.close()
        guard health.status == "ok", health.activeKEKs == 1 else {
            throw BenchError("\(c.name): health \(health.status), \(health.activeKEKs) active KEKs (expected ok, 1)")
        }
    }
    // Agent i talks to collector i mod n.
    let clients = try (0..<agentCount).map { i in try client(agent: i, slot: i % setUp.collectors) }

    // Warm-up: every agent connects (TLS handshake) and sends its DEK record and one blob.
    let warmStart = clock.now
    let warm = await withTaskGroup(of: Tally.self) { group in
        for i in 0..<agentCount {
            let client = clients[i], session = sessions[i], plaintext = plaintext
            group.addTask {
                var t = Tally()
                do {
                    let blob = try session.seal(plaintext, kind: .keystrokes, captureTimeMs: 1_700_000_000_000)
                    let r = try await client.upload(records: [session.record.serialized, blob.serialized], timeout: .seconds(120))
                    let stored = r.results.filter { $0.status == .stored }.count
                    t.storedTotal += stored - 1  // the DEK record is not a capture
                    t.errors.notStored += 2 - stored
                } catch {
                    t.errors.record(error)
                }
                return t
            }
        }
        var all: [Tally] = []
        for await t in group { all.append(t) }
        return all
    }
    let warmUpSeconds = seconds(warmStart.duration(to: clock.now))

    // The measured window: every agent uploads back to back until the deadline.
    let walBefore = setUp.backend == .postgres ? try walSyncs() : 0
    let before = CPUSample()
    let start = clock.now
    let deadline = start.advanced(by: .seconds(windowSeconds))
    let measured = await withTaskGroup(of: Tally.self) { group in
        for i in 0..<agentCount {
            let client = clients[i], session = sessions[i], plaintext = plaintext, k = blobsPerRequest
            group.addTask {
                var t = Tally()
                var time: Int64 = 1_700_000_001_000
                while clock.now < deadline {
                    do {
                        var records: [Data] = []
                        for _ in 0..<k {
                            time += 1
                            records.append(try session.seal(plaintext, kind: .keystrokes, captureTimeMs: time).serialized)
                        }
                        let t0 = clock.now
                        let r = try await client.upload(records: records, timeout: .seconds(120))
                        let t1 = clock.now
                        let stored = r.results.filter { $0.status == .stored }.count
                        t.storedTotal += stored
                        t.answered += 1
                        t.errors.notStored += k - stored
                        if t1 <= deadline, stored == k {
                            t.requests += 1
                            t.captures += stored
                            t.latencies.append(seconds(t0.duration(to: t1)))
                        }
                    } catch {
                        t.errors.record(error)
                        // A failing collector must not turn this loop into a busy spin.
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                }
                return t
            }
        }
        var all: [Tally] = []
        for await t in group { all.append(t) }
        return all
    }
    let after = CPUSample()
    let walAfter = setUp.backend == .postgres ? try walSyncs() : 0
    let window = Double(windowSeconds)
    for c in clients { await c.close() }

    var errors = Errors(), storedTotal = 0, requests = 0, answered = 0, captures = 0, latencies: [Double] = []
    for t in warm + measured {
        errors.add(t.errors)
        storedTotal += t.storedTotal
        requests += t.requests
        answered += t.answered
        captures += t.captures
        latencies += t.latencies
    }
    latencies.sort()

    for c in collectors { try await c.stop() }
    for c in collectors {
        for line in c.problems.prefix(5) { out("   \(c.name) logged: \(line)") }
        errors.logWarnings += c.problems.count
        if !c.problems.isEmpty { errors.firstMessage = errors.firstMessage ?? "\(c.name) logged warnings" }
    }
    // What the database holds must be what was acknowledged as stored.
    let counted = try await storedCounts(location)
    if counted.captures != storedTotal || counted.deks != agentCount {
        errors.other += 1
        errors.firstMessage = errors.firstMessage
            ?? "\(setUp.name): the database holds \(counted.captures) captures and \(counted.deks) DEK records; \(storedTotal) captures and \(agentCount) DEK records were acknowledged as stored"
    }
    if let pgDatabase { try cluster.psql("DROP DATABASE \(pgDatabase);") }

    let cpu = CPUUse(from: before, to: after, collectors: collectors.map(\.process.pid),
                     postmaster: setUp.backend == .postgres ? postmasterPID : nil)
    return RunResult(setUp: setUp, requestsPerSecond: Double(requests) / window, capturesPerSecond: Double(captures) / window,
                     p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99), max: latencies.last ?? 0,
                     warmUpSeconds: warmUpSeconds, cpu: cpu,
                     cpuMillisecondsPerRequest: Double(answered) > 0 ? seconds(before.at.duration(to: after.at)) * 1000 / Double(answered) : 0,
                     walSyncsPerUpload: setUp.backend == .postgres && answered > 0 ? Double(walAfter - walBefore) / Double(answered) : nil,
                     errors: errors)
}

/// Median milliseconds of one 8 KiB `pwrite` + `fdatasync` (man 2 fdatasync) over `count` tries,
/// each overwriting a block of a file in `dir` written and synced before (as a write-ahead log
/// is reused: no size change, so no file-system metadata to sync): about what one durable
/// commit waits for at that moment, which a single writer that syncs every upload (SQLite,
/// synchronous=FULL: `perf stat` counted one fdatasync per upload) pays once per upload.
/// - Throws: ``BenchError`` naming the call that failed.
func syncLatency(in dir: String, count: Int = 200) throws -> Double {
    let path = dir + "/sync-probe.bin"
    let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw BenchError("open \(path): errno \(errno)") }
    defer { close(fd); unlink(path) }
    let block = [UInt8](repeating: 0x5A, count: 8192)
    for i in 0..<count {
        guard pwrite(fd, block, block.count, off_t(i * block.count)) == block.count else { throw BenchError("pwrite \(path): errno \(errno)") }
    }
    guard fsync(fd) == 0 else { throw BenchError("fsync \(path): errno \(errno)") }
    var samples: [Double] = []
    for i in 0..<count {
        let start = clock.now
        guard pwrite(fd, block, block.count, off_t(i * block.count)) == block.count else { throw BenchError("pwrite \(path): errno \(errno)") }
        guard fdatasync(fd) == 0 else { throw BenchError("fdatasync \(path): errno \(errno)") }
        samples.append(seconds(start.duration(to: clock.now)) * 1000)
    }
    return median(samples)
}

func cores(_ x: Double) -> String { String(format: "%.2f", x) }
/// `text` padded with spaces to `width` characters (left-aligned), or right-aligned when `width` < 0.
func pad(_ text: String, _ width: Int) -> String {
    let fill = String(repeating: " ", count: max(0, abs(width) - text.count))
    return width < 0 ? fill + text : text + fill
}

// MARK: Rounds

let setUps = [SetUp(backend: .sqlite, collectors: 1), SetUp(backend: .postgres, collectors: 1),
              SetUp(backend: .postgres, collectors: 2), SetUp(backend: .postgres, collectors: 3)]
    .filter { chosenSetUps.contains($0.backend == .sqlite ? "sqlite1" : "pg\($0.collectors)") }
var results: [SetUp: [RunResult]] = [:]
var syncTimes: [Double] = []
var totalErrors = Errors()
var failure: (any Error)?
do {
    for round in 0..<rounds {
        out("\nRound \(round + 1) of \(rounds)")
        let sync = try syncLatency(in: work.path)
        syncTimes.append(sync)
        out(String(format: "   disk: one 8 KiB overwrite + fdatasync %.2f ms (median of 200; a writer that syncs each upload alone manages about %@/s)", sync, grouped(1000 / sync)))
        for k in 0..<setUps.count {
            let setUp = setUps[(k + round) % setUps.count]
            let r = try await run(setUp)
            results[setUp, default: []].append(r)
            totalErrors.add(r.errors)
            out("   " + pad(setUp.name, 15) + " " + String(format: "%@ requests/s, %@ captures/s; ack p50 %.0f ms, p99 %.0f ms, max %.0f ms; warm-up (TLS handshakes) %.1f s",
                       grouped(r.requestsPerSecond), grouped(r.capturesPerSecond),
                       r.p50 * 1000, r.p99 * 1000, r.max * 1000, r.warmUpSeconds))
            let c = r.cpu
            let top = c.otherTop.isEmpty ? "" : " (still running: " + c.otherTop.map { "\($0.name) \(cores($0.cores))" }.joined(separator: ", ") + ")"
            let wal = r.walSyncsPerUpload.map { String(format: "; PostgreSQL WAL syncs per upload %.2f", $0) } ?? ""
            out("   " + pad("", 15) + " cores: generator \(cores(c.generator)), collectors \(c.collectors.map(cores).joined(separator: " + ")), PostgreSQL \(c.postgres.map(cores) ?? "-"), softirq \(cores(c.softirq)), other work \(cores(c.other))\(top); machine \(cores(c.machine)) of \(cpuCount)\(wal); errors: \(r.errors.summary)")
        }
    }
} catch {
    failure = error
}

// MARK: Summary

if !results.isEmpty {
    out("\nMedians of \(rounds) rounds (\(agentCount) agents, \(windowSeconds) s windows, \(blobsPerRequest) × \(blobBytes) B per upload):")
    out("   " + pad("set-up", 15) + "  requests/s  captures/s  ack p50  ack p99 | cores: generator collectors PostgreSQL softirq other | CPU ms/upload: generator collectors PostgreSQL | WAL syncs/upload")
    var medianRate: [SetUp: Double] = [:]
    for setUp in setUps {
        guard let rs = results[setUp] else { continue }
        let rate = median(rs.map(\.requestsPerSecond))
        medianRate[setUp] = rate
        let pg = setUp.backend == .postgres
        func ms(_ cores: (RunResult) -> Double) -> Double { median(rs.map { cores($0) * $0.cpuMillisecondsPerRequest }) }
        var line = "   " + pad(setUp.name, 15) + " " + pad(grouped(rate), -11) + " " + pad(grouped(median(rs.map(\.capturesPerSecond))), -11)
        line += String(format: " %5.0f ms %5.0f ms | ", median(rs.map(\.p50)) * 1000, median(rs.map(\.p99)) * 1000)
        line += pad(cores(median(rs.map(\.cpu.generator))), -16) + " " + pad(cores(median(rs.map { $0.cpu.collectors.reduce(0, +) })), -10)
        line += " " + pad(pg ? cores(median(rs.map { $0.cpu.postgres ?? 0 })) : "-", -10)
        line += " " + pad(cores(median(rs.map(\.cpu.softirq))), -7) + " " + pad(cores(median(rs.map(\.cpu.other))), -5) + " | "
        line += pad(String(format: "%.2f", ms { $0.cpu.generator }), -23) + " " + pad(String(format: "%.2f", ms { $0.cpu.collectors.reduce(0, +) }), -10)
        line += " " + pad(pg ? String(format: "%.2f", ms { $0.cpu.postgres ?? 0 }) : "-", -10)
        line += " | " + pad(pg ? String(format: "%.2f", median(rs.map { $0.walSyncsPerUpload ?? 0 })) : "-", -16)
        out(line)
    }
    let sync = median(syncTimes)
    out(String(format: "   disk: one 8 KiB overwrite + fdatasync %.2f ms (median of the rounds)", sync))
    let sqlite1 = SetUp(backend: .sqlite, collectors: 1), pg1 = SetUp(backend: .postgres, collectors: 1)
    if let s = medianRate[sqlite1], let p = medianRate[pg1], s > 0 {
        let ratio = p / s
        out(String(format: "   PostgreSQL ×1 ÷ SQLite ×1 (requests/s): %.2f (goal ≥ 0.8: %@)", ratio, ratio >= 0.8 ? "met" : "MISSED"))
    }
    if let one = medianRate[pg1], one > 0 {
        let scaling = [2, 3].compactMap { n in medianRate[SetUp(backend: .postgres, collectors: n)].map { String(format: "×%d ÷ ×1 = %.2f", n, $0 / one) } }
        if !scaling.isEmpty { out("   PostgreSQL, collectors: " + scaling.joined(separator: ", ") + " (requests/s)") }
    }
}
try? cluster.stop()
cluster.shutdown()
work.remove()
if let failure {
    out("\nFAILED: \(failure)")
    exit(1)
}
out("\nErrors over all runs: \(totalErrors.summary)")
if totalErrors.total > 0 {
    out("FAILED: the run had errors (above); its figures do not count")
    exit(1)
}
