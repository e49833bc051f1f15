import Collector
import CollectorStorage
import CollectorStorageOpen
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Logging
import Testing
import TestSupport

/// The collector's retention: its configuration keys and its ``RetentionService``.
@Suite struct RetentionTests {
    static let day = RetentionPolicy.dayMs
    static var nowMs: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// Stores one DEK record and a capture of `agent` per age (days ago, now), 40 KB each (blob files).
    static func store(_ s: any CollectorStorage, agent name: String, ages: [Int64]) async throws -> [BlobID] {
        let agent = try AgentID(name)
        let dek = StoredDEK(dekID: .random(), kekID: KEKID(bytes: [UInt8](repeating: 1, count: 32))!, agentID: agent,
                            creationTimeMs: nowMs - 100 * day, record: randomData(100))
        let blobs = ages.map { age in
            StoredBlob(blobID: .random(), agentID: agent, kind: .screen, dekID: dek.dekID, kekID: dek.kekID, sequence: age,
                       captureTimeMs: nowMs - age * day, bytes: randomData(40_000))
        }
        let outcomes = try await s.ingest([.dek(dek)] + blobs.map { .blob($0) }, receivedAtMs: nowMs)
        #expect(outcomes.allSatisfy { $0 == .stored })
        return blobs.map(\.blobID)
    }

