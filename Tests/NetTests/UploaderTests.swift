import Collector
import CollectorStorage
import Envelope
import CustosBase
import Foundation
import ServiceLifecycle
import Spool
import Synchronization
import Testing
import TestSupport
import Transport
import Wire

/// The upload loop against a real collector and a real spool.
@Suite struct UploaderTests {
    /// Spools the records (DEK record first) and returns their ids.
    static func spool(_ records: [EnvelopeRecord], into spool: Spool) throws -> [Data] {
        for r in records {
            switch r {
            case .dekRecord(let d):
                try spool.enqueue(SpoolEntry(id: r.id, kind: .dekRecord, dekID: Data(d.dekID.bytes),
                                             captureTimeMs: d.creationTimeMs, payload: r.serialized))
            case .blob(let b):
                let kind: SpoolKind = b.header.kind == .keystrokes ? .keystrokes : .screen
                try spool.enqueue(SpoolEntry(id: r.id, kind: kind, dekID: Data(b.header.dekID.bytes),
                                             captureTimeMs: b.header.captureTimeMs, payload: r.serialized))
            }
        }
        return records.map(\.id)
    }

    static func makeUploader(_ f: NetFixture, spool: Spool, logs: LogCapture, pins: [String]? = nil,
                             configuration: UploaderConfiguration = .init(retryableRefusalDelay: .zero)) throws -> Uploader {
        Uploader(queue: spool, client: try f.client(pins: pins, logger: logs.logger("transport")),
                 configuration: configuration, logger: logs.logger("uploader"))
    }

    @Test func drainsTheSpoolAndAcksOnlyAcknowledged() async throws {
        let f = try await NetFixture.start("uploader")
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (records, _) = try f.records(count: 40, size: 2000)
        _ = try Self.spool(records, into: spool)
        // A record sealed for another agent is refused for good and stays spooled.
        let (foreign, _) = try f.records(count: 1, agent: "someone-else")
        _ = try Self.spool(foreign, into: spool)
        let logs = LogCapture()
        let uploader = try Self.makeUploader(f, spool: spool, logs: logs,
                                             configuration: .init(maxBatchItems: 16, retryableRefusalDelay: .zero))
        var acked = 0, refused = 0
        for _ in 0..<10 {
            let s = try await uploader.uploadOnce()
            if s.sent == 0 { break }
            acked += s.acknowledged
            refused += s.refusedCount
        }
        #expect(acked == 41)
        // The foreign DEK record is refused; its blob is not leased while that DEK record is spooled.
        #expect(refused == 1)
        #expect(try await f.storedCounts == (40, 1))
        #expect(try spool.stats().totalSpooled.count == 2)
        #expect(logs.count("agent-mismatch") == 1)
    }

    @Test func refusedPeerKeepsEverythingSpooled() async throws {
        let f = try await NetFixture.start("uploader-pin")
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (records, _) = try f.records(count: 5)
        _ = try Self.spool(records, into: spool)
        let logs = LogCapture()
        let uploader = try Self.makeUploader(f, spool: spool, logs: logs, pins: [try f.collector.pki.pin("other")])
        for _ in 0..<3 {
            await #expect(throws: TransportError.self) { try await uploader.uploadOnce() }
        }
        #expect(try spool.stats().totalSpooled.count == 6)
        #expect(try await f.storedCounts == (0, 0))
        // A repeated error is logged once, naming the presented pin.
        #expect(logs.count("error collector certificate refused") == 1, "\(logs.text)")
        #expect(logs.contains(try f.collector.pki.pin("leaf")))
        #expect(uploader.status.consecutiveFailures == 3)
    }

