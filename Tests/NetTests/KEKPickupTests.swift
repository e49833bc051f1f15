import Collector
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Spool
import Synchronization
import Testing
import TestSupport
import Transport
import Wire

/// New `encryption_kek` rows are seen at once (issue 14): an unknown KEK id in an upload makes
/// the registry re-read the table (rate-limited, shared), a storage change signal does too, and
/// a row may carry its public key itself.
@Suite struct KEKPickupTests {
    /// The seed's flow with the real uploader at its defaults: the KEK row is inserted with
    /// `sqlite3` just after the registry last read the table (here an upload with an unknown
    /// KEK made it re-read), and the agent's first upload right after is stored, in that one
    /// attempt. Before, the registry re-read at most once a second and otherwise answered
    /// `unknown-kek` at once: the agent then kept its records for the 30 s retry.
    @Test func aKEKInsertedJustBeforeTheFirstUploadIsUsedAtOnce() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("kek-at-once", registerKEK: false, kekPollInterval: .seconds(3600))
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (records, _) = try f.records(count: 6)
        _ = try UploaderTests.spool(records, into: spool)
        let client = try f.client()
        // Another upload of the same KEK, a moment before the insert: refused, and the registry
        // has just read the table.
        let (early, _) = try f.records(count: 1)
        #expect(try await client.upload(stream(early)).results.allSatisfy { $0.reason == .unknownKEK })

        let sql = "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '\(f.kekPublic)', '\(f.kekPrivate)');"
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", f.collector.databasePath, sql])
        let logs = LogCapture()
        let uploader = Uploader(queue: spool, client: try f.client(logger: logs.logger("transport")),
                                configuration: UploaderConfiguration(), logger: logs.logger("uploader"))
        let started = ContinuousClock.now
        let summary = try await uploader.uploadOnce()
        let took = started.duration(to: .now)
        #expect(summary.acknowledged == 7 && summary.refusedCount == 0, "\(summary)")
        #expect(try spool.stats().totalSpooled.count == 0, "one attempt delivered everything")
        #expect(took < .seconds(20), "the first upload took \(took); the agent's retry after unknown-kek is 30 s")
        #expect(try await f.storedCounts == (6, 1))
        #expect(f.logs.contains("KEK active"))
        await client.close()
    }

    /// Many uploads naming a KEK id nobody registered, all at once: each is answered
    /// `unknown-kek`, and the table is read at most once a second for all of them (the re-reads
    /// are shared), not once per upload or record.
    @Test func unknownKEKRereadsAreSharedAndRateLimited() async throws {
        let f = try await NetFixture.start("kek-shared", registerKEK: false, maxUploadsPerAgent: 16, kekPollInterval: .seconds(3600))
        defer { Task { await f.stop() } }
        let registry = f.collector.server.registry
        let clients = try (0..<12).map { _ in try f.client() }
        let bodies = try clients.map { _ in stream(try f.records(count: 3).records) }
        let before = registry.tableReads
        let started = ContinuousClock.now
        let answers = try await withThrowingTaskGroup(of: [RecordResult].self) { group in
            for (client, body) in zip(clients, bodies) {
                group.addTask { try await client.upload(body).results }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        let elapsed = started.duration(to: .now)
        #expect(answers.count == 12 * 4 && answers.allSatisfy { $0.reason == .unknownKEK && $0.retryable == true })
        let reads = registry.tableReads - before
        let allowed = Int(elapsed.components.seconds) + 2
        #expect((1...allowed).contains(reads), "\(reads) reads of encryption_kek for 12 uploads of 4 records in \(elapsed)")
        for client in clients { await client.close() }
    }

    /// A row holding its public key (`pub_pem`, what `custos keys register` writes) needs no
    /// file: its `pub_datafile` may name a path that does not exist on this host. A `pub_pem`
    /// that is not a public key makes its row give no KEK, said once in the log.
    @Test func aRowWithItsPublicKeyNeedsNoFile() async throws {
        let f = try await NetFixture.start("kek-pem", registerKEK: false)
        defer { Task { await f.stop() } }
        let pem = try String(contentsOfFile: f.kekPublic, encoding: .utf8)
        let kek = try KEKPublicKey(pemFile: f.kekPublic)
        let storage = f.collector.storage
        let bad = try await storage.registerKEK(KEKRegistration(pubDatafile: nil, publicKeyPEM: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                                                                privDatafile: nil, kekID: nil))
        let good = try await storage.registerKEK(KEKRegistration(pubDatafile: "/nonexistent/publickey.crt", publicKeyPEM: pem,
                                                                 privDatafile: nil, kekID: nil))
        let (records, _) = try f.records(count: 2)
        let client = try f.client()
        #expect(try await client.upload(stream(records)).results.allSatisfy { $0.status == .stored })
        #expect(f.collector.server.registry.activeIDs == [kek.id])
        let rows = try await storage.keks()
        #expect(rows.first { $0.rowID == good }?.kekID == kek.id, "the KEK id learnt from the PEM is recorded")
        #expect(f.logs.count("encryption_kek row \(bad) ignored") == 1, "\(f.logs.text)")
        await client.close()
    }

    /// A change signalled by the storage (`kekChanges()`: PostgreSQL's NOTIFY) makes the
    /// registry re-read `encryption_kek` at once, without any upload or poll. The SQLite backend
    /// never signals; here a wrapper around it signals when the test says.
    @Test func aStorageChangeSignalIsHeardAtOnce() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("kek-signal", registerKEK: false, kekPollInterval: .seconds(3600)) { path in
            SignallingStorage(base: try SQLiteStorage(path: path))
        }
        defer { Task { await f.stop() } }
        let signalling = try #require(f.collector.storage as? SignallingStorage)
        let registry = f.collector.server.registry
        let kek = try KEKPublicKey(pemFile: f.kekPublic)
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", f.collector.databasePath,
                        "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '\(f.kekPublic)', NULL);"])
        #expect(try await waitUntil(timeout: 10) { signalling.listening }, "the registry does not listen")
        try await Task.sleep(for: .milliseconds(200))
        #expect(registry.activeIDs.isEmpty, "read before any signal")
        let reads = registry.tableReads
        signalling.signal()
        #expect(try await waitUntil(timeout: 30) { registry.activeIDs == [kek.id] },
                "the signal was not heard: \(registry.tableReads - reads) reads since; \(f.logs.text)")
    }
}

