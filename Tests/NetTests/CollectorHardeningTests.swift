import Collector
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport
import Transport
import Wire

/// Holds idle TLS connections (Python's `ssl`): opens COUNT connections one after the other, each
/// through its handshake (5 s at most), prints `{"held": N, "refused": N, "errors": [...]}`,
/// then keeps the handshaken ones open, idle, until the file RELEASE exists (120 s at most),
/// closes them and exits. argv: host port count release-file [max-failures: stop opening after
/// that many failed].
let idleConnectionsScript = #"""
import json, os, socket, ssl, sys, time
host, port, count, release = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
max_failures = int(sys.argv[5]) if len(sys.argv) > 5 else count
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
held, refused, errors = [], 0, []
for i in range(count):
    try:
        raw = socket.create_connection((host, port), timeout=5)
        held.append(ctx.wrap_socket(raw))
    except (OSError, ssl.SSLError) as e:
        refused += 1
        errors.append(repr(e))
        if refused >= max_failures:
            break
print(json.dumps({"held": len(held), "refused": refused, "errors": errors[:3]}), flush=True)
end = time.monotonic() + 120
while not os.path.exists(release) and time.monotonic() < end:
    time.sleep(0.1)
for s in held:
    s.close()
"""#

struct IdleConnections: Decodable {
    let held: Int
    let refused: Int
    let errors: [String]
}

/// Starts the idle-connection holder against `port`; returns it and its first line once printed.
func holdIdleConnections(port: Int, count: Int, maxFailures: Int? = nil, dir: TempDir, name: String) async throws -> (BackgroundProcess, IdleConnections, release: String) {
    try requireTool("python3")
    let release = dir.file("\(name).release")
    let holder = try BackgroundProcess("/usr/bin/env", ["python3", "-c", idleConnectionsScript, "127.0.0.1", "\(port)",
                                                        "\(count)", release] + (maxFailures.map { ["\($0)"] } ?? []), logPath: dir.file("\(name).out"))
    var line: String?
    for _ in 0..<1200 where line == nil {
        line = holder.log.split(separator: "\n").first { $0.hasPrefix("{") }.map(String.init)
        if line == nil { try await Task.sleep(for: .milliseconds(100)) }
    }
    let text = try #require(line, "the connection holder printed nothing: \(holder.log)")
    return (holder, try JSONDecoder().decode(IdleConnections.self, from: Data(text.utf8)), release)
}

/// Defects found by an attack pass (issue 12): KEKs dropped on a failed read, no connection cap,
/// raw agent ids in log lines, and one agent's answers revealing another agent's ids.
@Suite struct CollectorHardeningTests {
    // MARK: KEK registry keeps the last good state

    /// A `pub_datafile` that cannot be read (here a directory where the file was: `read` fails
    /// with `EISDIR`, a real I/O error like the `EMFILE` of the report) keeps its KEK active, with
    /// one error line; reading it again logs the recovery once; a file really gone is honoured.
    /// Before, the first failed read dropped the KEK and every upload got `unknown-kek`.
    @Test func unreadableKeyFileKeepsItsKEK() async throws {
        let f = try await NetFixture.start("kek-io", registerKEK: false)
        defer { Task { await f.stop() } }
        let pub = f.dir.file("publickey.crt")
        try FileManager.default.copyItem(atPath: f.kekPublic, toPath: pub)
        let id = try KEKPublicKey(pemFile: pub).id
        _ = try await f.collector.storage.registerKEK(pathOnlyKEK(pub))
        let registry = f.collector.server.registry
        await registry.refresh()
        #expect(registry.activeIDs == [id])

        // The file becomes unreadable: still active, after several polls; one line says so.
        try FileManager.default.moveItem(atPath: pub, toPath: pub + ".away")
        try FileManager.default.createDirectory(atPath: pub, withIntermediateDirectories: false)
        for _ in 0..<3 { await registry.refresh() }
        #expect(registry.activeIDs == [id], "a failed read of the KEK file deactivated the KEK")
        #expect(f.logs.count("cannot read its pub_datafile") == 1, "\(f.logs.text)")
        #expect(f.logs.contains("Is a directory"), "\(f.logs.text)")
        #expect(!f.logs.contains("KEK no longer active"))
        let (records, _) = try f.records(count: 2)
        #expect(try await f.client().upload(stream(records)).results.allSatisfy { $0.status == .stored })

        // Readable again: the recovery, once.
        try FileManager.default.removeItem(atPath: pub)
        try FileManager.default.moveItem(atPath: pub + ".away", toPath: pub)
        for _ in 0..<3 { await registry.refresh() }
        #expect(f.logs.count("pub_datafile read again") == 1, "\(f.logs.text)")
        #expect(registry.activeIDs == [id])

        // Really gone: honoured at once.
        try FileManager.default.removeItem(atPath: pub)
        await registry.refresh()
        #expect(registry.activeIDs.isEmpty)
        #expect(f.logs.count("KEK no longer active") == 1)
        #expect(f.logs.contains("does not exist"), "\(f.logs.text)")
        let (more, _) = try f.records(count: 1)
        let refused = try await f.client().upload(stream(more)).results
        #expect(refused.allSatisfy { $0.reason == .unknownKEK }, "\(refused)")
    }

    /// The `encryption_kek` table cannot be read (here renamed away by `sqlite3`: a real database
    /// error): every KEK known stays active, the failure is logged once however many polls fail,
    /// and the recovery once. Before, each poll logged the error again and no recovery was said.
    @Test func unreadableTableKeepsTheKEKs() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("kek-table")
        defer { Task { await f.stop() } }
        let registry = f.collector.server.registry
        let active = registry.activeIDs
        #expect(active.count == 1)
        let db = f.collector.databasePath
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", db, "ALTER TABLE encryption_kek RENAME TO kek_away;"])
        for _ in 0..<3 { await registry.refresh() }
        #expect(registry.activeIDs == active)
        #expect(f.logs.count("cannot read encryption_kek") == 1, "\(f.logs.text)")
        let (records, _) = try f.records(count: 1)
        #expect(try await f.client().upload(stream(records)).results.allSatisfy { $0.status == .stored })
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", db, "ALTER TABLE kek_away RENAME TO encryption_kek;"])
        for _ in 0..<3 { await registry.refresh() }
        #expect(f.logs.count("encryption_kek can be read again") == 1, "\(f.logs.text)")
        #expect(registry.activeIDs == active)
        #expect(!f.logs.contains("KEK no longer active"))
    }

    /// The reported case with the real executable: under `prlimit --nofile=64` and idle TLS
    /// connections taking every descriptor, the periodic `encryption_kek` re-read fails with
    /// EMFILE. The KEK stays active (logged once, never "KEK no longer active"), and once the
    /// connections go an agent's upload is stored.
    @Test func executableKeepsKEKsUnderDescriptorExhaustion() async throws {
        try requireTool("prlimit")
        let binary = try builtProduct("custos-collector")
        let dir = try TempDir("custos-collector-emfile")
        defer { dir.remove() }
        let (pki, kek) = try sharedMaterial.get()
        let port = try freeLocalPort()
        try writeCollectorConfig(dir.file("collector.cfg"), pki: pki, listen: "127.0.0.1:\(port)",
                                 extra: "kek-poll-seconds=1\nidle-timeout-seconds=300\nmax-connections=100000")
        let store = try SQLiteStorage(path: dir.file("collector.db"))
        _ = try await store.registerKEK(pathOnlyKEK(kek.publicKey))
        let token = try await store.addAgent(try AgentID("emfile-agent")).revealed
        await store.close()
        let collector = try BackgroundProcess("/usr/bin/prlimit", ["--nofile=64:64", binary, "--config", dir.file("collector.cfg")],
                                              logPath: dir.file("collector.log"))
        defer {
            collector.send(SIGTERM)
            _ = collector.waitExit(timeout: 10)
        }
        #expect(try await waitUntil(timeout: 60) { collector.log.contains("collector listening") }, "\(collector.log)")
        #expect(collector.log.contains("KEK active"))

        let (holder, idle, release) = try await holdIdleConnections(port: port, count: 200, maxFailures: 2, dir: dir, name: "emfile")
        defer { try? Data().write(to: URL(fileURLWithPath: release)); _ = holder.waitExit(timeout: 30) }
        #expect(idle.held > 20 && idle.refused > 0, "\(idle): the descriptors were not exhausted")
        // Several polls fail meanwhile (the key file's open, or the database's, runs out of descriptors).
        #expect(try await waitUntil(timeout: 30) {
            collector.log.contains("Too many open files") || collector.log.contains("cannot read encryption_kek")
        }, "\(collector.log)")
        try await Task.sleep(for: .seconds(3))
        try Data().write(to: URL(fileURLWithPath: release))
        _ = holder.waitExit(timeout: 30)

        let client = try CollectorClient(configuration: testTransport(
            serverURL: "https://127.0.0.1:\(port)", agentID: "emfile-agent", agentToken: token,
            pins: [try pki.pin("leaf")], caFile: nil), logger: LogCapture().logger("t"))
        defer { Task { await client.close() } }
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: kek.publicKey), agentID: "emfile-agent")
        let body = stream([.dekRecord(session.record), .blob(try session.seal(randomData(500), kind: .screen, captureTimeMs: 1))])
        var results: [RecordResult] = []
        for _ in 0..<50 where results.isEmpty {
            do { results = try await client.upload(body).results } catch { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(results.count == 2 && results.allSatisfy { $0.status == .stored }, "\(results)")
        let log = collector.log
        #expect(!log.contains("KEK no longer active"), "\(log)")
        // Logged once each, however many polls failed.
        let fileFailures = log.components(separatedBy: "cannot read its pub_datafile").count - 1
        let tableFailures = log.components(separatedBy: "cannot read encryption_kek").count - 1
        #expect(fileFailures <= 1 && tableFailures <= 1 && fileFailures + tableFailures >= 1, "\(log)")
    }

    // MARK: Connection limit

    /// With max-connections=N, N+k idle TLS connections: the k extra are closed before their
    /// handshake, one warning says so, and once the idle ones go an agent's upload is stored
    /// (the recovery logged once). Before, every connection was accepted (about 55 KB each).
    @Test func connectionsAboveTheLimitAreClosed() async throws {
        let limit = 8, extra = 4
        let f = try await NetFixture.start("max-conn", idleTimeout: .seconds(120), maxConnections: limit)
        defer { Task { await f.stop() } }
        let (holder, idle, release) = try await holdIdleConnections(port: f.collector.port, count: limit + extra,
                                                                   dir: f.dir, name: "idle")
        defer { _ = holder.waitExit(timeout: 30) }
        #expect(idle.held == limit && idle.refused == extra, "\(idle)")
        #expect(f.collector.server.openConnections == limit)
        #expect(f.logs.count("max-connections") == 1, "\(f.logs.text)")
        try Data().write(to: URL(fileURLWithPath: release))
        #expect(holder.waitExit(timeout: 30) != nil)
        #expect(try await waitUntil(timeout: 30) { f.collector.server.openConnections == 0 })

        let (records, _) = try f.records(count: 2)
        #expect(try await f.client().upload(stream(records)).results.allSatisfy { $0.status == .stored })
        #expect(f.logs.count("accepting connections again") == 1, "\(f.logs.text)")
        #expect(f.logs.count("connection refused: max-connections") == 1, "\(f.logs.text)")
    }

    // MARK: Log injection

    /// A record whose header names an agent id with ESC, BEL and a newline (uploaded by another,
    /// authenticated agent): the `agent-mismatch` warning holds no raw control character.
    /// Before, the header's id reached the log line raw.
    @Test func headerAgentIDIsEscapedInTheLog() async throws {
        let f = try await NetFixture.start("log-inject")
        defer { Task { await f.stop() } }
        let evil = "x\u{1B}]0;owned\u{07}\nfake line"
        let (records, _) = try f.records(count: 1, agent: evil)
        let results = try await f.client().upload(stream(records)).results
        #expect(results.allSatisfy { $0.reason == .agentMismatch }, "\(results)")
        let lines = f.logs.all.filter { $0.contains("record refused") }
        #expect(lines.count == 2)
        for line in lines {
            #expect(!line.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "raw control character in: \(line)")
            #expect(line.contains("\\u{1B}]0;owned\\u{7}\\u{A}fake line"), "\(line)")
        }
    }

    /// `.` and `..` are refused as agent ids (they name directories on the reviewer's machine):
    /// the storage takes only `AgentID`s, whose one validator refuses them with a message naming
    /// what is expected.
    @Test func dotAgentIDsAreRefused() throws {
        for id in [".", ".."] {
            #expect { _ = try AgentID(id) } throws: { error in
                (error as? ValueError)?.message.contains("not '.' or '..'") == true
            }
        }
    }

    // MARK: Ids across agents

    /// Agent B names agent A's DEK id in a blob: refused `unknown-dek` and not stored. And every
    /// answer B gets for A's ids (A's DEK id in a blob, a DEK record or a blob reusing A's ids)
    /// is the answer it gets for ids never seen. Before, the blob was stored (and failed only at
    /// decryption), and `conflict` told B that A's ids exist.
    @Test func anotherAgentsIDsAreNeitherUsedNorRevealed() async throws {
        let f = try await NetFixture.start("cross-agent")
        defer { Task { await f.stop() } }
        // A (the fixture's agent) uploads a DEK record and a blob.
        let (aRecords, _) = try f.records(count: 1)
        #expect(try await f.client().upload(stream(aRecords)).results.allSatisfy { $0.status == .stored })
        guard case .dekRecord(let aDEK) = aRecords[0], case .blob(let aBlob) = aRecords[1] else {
            Issue.record("unexpected fixture records"); return
        }
        let aDEKID = Data(aDEK.dekID.bytes), aBlobID = Data(aBlob.header.blobID.bytes)
        let storage = f.collector.storage
        let aBlobBytes = try await storage.blob(aBlob.header.blobID)
        let aDEKBytes = try await storage.dekRecord(aDEK.dekID)

        // B, with its own token and DEK.
        let bID = "other-\(UInt32.random(in: 0...UInt32.max))"
        let bToken = try await storage.addAgent(try AgentID(bID)).revealed
        let b = try f.client(token: bToken, agentID: bID)
        let (bRecords, _) = try f.records(count: 3, agent: bID)
        guard case .dekRecord(let bDEK) = bRecords[0] else { Issue.record("no DEK record"); return }
        #expect(try await b.upload(stream([bRecords[0]])).results.first?.status == .stored)
        let before = try await f.storedCounts

        // Offsets (docs/FORMAT.md): prefix 10, suite 1; DEK record: DEK id at 11; blob: blob id
        // at 11, KEK id at 27, DEK id at 59.
        func with(_ data: Data, _ bytes: Data, at offset: Int) -> Data {
            var d = data
            d.replaceSubrange(d.startIndex + offset..<d.startIndex + offset + bytes.count, with: bytes)
            return d
        }
        func answer(_ record: Data) async throws -> RecordResult {
            let r = try #require(try await b.upload(record).results.first)
            // Everything but the record's own id.
            return RecordResult(index: r.index, id: nil, status: r.status, reason: r.reason, retryable: r.retryable, message: r.message)
        }
        func blob(_ i: Int) -> Data { bRecords[i].serialized }

        // 1. A blob of B naming A's DEK id, and one naming a DEK id never seen.
        let foreignDEK = try await answer(with(blob(1), aDEKID, at: 59))
        let unseenDEK = try await answer(with(blob(2), randomData(16), at: 59))
        #expect(foreignDEK.reason == .unknownDEK, "\(foreignDEK)")
        #expect(foreignDEK == unseenDEK)
        #expect(try await f.storedCounts.captures == before.captures, "a blob naming another agent's DEK was stored")

        // 2. A DEK record of B reusing A's DEK id, and one with a new DEK id.
        let foreignDEKRecord = try await answer(with(bDEK.serialized, aDEKID, at: 11))
        let unseenDEKRecord = try await answer(with(bDEK.serialized, randomData(16), at: 11))
        #expect(foreignDEKRecord == unseenDEKRecord, "\(foreignDEKRecord) vs \(unseenDEKRecord)")

        // 3. A blob of B (B's DEK) reusing A's blob id, and one with a new blob id.
        let foreignBlob = try await answer(with(blob(1), aBlobID, at: 11))
        let unseenBlob = try await answer(with(blob(3), randomData(16), at: 11))
        #expect(foreignBlob == unseenBlob, "\(foreignBlob) vs \(unseenBlob)")

        // A's records are untouched; the collector's log says what happened.
        #expect(try await storage.blob(aBlob.header.blobID) == aBlobBytes)
        #expect(try await storage.dekRecord(aDEK.dekID) == aDEKBytes)
        #expect(try await allCaptures(storage, CaptureQuery(agentID: try AgentID(bID))).count == 1, "only B's new blob")
        #expect(f.logs.count("belong to another agent") == 2, "\(f.logs.text)")
        await b.close()
    }
}