    static func writeConfig(_ dir: TempDir, _ lines: String) throws -> String {
        let path = dir.file("collector.cfg")
        try ("tls-cert=a.crt\ntls-key=a.key\n" + lines).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The keys parse into one policy (agent > kind > default); the interval is in minutes.
    @Test func configurationKeysMakeThePolicy() throws {
        let dir = try TempDir("custos-retention-cfg")
        defer { dir.remove() }
        let config = try CollectorConfiguration(file: try Self.writeConfig(dir, """
            retention-days=90
            retention-days-kind=keystrokes:30
            retention-days-kind=generic:0
            retention-days-agent=legal-17:0
            retention-days-agent=kiosk.1:7
            retention-interval-minutes=15
            """))
        let p = config.retention
        #expect(p.defaultDays == 90 && p.kindDays == [.keystrokes: 30, .generic: 0])
        #expect(p.agentDays == [try AgentID("legal-17"): 0, try AgentID("kiosk.1"): 7])
        #expect(p.days(agent: try AgentID("legal-17"), kind: .keystrokes) == 0)
        #expect(p.days(agent: try AgentID("kiosk.1"), kind: .screen) == 7)
        #expect(p.days(agent: try AgentID("other"), kind: .keystrokes) == 30)
        #expect(p.days(agent: try AgentID("other"), kind: .screen) == 90)
        #expect(config.retentionInterval == .seconds(900))
        let none = try CollectorConfiguration(file: try Self.writeConfig(dir, ""))
        #expect(none.retention.keepsEverything && none.retentionInterval == .seconds(3600))
    }

    /// Each bad value is an error naming FILE:LINE: KEY and what was expected.
    @Test(arguments: [
        ("retention-days=-1", "retention-days", "whole number of days from 0"),
        ("retention-days=36501", "retention-days", "36500"),
        ("retention-days=ten", "retention-days", "found 'ten'"),
        ("retention-days-kind=video:3", "retention-days-kind", "capture kind (screen, keystrokes, generic or activity)"),
        ("retention-days-kind=screen", "retention-days-kind", "expected KIND:DAYS"),
        ("retention-days-kind=screen:3:4", "retention-days-kind", "expected KIND:DAYS with one ':' (e.g. screen:30; one line per kind), found 'screen:3:4'"),
        ("retention-days-agent=host-1:3:4", "retention-days-agent", "expected AGENT:DAYS with one ':'"),
        ("retention-days-kind=screen:x", "retention-days-kind", "whole number of days"),
        ("retention-days-kind=screen:3\nretention-days-kind=screen:4", "retention-days-kind", "first on line 3"),
        ("retention-days-agent=bad/agent:3", "retention-days-agent", "letters, digits"),
        ("retention-days-agent=:3", "retention-days-agent", "expected AGENT:DAYS"),
        ("retention-days-agent=a:1\nretention-days-agent=a:2", "retention-days-agent", "second rule for agent a"),
        ("retention-interval-minutes=0", "retention-interval-minutes", "from 1 to 10080"),
    ])
    func badValuesNameFileLineAndKey(_ text: String, _ key: String, _ expected: String) throws {
        let dir = try TempDir("custos-retention-bad")
        defer { dir.remove() }
        let path = try Self.writeConfig(dir, text + "\n")
        let line = 2 + text.split(separator: "\n").count
        do {
            _ = try CollectorConfiguration(file: path)
            Issue.record("\(text) was accepted")
        } catch {
            #expect(error.description.hasPrefix("\(path):\(line): \(key): "), "\(error)")
            #expect(error.description.contains(expected), "\(error)")
        }
    }

    /// The in-process collector, with a 5-day policy, removes the expired captures by itself at
    /// start, keeps the others, logs the run once (by kind, with the policy) and audits it.
    @Test func theCollectorExpiresByItselfAndLogsOnce() async throws {
        let dir = try TempDir("custos-retention-collector")
        defer { dir.remove() }
        let storage = try SQLiteStorage(path: dir.file("collector.db"))
        let old = try await Self.store(storage, agent: "a", ages: [10, 20])
        let young = try await Self.store(storage, agent: "a", ages: [1])
        let held = try await Self.store(storage, agent: "held", ages: [10])
        _ = try await storage.addHold(agent: try AgentID("held"), untilMs: Self.nowMs + Self.day, reason: "case 7", createdBy: "t")
        let logs = LogCapture()
        let collector = try await TestCollector.start(in: dir.path, storage: storage,
                                                      retention: try RetentionPolicy(defaultDays: 5),
                                                      logger: logs.logger("collector"))
        #expect(try await waitUntil(timeout: 30) { logs.contains("retention: expired captures") }, "\(logs.text)")
        for id in old { #expect(try await storage.capture(id) == nil) }
        for id in young + held { #expect(try await storage.capture(id) != nil) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(logs.count("retention: expired captures") == 1)
        let line = logs.all.first { $0.contains("retention: expired captures") } ?? ""
        #expect(line.hasPrefix("info ") && line.contains("screen: 2 captures, 80000 bytes") && line.contains("default=5d"), "\(line)")
        // Their bytes were in blob files (40 KB each): erased there, counted and audited.
        #expect(line.contains("blob files: 2 ranges, 80000 bytes erased"), "\(line)")
        let audit = try await storage.auditEntries(before: nil, limit: 10).first { $0.action == "retention.expire" }
        #expect(audit?.actor == "collector" && audit?.detail.contains("screen: 2 captures, 80000 bytes") == true)
        #expect(audit?.detail.contains("blob files: 2 ranges, 80000 bytes erased") == true, "\(audit?.detail ?? "")")
        await collector.stop()
        await storage.close()
    }

    /// A run skips while another instance holds the lease and works once it is released; a
    /// failing run is logged once at error, its repeats at debug.
    @Test func aRunNeedsTheLeaseAndAFailureIsLoggedOnce() async throws {
        let dir = try TempDir("custos-retention-service")
        defer { dir.remove() }
        let storage = try SQLiteStorage(path: dir.file("collector.db"))
        let old = try await Self.store(storage, agent: "a", ages: [10])
        let logs = LogCapture()
        let service = RetentionService(storage: storage, policy: try RetentionPolicy(defaultDays: 5), interval: .seconds(3600),
                                       logger: logs.logger("retention"))
        #expect(try await storage.acquireLease(RetentionService.leaseName, holder: "another", ttlMs: 60_000, nowMs: Self.nowMs))
        #expect(await service.runOnce() == nil)
        #expect(try await storage.capture(old[0]) != nil)
        try await storage.releaseLease(RetentionService.leaseName, holder: "another")
        #expect(await service.runOnce()?.captures == 1)
        #expect(try await storage.capture(old[0]) == nil)
        // The lease was released at the end of the run: another instance may take it at once.
        #expect(try await storage.acquireLease(RetentionService.leaseName, holder: "another", ttlMs: 60_000, nowMs: Self.nowMs))
        try await storage.releaseLease(RetentionService.leaseName, holder: "another")

        // A storage that fails every call (closed).
        let broken = try SQLiteStorage(path: dir.file("collector.db"))
        await broken.close()
        let failing = RetentionService(storage: broken, policy: try RetentionPolicy(defaultDays: 5), interval: .seconds(3600),
                                       logger: logs.logger("retention"))
        #expect(await failing.runOnce() == nil)
        #expect(await failing.runOnce() == nil)
        #expect(logs.lines(atLeast: .error).filter { $0.contains("retention: expiry failed") }.count == 1, "\(logs.text)")
        #expect(logs.count("retention: expiry failed") == 2)
        await storage.close()
    }

    /// PostgreSQL with `blob-dir=`: a run while the blob directory is not mounted (an empty
    /// mount point) removes the rows, says once at warning that their bytes wait (the repeat at
    /// debug), and a run once the directory is back erases them, logs the recovery once, and
    /// logs and audits the bytes erased.
    @Test(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
    func bytesThatWaitAreLoggedOnceAndErasedOnceTheDirectoryIsBack() async throws {
        let cluster = try PostgresCollectorTests.shared.get()
        let dir = try TempDir("custos-retention-pg-blobs")
        defer { dir.remove() }
        let db = try await PostgresCollectorTests.Database.make(cluster, in: dir)
        let location = try StorageLocation(db.url, passwordFile: db.passwordFile)
        let blobs = dir.file("blobs")
        try FileManager.default.createDirectory(atPath: blobs, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
        let old = try await StorageOpener.withStorage(location, blobDirectory: blobs, logger: quiet) { s in
            try await Self.store(s, agent: "pg", ages: [10, 20]) + Self.store(s, agent: "pg", ages: [1])
        }
        let file = try #require(try FileManager.default.contentsOfDirectory(atPath: blobs).first { $0.hasSuffix(".blobs") })
        let original = try Data(contentsOf: URL(fileURLWithPath: blobs + "/" + file))
        // The volume "unmounted": an empty directory in its place.
        try FileManager.default.moveItem(atPath: blobs, toPath: blobs + ".away")
        try FileManager.default.createDirectory(atPath: blobs, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let logs = LogCapture()
        try await StorageOpener.withStorage(location, blobDirectory: blobs, logger: quiet) { s in
            let service = RetentionService(storage: s, policy: try RetentionPolicy(defaultDays: 5), interval: .seconds(3600),
                                           logger: logs.logger("retention"))
            let first = await service.runOnce()
            #expect(first?.captures == 2 && first?.released.pending == 2, "\(String(describing: first))")
            #expect(await service.runOnce()?.captures == 0)
            let warnings = logs.lines(atLeast: .warning).filter { $0.contains("expired blob bytes wait to be erased") }
            #expect(warnings.count == 1 && warnings[0].contains("unmounted"), "\(logs.text)")
            #expect(logs.count("expired blob bytes wait to be erased") == 2)
            #expect(try Data(contentsOf: URL(fileURLWithPath: blobs + ".away/" + file)) == original)

            // The volume is back: the next run erases what waited.
            try FileManager.default.removeItem(atPath: blobs)
            try FileManager.default.moveItem(atPath: blobs + ".away", toPath: blobs)
            let outcome = await service.runOnce()
            #expect(outcome?.captures == 0 && outcome?.released.ranges == 2 && outcome?.released.bytes == 80_000,
                    "\(String(describing: outcome))")
            let audit = try await s.auditEntries(before: nil, limit: 10).first { $0.action == "retention.expire" }
            #expect(audit?.detail.contains("blob files: 2 ranges, 80000 bytes erased") == true, "\(audit?.detail ?? "")")
            for id in old.prefix(2) { #expect(try await s.blob(id) == nil) }
        }
        #expect(logs.count("retention: the waiting blob bytes are erased") == 1, "\(logs.text)")
        let line = logs.all.last { $0.contains("retention: expired captures") } ?? ""
        #expect(line.contains("80000 bytes erased") && line.contains("retention.released_bytes"), "\(line)")
        // Two of the file's three blobs were erased: 80,000 of its 120,000 bytes read as zeros.
        let after = try Data(contentsOf: URL(fileURLWithPath: blobs + "/" + file))
        #expect(after.count == original.count && after.filter { $0 == 0 }.count >= 80_000, "\(after.count)")
    }
}