/// A ``CollectorStorage`` that forwards everything to `base` but yields a `kekChanges()`
/// signal whenever the test calls ``signal()`` (as PostgreSQL's NOTIFY would).
final class SignallingStorage: CollectorStorage {
    let base: any CollectorStorage
    private let listener = Mutex<AsyncStream<Void>.Continuation?>(nil)

    init(base: any CollectorStorage) { self.base = base }

    /// Whether someone consumes `kekChanges()`.
    var listening: Bool { listener.withLock { $0 != nil } }
    func signal() { listener.withLock { _ = $0?.yield() } }

    func kekChanges() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        listener.withLock { $0 = continuation }
        return stream
    }

    func addAgent(_ id: AgentID) async throws(StorageError) -> Secret { try await base.addAgent(id) }
    func rotateToken(_ id: AgentID) async throws(StorageError) -> Secret { try await base.rotateToken(id) }
    func removeAgent(_ id: AgentID) async throws(StorageError) { try await base.removeAgent(id) }
    func agents() async throws(StorageError) -> [AgentInfo] { try await base.agents() }
    func agents(after: AgentID?, limit: Int) async throws(StorageError) -> [AgentInfo] { try await base.agents(after: after, limit: limit) }
    func authenticate(_ id: AgentID, token: Secret) async throws(StorageError) -> Bool { try await base.authenticate(id, token: token) }
    func registerKEK(_ registration: KEKRegistration) async throws(StorageError) -> Int64 { try await base.registerKEK(registration) }
    func setKEKActive(rowID: Int64, active: Bool) async throws(StorageError) { try await base.setKEKActive(rowID: rowID, active: active) }
    func setKEKID(rowID: Int64, kekID: KEKID) async throws(StorageError) { try await base.setKEKID(rowID: rowID, kekID: kekID) }
    func keks() async throws(StorageError) -> [KEKRow] { try await base.keks() }
    func dekRecord(_ id: DEKID) async throws(StorageError) -> Data? { try await base.dekRecord(id) }
    func dekRecords(agent: AgentID?, after: DEKID?, limit: Int) async throws(StorageError) -> [StoredDEK] {
        try await base.dekRecords(agent: agent, after: after, limit: limit)
    }
    func ingest(_ items: [IngestItem], receivedAtMs: Int64) async throws(StorageError) -> [IngestOutcome] {
        try await base.ingest(items, receivedAtMs: receivedAtMs)
    }
    func captures(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) async throws(StorageError) -> CapturePage {
        try await base.captures(query, after: cursor, limit: limit)
    }
    func capture(_ id: BlobID) async throws(StorageError) -> CaptureInfo? { try await base.capture(id) }
    func blob(_ id: BlobID) async throws(StorageError) -> Data? { try await base.blob(id) }
    func counts() async throws(StorageError) -> (captures: Int, deks: Int) { try await base.counts() }
    func appendAudit(actor: String, action: String, detail: String) async throws(StorageError) -> AuditEntry {
        try await base.appendAudit(actor: actor, action: action, detail: detail)
    }
    func auditEntries(before: Int64?, limit: Int) async throws(StorageError) -> [AuditEntry] {
        try await base.auditEntries(before: before, limit: limit)
    }
    func agentCredentials() async throws(StorageError) -> [AgentCredential] { try await base.agentCredentials() }
    func importAgents(_ agents: [AgentCredential]) async throws(StorageError) -> Int { try await base.importAgents(agents) }
    func importKEKs(_ rows: [KEKRow]) async throws(StorageError) -> Int { try await base.importKEKs(rows) }
    func importAudit(_ entries: [AuditEntry]) async throws(StorageError) -> Int { try await base.importAudit(entries) }
    func identity() async throws(StorageError) -> String { try await base.identity() }
    func addHold(agent: AgentID, untilMs: Int64, reason: String, createdBy: String) async throws(StorageError) -> LegalHold {
        try await base.addHold(agent: agent, untilMs: untilMs, reason: reason, createdBy: createdBy)
    }
    func holds(activeAtMs: Int64?) async throws(StorageError) -> [LegalHold] { try await base.holds(activeAtMs: activeAtMs) }
    func removeHold(id: Int64, removedBy: String) async throws(StorageError) -> LegalHold {
        try await base.removeHold(id: id, removedBy: removedBy)
    }
    func expire(policy: RetentionPolicy, nowMs: Int64, limit: Int) async throws(StorageError) -> ExpiryOutcome {
        try await base.expire(policy: policy, nowMs: nowMs, limit: limit)
    }
    func acquireLease(_ name: String, holder: String, ttlMs: Int64, nowMs: Int64) async throws(StorageError) -> Bool {
        try await base.acquireLease(name, holder: holder, ttlMs: ttlMs, nowMs: nowMs)
    }
    func releaseLease(_ name: String, holder: String) async throws(StorageError) { try await base.releaseLease(name, holder: holder) }
    func addAdmin(_ account: AdminAccount) async throws(StorageError) { try await base.addAdmin(account) }
    func admin(_ name: AdminName) async throws(StorageError) -> AdminAccount? { try await base.admin(name) }
    func admins() async throws(StorageError) -> [AdminAccount] { try await base.admins() }
    func removeAdmin(_ name: AdminName) async throws(StorageError) { try await base.removeAdmin(name) }
    func setAdminRole(_ name: AdminName, role: AdminRole) async throws(StorageError) { try await base.setAdminRole(name, role: role) }
    func setAdminPassword(_ name: AdminName, passwordHash: String, totpSecret: String??) async throws(StorageError) {
        try await base.setAdminPassword(name, passwordHash: passwordHash, totpSecret: totpSecret)
    }
    func recordFailedLogin(_ name: AdminName, nowMs: Int64, maxFailures: Int, lockMs: Int64) async throws(StorageError) -> LoginFailure {
        try await base.recordFailedLogin(name, nowMs: nowMs, maxFailures: maxFailures, lockMs: lockMs)
    }
    func loginLockedUntil(_ name: AdminName, nowMs: Int64) async throws(StorageError) -> Int64? {
        try await base.loginLockedUntil(name, nowMs: nowMs)
    }
    func acceptTOTPStep(_ name: AdminName, step: Int64) async throws(StorageError) -> Bool { try await base.acceptTOTPStep(name, step: step) }
    func recordSuccessfulLogin(_ name: AdminName) async throws(StorageError) { try await base.recordSuccessfulLogin(name) }
    func createSession(admin: AdminName, tokenHash: Data, nowMs: Int64) async throws(StorageError) {
        try await base.createSession(admin: admin, tokenHash: tokenHash, nowMs: nowMs)
    }
    func session(tokenHash: Data, nowMs: Int64, limits: SessionLimits) async throws(StorageError) -> AdminSession? {
        try await base.session(tokenHash: tokenHash, nowMs: nowMs, limits: limits)
    }
    func deleteSession(tokenHash: Data) async throws(StorageError) { try await base.deleteSession(tokenHash: tokenHash) }
    func deleteExpiredSessions(nowMs: Int64, limits: SessionLimits) async throws(StorageError) -> Int {
        try await base.deleteExpiredSessions(nowMs: nowMs, limits: limits)
    }
    func health() async -> StorageHealth { await base.health() }
    func checkBlobDirectory() async throws(StorageError) -> BlobDirectoryCheck { try await base.checkBlobDirectory() }
    func run() async throws { try await base.run() }
    func close() async {
        listener.withLock { $0?.finish() }
        await base.close()
    }
}
