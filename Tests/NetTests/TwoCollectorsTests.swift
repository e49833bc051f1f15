import CollectorStorage
import CollectorStorageOpen
import CustosBase
import Envelope
import Foundation
import Spool
import Testing
import TestSupport
import Transport

/// issue 14 part 4: two stateless collector processes (the built `custos-collector`) on one
/// PostgreSQL database, and an agent's upload loop naming both (`server-url` twice). `kill -9`
/// of the collector it uploads to, mid-upload: the agent fails over to the other and everything
/// is stored exactly once — the batch that may have reached the killed one is answered
/// `duplicate` by the other (idempotency by blob id across instances).
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
struct TwoCollectorsTests {
    @Test func killNineOfOneCollectorMidUploadStoresEverythingOnceThroughTheOther() async throws {
        let cluster = try PostgresCollectorTests.shared.get()
        let dir = try TempDir("custos-two-collectors")
        defer { dir.remove() }
        let db = try await PostgresCollectorTests.Database.make(cluster, in: dir)
        let add = try await PostgresCollectorTests.custos(["agents", "add"] + db.db + ["--id", "two-agent"])
        try #require(add.status == 0, "\(add.stderrString)")
        let token = add.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines)
        try await PostgresCollectorTests.insertSeedKEK(db)
        try writeCollectorConfig(dir.file("collector.cfg"), pki: try sharedMaterial.get().pki, listen: "127.0.0.1:0",
                                 database: db.url, passwordFile: db.passwordFile)
        let (a, portA) = try await PostgresCollectorTests.startCollector(dir.file("collector.cfg"), in: dir)
        let (b, portB) = try await PostgresCollectorTests.startCollector(dir.file("collector.cfg"), in: dir)
        defer {
            a.send(SIGKILL); _ = a.waitExit(timeout: 10)
            b.send(SIGTERM); _ = b.waitExit(timeout: 10)
        }

        // 600 blobs of 20 KB for this agent, uploaded 16 at a time.
        let kek = try sharedMaterial.get().kek
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: kek.publicKey), agentID: "two-agent")
        var records: [EnvelopeRecord] = [.dekRecord(session.record)]
        for i in 0..<600 {
            records.append(.blob(try session.seal(randomData(20_000), kind: i % 2 == 0 ? .screen : .keystrokes,
                                                  captureTimeMs: 1_700_000_000_000 + Int64(i))))
        }
        let logs = LogCapture()
        let spool = try Spool(directory: dir.file("spool"), maxBytes: 256 << 20, logger: logs.logger("spool"))
        _ = try UploaderTests.spool(records, into: spool)
        let uploader = Uploader(queue: spool, clients: [try PostgresCollectorTests.client(port: portA, agentID: "two-agent", token: token),
                                                         try PostgresCollectorTests.client(port: portB, agentID: "two-agent", token: token)],
                                configuration: .init(maxBatchItems: 16, maxBatchBytes: 1 << 20, retryableRefusalDelay: .zero),
                                logger: logs.logger("uploader"))
        func stored() async throws -> Int {
            Int(try await cluster.psqlAsync("SELECT count(*) FROM captures", database: db.name)
                .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        }
        let uploading = Task {
            for _ in 0..<400 where (try? spool.stats().totalSpooled.count) ?? 0 > 0 {
                _ = try? await uploader.uploadOnce()
            }
        }
        // Kill A (the first server-url: the one in use) once some batches are stored.
        let progressed = try await waitUntil(timeout: 60, every: .milliseconds(20)) { try await stored() >= 48 }
        a.send(SIGKILL)
        #expect(a.waitExit(timeout: 10) != nil)
        let atKill = try await stored()
        await uploading.value
        try #require(progressed && atKill < 600, "the kill came too late to test anything (\(atKill) stored)")

        #expect(try spool.stats().totalSpooled.count == 0, "the spool drained through B: \(logs.text.suffix(2000))")
        #expect(uploader.status.collector.port == portB, "uploads moved to B")
        #expect(try await stored() == 600, "every blob stored exactly once")
        let deks = try await cluster.psqlAsync("SELECT count(*) FROM public.encryption_dek", database: db.name)
        #expect(deks.trimmingCharacters(in: .whitespacesAndNewlines) == "1")
        // Byte for byte, through the storage the collectors use.
        let location = try StorageLocation(db.url, passwordFile: db.passwordFile)
        try await StorageOpener.withStorage(location, createIfMissing: false) { (pg: any CollectorStorage) async throws in
            for record in records.dropFirst() {
                #expect(try await pg.blob(record.blobID) == record.serialized)
            }
        }
        #expect(logs.count("unavailable; trying") == 1, "the failover is logged once: \(logs.text.suffix(2000))")
        print("collector A killed with \(atKill) of 600 blobs stored; B stored the rest")
    }
}
