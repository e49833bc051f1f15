import CollectorStorage
import CollectorStoragePostgres
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport

/// Faults that stop the server: each test has its own cluster.
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
struct PostgresFaultTests {
    /// The server restarted while the storage is in use: calls fail `.unavailable` naming the
    /// database while it is down, then work again in the same process; nothing stored is lost;
    /// the LISTEN connection comes back (logged once, recovered once) and is heard again.
    @Test func serverRestartMidUse() async throws {
        let cluster = try await PostgresCluster.make()
        defer { cluster.shutdown() }
        try cluster.createRole(collectorRole)
        let db = try await cluster.createDatabaseAsync(owner: collectorRole)
        let logs = LogCapture()
        try await withPostgresStorage(cluster: cluster, database: db, timeout: .seconds(3), logger: logs.logger("storage")) { s in
            let a = agent("a1")
            let token = try await s.addAgent(a)
            let dek = sampleDEK(a)
            #expect(try await s.ingest([.dek(dek)], receivedAtMs: 1) == [.stored])
            let signals = SignalCounter(s.kekChanges())
            try await waitForListener(cluster, db, count: 1)

            try await cluster.stopAsync()
            let start = ContinuousClock.now
            let down = await storageError { _ = try await s.ingest([.blob(sampleBlob(dek))], receivedAtMs: 2) }
            #expect(down?.code == .unavailable)
            #expect(down?.message.contains("\(cluster.host):\(cluster.port)/\(db)") == true, "\(String(describing: down))")
            #expect(start.duration(to: .now) < .seconds(3))
            #expect(await storageError { _ = try await s.agents() }?.code == .unavailable)
            #expect(await !s.health().reachable)

            try await cluster.startAsync()
            let blob = sampleBlob(dek, sequence: 1)
            var outcome: [IngestOutcome]?
            let deadline = ContinuousClock.now + .seconds(20)
            while outcome == nil && ContinuousClock.now < deadline {
                do {
                    outcome = try await s.ingest([.blob(blob)], receivedAtMs: 3)
                } catch let error as StorageError where error.code == .unavailable {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            #expect(outcome == [.stored])
            #expect(try await s.counts() == (1, 1))
            #expect(try await s.authenticate(a, token: token))
            #expect(await s.health().reachable)

            #expect(try await signals.reaches(1, within: .seconds(15)), "the listener's reconnect is signalled")
            try await waitForListener(cluster, db, count: 1)
            try await cluster.psqlAsync("insert into encryption_kek (pub_datafile) values ('/k.pem');", database: db)
            #expect(try await signals.reaches(2, within: .seconds(1)))
            #expect(logs.lines(at: .warning).filter { $0.contains("KEK change listener") }.count == 1, "\(logs.text)")
            #expect(logs.lines(at: .notice).filter { $0.contains("listening again") }.count == 1, "\(logs.text)")
        }
    }
}
