import CollectorStorage
@testable import CollectorStoragePostgres
import CustosBase
import Envelope
import Foundation
import Logging
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
        // A generous limit (a loaded CI machine): the fault below is a refused connection, seen at once.
        try await withPostgresStorage(cluster: cluster, database: db, timeout: .seconds(15), logger: logs.logger("storage")) { s in
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

/// `sslmode` against a real server with TLS: certificates made by the `openssl` CLI.
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
struct PostgresTLSTests {
    @Test func sslModes() async throws {
        let cluster = try await PostgresCluster.make()
        defer { cluster.shutdown() }
        try cluster.createRole(collectorRole)
        let db = try await cluster.createDatabaseAsync(owner: collectorRole)
        let password = try #require(cluster.password(of: collectorRole))
        func storage(_ query: String, host: String = "localhost") throws -> PostgresStorage {
            let location = try PostgresLocation("postgres://\(collectorRole)@\(host):\(cluster.port)/\(db)?\(query)")
            return try PostgresStorage(.init(location: location, password: Secret(password), operationTimeout: .seconds(3)),
                                       logger: .init(label: "test"))
        }
        func firstError(_ s: PostgresStorage) async -> StorageError? {
            let runner = Task { try await s.run() }
            defer { runner.cancel() }
            let error = await storageError { try await s.prepare() }
            await s.close()
            return error
        }
        func works(_ s: PostgresStorage) async throws -> Bool {
            let runner = Task { try await s.run() }
            defer { runner.cancel() }
            try await s.prepare()
            let ssl = try await s.withClient("ssl?") { client in
                var on = false
                for try await (v) in try await client.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                                                            logger: PostgresStorage.quiet).decode(Bool.self) { on = v }
                return on
            }
            await s.close()
            return ssl
        }

        // No TLS on the server yet: require is refused, clearly.
        let plain = await firstError(try storage("sslmode=require"))
        #expect(plain?.code == .failed && plain?.message.contains("does not offer TLS") == true, "\(String(describing: plain))")
        let plainFull = await firstError(try storage("sslmode=verify-full"))
        #expect(plainFull?.code == .failed && plainFull?.message.contains("does not offer TLS") == true, "\(String(describing: plainFull))")

        let dir = try TempDir("custos-pg-tls")
        defer { dir.remove() }
        let pki = try makeTestPKI(in: dir.path)
        func serve(_ name: String) async throws {
            for (from, to) in [(pki.chain(name), "server.crt"), (pki.key(name), "server.key")] {
                let dest = cluster.dataDirectory + "/" + to
                try? FileManager.default.removeItem(atPath: dest)
                try FileManager.default.copyItem(atPath: from, toPath: dest)
                chmod(dest, 0o600)
                if getuid() == 0 { try runChecked(["chown", "postgres:postgres", dest]) }
            }
            try await cluster.psqlAsync("ALTER SYSTEM SET ssl = on;")
            try await cluster.psqlAsync("SELECT pg_reload_conf();")
            try await Task.sleep(for: .milliseconds(300))
        }
        try await serve("leaf")
        let root = "sslrootcert=" + pki.rootCertificate
        #expect(try await works(try storage("sslmode=verify-full&" + root)))
        #expect(try await works(try storage("sslmode=verify-full&" + root, host: "127.0.0.1")))  // the IP's SAN
        #expect(try await works(try storage("sslmode=require")))
        #expect(try await !works(try storage("sslmode=disable")))

        // An unknown CA (the system's trust store) and a certificate for another name: refused.
        let unknownCA = await firstError(try storage("sslmode=verify-full"))
        #expect(unknownCA?.code == .failed && unknownCA?.message.contains("TLS") == true, "\(String(describing: unknownCA))")
        try await serve("wrongHost")
        let wrongName = await firstError(try storage("sslmode=verify-full&" + root))
        #expect(wrongName?.code == .failed && wrongName?.message.contains("TLS") == true, "\(String(describing: wrongName))")
        let wrongIP = await firstError(try storage("sslmode=verify-full&" + root, host: "127.0.0.1"))
        #expect(wrongIP?.code == .failed && wrongIP?.message.contains("TLS") == true, "\(String(describing: wrongIP))")
        #expect(try await works(try storage("sslmode=require")))
    }
}