    /// Issue 12: a refused certificate was logged once per connection attempt (6 times in 12 s).
    /// Through `run()`'s retries it is logged once per episode, and its recovery once, when the
    /// collector with the pinned certificate takes over the port.
    @Test func refusedCertificateIsLoggedOncePerEpisode() async throws {
        let f = try await NetFixture.start("uploader-pin-episode", certificate: "selfSigned")
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (records, _) = try f.records(count: 5)
        _ = try Self.spool(records, into: spool)
        let logs = LogCapture()
        let uploader = try Self.makeUploader(f, spool: spool, logs: logs, pins: [try f.collector.pki.pin("leaf")],
                                             configuration: .init(idleInterval: .milliseconds(50),
                                                                  initialBackoff: .milliseconds(50),
                                                                  maxBackoff: .milliseconds(100), parallelRequests: 1))
        let running = Task { try await uploader.run() }
        // Three refused attempts at least (a loaded 2-core test run managed two in 20 s).
        #expect(try await waitUntil(timeout: 60) { uploader.status.consecutiveFailures >= 3 })
        #expect(logs.count("collector certificate refused") >= 3, "repeats are still logged at debug")
        #expect(logs.count("error collector certificate refused") == 1, "\(logs.text)")
        #expect(logs.contains(try f.collector.pki.pin("selfSigned")))

        // The right collector (the pinned certificate) on the same port and database. The
        // uploader pauses meanwhile: a collector stopped while connections keep arriving can
        // trip NIO's "NIOAsyncWriter deinited without finish()" in the test process.
        running.cancel()
        _ = await running.result
        await f.collector.stop()
        let right = try await TestCollector.start(in: f.dir.path, pki: f.collector.pki, certificate: "leaf",
                                                  port: f.collector.port, databasePath: f.collector.databasePath,
                                                  logger: f.logs.logger("collector-2"))
        defer { Task { await right.stop() } }
        let resumed = Task { try await uploader.run() }
        #expect(try await waitUntil(timeout: 20) { try spool.stats().totalSpooled.count == 0 }, "\(logs.text)")
        try await Task.sleep(for: .milliseconds(300))
        resumed.cancel()
        _ = await resumed.result
        #expect(logs.count("upload recovered") == 1, "\(logs.text)")
        #expect(logs.count("error collector certificate refused") == 1)
    }

    /// The seed's flow: the agent's KEK is not in `encryption_kek`; uploads are refused with
    /// `unknown-kek` and stay spooled; an admin runs the seed's insert with `sqlite3`; the backlog arrives.
    @Test func unknownKEKBacklogFlushesAfterTheSeedInsert() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("unknown-kek", registerKEK: false)
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (records, _) = try f.records(count: 12)
        _ = try Self.spool(records, into: spool)
        let logs = LogCapture()
        let uploader = try Self.makeUploader(f, spool: spool, logs: logs)
        let refused = try await uploader.uploadOnce()
        #expect(refused.refused[.unknownKEK] == 13)
        #expect(refused.acknowledged == 0)
        #expect(try await f.storedCounts == (0, 0))
        #expect(try spool.stats().totalSpooled.count == 13)
        #expect(logs.contains("unknown-kek"))

        let sql = "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '\(f.kekPublic)', '\(f.kekPrivate)');"
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", f.collector.databasePath, sql])

