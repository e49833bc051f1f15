import Collector
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Foundation
import Spool
import Testing
import TestSupport
import Transport

/// issue 14: the agent's `server-url` repeated. Collectors B and C serve one storage (as
/// stateless collectors on one database do); A has nothing listening; D's storage has failed
/// (it answers 503).
@Suite struct FailoverTests {
    @Test func uploadsFailOverInOrderStickToTheFirstThatWorksAndKeepEverythingWhenAllAreDown() async throws {
        let f = try await NetFixture.start("failover", storage: { try SQLiteStorage(path: $0) })  // B
        defer { Task { await f.stop() } }
        let shared = try #require(f.givenStorage)
        let logs = LogCapture()
        let c = try await TestCollector.start(in: f.dir.path + "/c", pki: f.collector.pki, storage: shared,
                                              logger: logs.logger("collector-c"))
        let brokenStorage = try SQLiteStorage(path: f.dir.file("d.db"))
        let d = try await TestCollector.start(in: f.dir.path + "/d", pki: f.collector.pki, storage: brokenStorage,
                                              logger: logs.logger("collector-d"))
        defer { Task { await d.stop() } }
        await brokenStorage.close()
        let deadURL = "https://127.0.0.1:\(try freeLocalPort())"

        func client(_ url: String) throws -> CollectorClient {
            try CollectorClient(configuration: testTransport(serverURL: url, agentID: f.agentID, agentToken: f.token,
                                                             pins: [try f.collector.pin], caFile: nil),
                                logger: logs.logger("transport"))
        }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: logs.logger("spool"))
        let uploader = Uploader(queue: spool, clients: [try client(deadURL), try client(d.url), try client(f.collector.url),
                                                         try client(c.url)],
                                configuration: .init(maxBatchItems: 8, retryableRefusalDelay: .zero),
                                logger: logs.logger("uploader"))
        #expect(uploader.status.collector.description == deadURL, "the first server-url until one fails")

        // A is refused, D answers 503: the same batch goes on to B in the same attempt.
        let (first, _) = try f.records(count: 7)
        _ = try UploaderTests.spool(first, into: spool)
        let s1 = try await uploader.uploadOnce()
        #expect(s1.sent == 8 && s1.acknowledged == 8, "\(s1)")
        #expect(uploader.status.collector.description == f.collector.url)
        #expect(uploader.status.consecutiveFailures == 0)
        #expect(logs.count("collector \(deadURL) unavailable; trying \(d.url)") == 1, "\(logs.text)")
        #expect(logs.count("collector \(d.url) unavailable; trying \(f.collector.url)") == 1, "\(logs.text)")
        #expect(logs.count("uploading to collector \(f.collector.url)") == 1, "\(logs.text)")

        // It sticks to B: the next batches go straight there, nothing more is logged.
        for _ in 0..<3 {
            let (more, _) = try f.records(count: 3)
            _ = try UploaderTests.spool(more, into: spool)
            let s = try await uploader.uploadOnce()
            #expect(s.acknowledged == 4, "\(s)")
        }
        #expect(logs.count("unavailable; trying") == 2, "\(logs.text)")
        #expect(try await shared.counts() == (7 + 9, 4))

        // B goes down: on to C (after B, in order), which stores into the same database.
        await f.collector.stop()
        let (second, _) = try f.records(count: 5)
        _ = try UploaderTests.spool(second, into: spool)
        let s2 = try await uploader.uploadOnce()
        #expect(s2.acknowledged == 6, "\(s2)")
        #expect(uploader.status.collector.description == c.url)
        #expect(logs.count("collector \(f.collector.url) unavailable; trying \(c.url)") == 1, "\(logs.text)")
        #expect(try await shared.counts() == (7 + 9 + 5, 5))
        #expect(try spool.stats().totalSpooled.count == 0)

        // Every collector down: the attempt fails naming the last one tried, nothing is lost.
        await c.stop()
        let (third, _) = try f.records(count: 2)
        _ = try UploaderTests.spool(third, into: spool)
        do {
            _ = try await uploader.uploadOnce()
            Issue.record("uploaded with every collector down")
        } catch {
            #expect(error.code == .connect || error.code == .rejected, "\(error)")
        }
        #expect(try spool.stats().totalSpooled.count == 3)
        #expect(uploader.status.consecutiveFailures == 1)
        #expect(uploader.status.collector.description == c.url, "still C: the last that worked")
    }

    @Test func aWrongTokenIsNotAFailover() async throws {
        let f = try await NetFixture.start("failover-401")
        defer { Task { await f.stop() } }
        let logs = LogCapture()
        func client(_ url: String, token: String) throws -> CollectorClient {
            try CollectorClient(configuration: testTransport(serverURL: url, agentID: f.agentID, agentToken: token,
                                                             pins: [try f.collector.pin], caFile: nil),
                                logger: logs.logger("transport"))
        }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: logs.logger("spool"))
        let (records, _) = try f.records(count: 2)
        _ = try UploaderTests.spool(records, into: spool)
        let other = "https://127.0.0.1:\(try freeLocalPort())"
        let uploader = Uploader(queue: spool, clients: [try client(f.collector.url, token: "wrong"), try client(other, token: "wrong")],
                                logger: logs.logger("uploader"))
        await #expect(throws: TransportError.self) { try await uploader.uploadOnce() }
        #expect(!logs.contains("unavailable; trying"), "a 401 is the same at every collector: \(logs.text)")
        #expect(uploader.status.collector.description == f.collector.url)
        #expect(Uploader.isFailover(TransportError(.rejected, "x", httpStatus: 503)))
        #expect(!Uploader.isFailover(TransportError(.rejected, "x", httpStatus: 429)))
        #expect(!Uploader.isFailover(TransportError(.cancelled, "x")))
    }
}