        // Poll as the agent would; the collector re-reads encryption_kek on demand (≤ 1/s) and every 3 s.
        let deadline = ContinuousClock.now + .seconds(15)
        while try await f.storedCounts.captures < 12 && ContinuousClock.now < deadline {
            _ = try await uploader.uploadOnce()
            try await Task.sleep(for: .milliseconds(300))
        }
        #expect(try await f.storedCounts == (12, 1))
        #expect(try spool.stats().totalSpooled.count == 0)
        #expect(f.logs.contains("KEK active"))
    }

    /// The collector stops in the middle of a batch and comes back on the same port and database:
    /// every blob ends up stored exactly once and the spool drains.
    @Test func collectorStoppedMidBatchStoresEverythingOnce() async throws {
        let f = try await NetFixture.start("restart")
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 256 << 20, logger: f.logs.logger("spool"))
        // 40 kB blobs: stored in blob files (SQLiteStorage.blobFileMinBytes is 32 KiB).
        let (records, _) = try f.records(count: 600, size: 40_000)
        _ = try Self.spool(records, into: spool)
        let logs = LogCapture()
        let uploader = try Self.makeUploader(f, spool: spool, logs: logs,
                                             configuration: .init(maxBatchItems: 50, maxBatchBytes: 512 << 10,
                                                                  retryableRefusalDelay: .zero))
        // First batch arrives; then stop the collector while the next batches are in flight.
        _ = try await uploader.uploadOnce()
        let inFlight = Task { () -> Int in
            var failures = 0
            for _ in 0..<40 {
                do { _ = try await uploader.uploadOnce() } catch { failures += 1 }
            }
            return failures
        }
        try await Task.sleep(for: .milliseconds(30))
        await f.collector.stop()
        let failures = await inFlight.value
        #expect(failures > 0)
        let storedWhileDown = try await storedCounts(in: f.collector.databasePath).captures
        #expect(storedWhileDown < 600)

        let restarted = try await TestCollector.start(in: f.dir.path, pki: f.collector.pki, port: f.collector.port,
                                                      databasePath: f.collector.databasePath,
                                                      logger: f.logs.logger("collector-2"))
        defer { Task { await restarted.stop() } }
        var rounds = 0
        while try spool.stats().totalSpooled.count > 0 && rounds < 50 {
            rounds += 1
            do { _ = try await uploader.uploadOnce() } catch { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(try spool.stats().totalSpooled.count == 0)
        #expect(try await restarted.storage.counts() == (600, 1))
        let ids = Set(try await allCaptures(restarted.storage).map(\.blobID.hex))
        #expect(ids == Set(records.dropFirst().map { wireHex($0.id) }))
        for record in records.dropFirst() {
            #expect(try await restarted.storage.blob(record.blobID) == record.serialized)
        }
        #expect(logs.count("upload recovered") == 1)
    }

    /// `run()` as a service: drains the spool, keeps polling, and on graceful shutdown makes a
    /// bounded final flush of what was spooled meanwhile, then returns.
    @Test func runDrainsAndFlushesOnGracefulShutdown() async throws {
        let f = try await NetFixture.start("run")
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (first, _) = try f.records(count: 10)
        _ = try Self.spool(first, into: spool)
        let logs = LogCapture()
        let uploader = try Self.makeUploader(f, spool: spool, logs: logs,
                                             configuration: .init(idleInterval: .seconds(30), finalFlushTimeout: .seconds(5)))
        let group = ServiceGroup(configuration: .init(services: [uploader], logger: logs.logger("group")))
        let running = Task { try await group.run() }
        let deadline = ContinuousClock.now + .seconds(20)
        while try await f.storedCounts.captures < 10 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(try await f.storedCounts == (10, 1))
        // Records spooled while the loop idles (30 s) go out in the final flush.
        let (second, _) = try f.records(count: 5)
        _ = try Self.spool(second, into: spool)
        let start = ContinuousClock.now
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(start.duration(to: .now) < .seconds(10))
        #expect(try await f.storedCounts == (15, 2))
        #expect(try spool.stats().totalSpooled.count == 0)
        #expect(logs.contains("final flush done"))
    }

    /// Waits until `spool` is empty (or `within` passes), stops the running upload loop, and
    /// expects the spool empty.
    static func drain(_ spool: Spool, running: Task<Void, any Error>, within: Duration) async throws {
        let deadline = ContinuousClock.now + within
        while try spool.stats().totalSpooled.count > 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        running.cancel()
        _ = try? await running.value
        #expect(try spool.stats().totalSpooled.count == 0)
    }

    /// The spool, watched: how many leased batches are unanswered at once, and whether any
    /// record was acknowledged twice.
    final class WatchedQueue: UploadQueue, Sendable {
        struct Counts { var inFlight = 0, maxInFlight = 0, acked: [Data: Int] = [:] }
        let spool: Spool
        let counts = Mutex(Counts())
        init(_ spool: Spool) { self.spool = spool }
        func leaseForUpload(maxItems: Int, maxBytes: Int) async throws -> [SpoolEntry] {
            let batch = try await spool.leaseForUpload(maxItems: maxItems, maxBytes: maxBytes)
            if !batch.isEmpty {
                counts.withLock { $0.inFlight += 1; $0.maxInFlight = max($0.maxInFlight, $0.inFlight) }
                // Hold the lease a moment so a second lane has the chance to lease beside it.
                try await Task.sleep(for: .milliseconds(50))
            }
            return batch
        }
        func acknowledge(_ ids: [Data]) async throws {
            try await spool.acknowledge(ids)
            counts.withLock { c in
                c.inFlight -= 1
                for id in ids { c.acked[id, default: 0] += 1 }
            }
        }
        func giveBack(_ ids: [Data], retryAfter: Duration?) async throws {
            try await spool.giveBack(ids, retryAfter: retryAfter)
        }
    }

    /// With `parallelRequests` 2 (the default) two batches are in flight at once, each on its
    /// own connection; everything arrives once, and no blob overtakes its DEK record (that
    /// would be refused `unknown-dek`).
    @Test func twoLanesKeepTwoBatchesInFlight() async throws {
        let f = try await NetFixture.start("lanes")
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        var ids: [Data] = []
        for _ in 0..<3 {  // three DEK sessions of 40 blobs
            let (records, _) = try f.records(count: 40, size: 3000)
            ids += try Self.spool(records, into: spool)
        }
        let queue = WatchedQueue(spool)
        let logs = LogCapture()
        let uploader = Uploader(queue: queue, client: try f.client(logger: logs.logger("transport")),
                                configuration: .init(maxBatchItems: 4, idleInterval: .milliseconds(20)),
                                logger: logs.logger("uploader"))
        #expect(uploader.configuration.parallelRequests == 2)
        let running = Task { try await uploader.run() }
        // 31 batches with a 50 ms hold each: seconds when idle; a run with every NetTests suite in
        // parallel on 2 loaded cores did not finish in 30 s (the wait ends as soon as it is empty).
        try await Self.drain(spool, running: running, within: .seconds(120))
        #expect(try await f.storedCounts == (120, 3))
        let counts = queue.counts.withLock { $0 }
        #expect(counts.maxInFlight == 2, "at most \(counts.maxInFlight) batches were in flight at once")
        #expect(Set(counts.acked.keys) == Set(ids) && counts.acked.values.allSatisfy { $0 == 1 })
        #expect(uploader.status.totalRefused == 0, "a blob overtook its DEK record")
        #expect(!logs.contains("unknown-dek"))
    }

    /// Counts leases (attempts).
    final class CountingQueue: UploadQueue, Sendable {
        let spool: Spool
        let leases = Mutex(0)
        init(_ spool: Spool) { self.spool = spool }
        func leaseForUpload(maxItems: Int, maxBytes: Int) async throws -> [SpoolEntry] {
            leases.withLock { $0 += 1 }
            return try await spool.leaseForUpload(maxItems: maxItems, maxBytes: maxBytes)
        }
        func acknowledge(_ ids: [Data]) async throws { try await spool.acknowledge(ids) }
        func giveBack(_ ids: [Data], retryAfter: Duration?) async throws { try await spool.giveBack(ids, retryAfter: retryAfter) }
    }

    /// The collector bounds the upload bytes it holds (`max-inflight-bytes`): past it, 503 with
    /// `Retry-After`. The agent keeps its records, waits exactly that long instead of its own
    /// (here 10 ms) backoff, and delivers everything once the collector has room.
    @Test func busyCollectorSends503RetryAfterAndTheLoopWaitsIt() async throws {
        let f = try await NetFixture.start("busy", maxInflightBytes: 1 << 20, retryAfterSeconds: 2)
        defer { Task { await f.stop() } }
        // Another agent's 700 KB upload is held in flight: a sqlite3 process holds the write lock.
        let held = try HeldTransaction(db: f.collector.databasePath, sql: "BEGIN IMMEDIATE;")
        var heldReleased = false
        defer { if !heldReleased { held.release() } }
        let (first, _) = try f.records(count: 1, size: 700_000)
        let firstBody = first.reduce(into: Data()) { $0.append($1.serialized) }
        let firstClient = try f.client(logger: f.logs.logger("first"))
        let firstUpload = Task { try await firstClient.upload(firstBody, timeout: .seconds(60)) }
        // Generous: with every suite running at once, the handshake and 700 KB can take seconds.
        let deadline = ContinuousClock.now + .seconds(30)
        while f.collector.server.inflightBytes == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(f.collector.server.inflightBytes >= 700_000)

        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (second, _) = try f.records(count: 1, size: 700_000)
        _ = try Self.spool(second, into: spool)
        let queue = CountingQueue(spool)
        let logs = LogCapture()
        let uploader = Uploader(queue: queue, client: try f.client(logger: logs.logger("transport")),
                                configuration: .init(initialBackoff: .milliseconds(10), maxBackoff: .milliseconds(20)),
                                logger: logs.logger("uploader"))
        do {
            _ = try await uploader.uploadOnce()
            Issue.record("the busy collector accepted the upload")
        } catch {
            #expect(error.httpStatus == 503, "\(error)")
            #expect(error.retryAfter == .seconds(2), "\(error)")
        }
        #expect(try spool.stats().totalSpooled.count == 2, "a deferred upload must keep its records")
        #expect(f.logs.contains("collector busy"))

        // The loop honours Retry-After: in 3 s, one more attempt (at 2 s), not hundreds.
        let attemptsBefore = queue.leases.withLock { $0 }
        let started = ContinuousClock.now
        let running = Task { try await uploader.run() }
        try await Task.sleep(for: .seconds(3))
        let attempts = queue.leases.withLock { $0 } - attemptsBefore
        // One attempt per 2 s (plus the first), measured over the time that really passed.
        let elapsed = Double(started.duration(to: .now).components.seconds)
        let allowed = Int(elapsed / 2) + 2
        #expect((1...allowed).contains(attempts), "\(attempts) attempts by both lanes in \(elapsed) s with Retry-After: 2")
        #expect(logs.contains("collector busy; records stay spooled"))
        #expect(!logs.contains("upload failed; records stay spooled"), "a busy answer is flow control, not an error")
        // Room again: the held upload completes, then the deferred one goes through.
        held.release()
        heldReleased = true
        let answer = try await firstUpload.value
        // Stored, or (when a loaded machine kept the sqlite3 lock past the collector's 10 s busy
        // timeout) refused as a retryable storage error: either is the collector's contract.
        let firstStored = answer.results.allSatisfy { $0.status == .stored || $0.status == .duplicate }
        #expect(firstStored || answer.results.allSatisfy { $0.reason == .storageError && $0.retryable == true },
                "\(answer.results)")
        try await Self.drain(spool, running: running, within: .seconds(15))
        #expect(try await f.storedCounts == (firstStored ? (2, 2) : (1, 1)))
        #expect(f.collector.server.inflightBytes == 0)
        await firstClient.close()
    }

    /// A client that announces a body and stalls (a laptop leaving the network mid-upload)
    /// must not hold the collector's in-flight budget: the idle timeout closes the connection
    /// and the bytes come back; other agents are served again.
    @Test func stalledBodyReleasesTheInflightBudget() async throws {
        try requireTool("openssl")
        // 4 s: on a loaded machine the TLS handshake alone can take more than a second, and the
        // idle timer runs from the moment the connection opens.
        let f = try await NetFixture.start("stall", maxInflightBytes: 1 << 20, idleTimeout: .seconds(4))
        defer { Task { await f.stop() } }
        let head = "POST \(WireAPI.recordsPath) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + "Authorization: Bearer \(f.agentID):\(f.token)\r\n"
            + "Content-Type: \(WireAPI.recordsContentType)\r\nContent-Length: 2000000\r\n\r\n0123456789"
        var said = ""
        // Up to three tries, in case a starved run lets the idle timer close the connection
        // before the request arrives (then nothing was reserved, and the try says so).
        for attempt in 1...3 where f.collector.server.inflightPeakBytes == 0 {
            let sClient = Process()
            sClient.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            sClient.arguments = ["openssl", "s_client", "-quiet", "-connect", "127.0.0.1:\(f.collector.port)"]
            let input = Pipe()
            let output = f.dir.file("s_client-\(attempt).out")
            _ = FileManager.default.createFile(atPath: output, contents: nil)
            let outHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
            sClient.standardInput = input
            sClient.standardOutput = outHandle
            sClient.standardError = outHandle
            try sClient.run()
            input.fileHandleForWriting.write(Data(head.utf8))  // and then nothing more: stalled
            // The stalled request reserves its 2,000,000 bytes; the idle timeout then closes the
            // connection (s_client, whose stdin stays open, exits on the server's close) and the
            // bytes come back. Checked through the peak, so a slow test thread cannot miss it.
            let deadline = ContinuousClock.now + .seconds(40)
            while (sClient.isRunning || f.collector.server.inflightBytes != 0) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(!sClient.isRunning, "the collector did not close the stalled connection")
            sClient.terminate()
            sClient.waitUntilExit()
            said += (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        }
        #expect(f.collector.server.inflightPeakBytes >= 2_000_000,
                "the stalled request never reserved its bytes; openssl s_client said: \(said)")
        #expect(f.collector.server.inflightBytes == 0, "a stalled body kept its in-flight bytes past the idle timeout")
        // Another agent is served again.
        let (records, _) = try f.records(count: 2)
        let client = try f.client(logger: f.logs.logger("after"))
        let answer = try await client.upload(records.reduce(into: Data()) { $0.append($1.serialized) })
        #expect(answer.results.count == 3 && answer.results.allSatisfy { $0.status == .stored })
        await client.close()
    }

    /// `Retry-After: 0` (a proxy may send it) must not make a tight loop: the pause is at
    /// least the backoff; a long one is capped.
    @Test func retryAfterZeroStillBacksOff() throws {
        let dir = try TempDir("custos-retry-after")
        defer { dir.remove() }
        let spool = try Spool(directory: dir.path, maxBytes: 8 << 20, logger: LogCapture().logger("spool"))
        let client = try CollectorClient(configuration: testTransport(
            serverURL: "https://127.0.0.1:1", agentID: "a", agentToken: "t", pins: ["sha256/" + String(repeating: "A", count: 43) + "="],
            caFile: nil), logger: LogCapture().logger("c"))
        let uploader = Uploader(queue: spool, client: client,
                                configuration: .init(initialBackoff: .seconds(1), maxBackoff: .seconds(60),
                                                     maxRetryAfter: .seconds(600)),
                                logger: LogCapture().logger("u"))
        for failures in 1...8 {
            let pause = uploader.retryPause(after: .zero, failures: failures)
            let floor = Duration.seconds(min(60, 1 << (failures - 1))) / 2
            #expect(pause >= floor, "Retry-After: 0 after \(failures) failures paused only \(pause)")
        }
        #expect(uploader.retryPause(after: .seconds(7), failures: 1) == .seconds(7))
        #expect(uploader.retryPause(after: .seconds(86_400), failures: 1) == .seconds(600))
    }

    /// The collector acknowledged, but the spool cannot delete (e.g. a reader pins a full WAL):
    /// the attempt counts as failed (backoff, no "last upload"), and the records, still
    /// spooled, are sent again later and answered `duplicate`.
    @Test func spoolAckFailureIsAFailedAttempt() async throws {
        final class AckFailsOnce: UploadQueue, Sendable {
            let spool: Spool
            let failed = Mutex(false)
            init(_ spool: Spool) { self.spool = spool }
            func leaseForUpload(maxItems: Int, maxBytes: Int) async throws -> [SpoolEntry] {
                try await spool.leaseForUpload(maxItems: maxItems, maxBytes: maxBytes)
            }
            func acknowledge(_ ids: [Data]) async throws {
                if !failed.withLock({ f in defer { f = true }; return f }) {
                    throw SpoolError(.full, "ack of \(ids.count) records refused: WAL pinned (test)")
                }
                try await spool.acknowledge(ids)
            }
            func giveBack(_ ids: [Data], retryAfter: Duration?) async throws { try await spool.giveBack(ids, retryAfter: retryAfter) }
        }
        let f = try await NetFixture.start("ackfail")
        defer { Task { await f.stop() } }
        let spool = try Spool(directory: f.dir.file("spool"), maxBytes: 64 << 20, logger: f.logs.logger("spool"))
        let (records, _) = try f.records(count: 5)
        let ids = try Self.spool(records, into: spool)
        let logs = LogCapture()
        let uploader = Uploader(queue: AckFailsOnce(spool), client: try f.client(logger: logs.logger("transport")),
                                logger: logs.logger("uploader"))
        do {
            _ = try await uploader.uploadOnce()
            Issue.record("an ack the spool refused counted as a successful upload")
        } catch {
            #expect(error.code == .spool && error.description.contains("could not delete"), "\(error)")
        }
        #expect(uploader.status.lastSuccessMs == nil && uploader.status.consecutiveFailures == 1)
        #expect(try await f.storedCounts == (5, 1))
        // Still spooled (leased); once released they go again and are acknowledged as duplicates.
        try spool.release(ids, retryAfter: .zero)
        let again = try await uploader.uploadOnce()
        #expect(again.duplicate == 6 && again.stored == 0)
        #expect(try spool.stats().totalSpooled.count == 0)
        #expect(uploader.status.consecutiveFailures == 0)
    }

    @Test func backoffGrowsToTheCapWithJitter() throws {
        let f = UploaderConfiguration(initialBackoff: .seconds(1), maxBackoff: .seconds(60))
        let dir = try TempDir("custos-backoff")
        defer { dir.remove() }
        let spool = try Spool(directory: dir.file("spool"), maxBytes: 1 << 20, logger: LogCapture().logger("spool"))
        let config = try testTransport(serverURL: "https://127.0.0.1:9", agentID: "a", agentToken: "t",
                                       pins: [], caFile: nil)
        let u = Uploader(queue: spool, client: try CollectorClient(configuration: config, logger: LogCapture().logger("t")),
                         configuration: f, logger: LogCapture().logger("u"))
        for _ in 0..<50 {
            let d1 = u.backoff(failures: 1), d4 = u.backoff(failures: 4), d20 = u.backoff(failures: 20)
            #expect(d1 >= .milliseconds(500) && d1 <= .seconds(1))
            #expect(d4 >= .seconds(4) && d4 <= .seconds(8))
            #expect(d20 >= .seconds(30) && d20 <= .seconds(60))
        }
    }
}
