// custos-bench-net: upload throughput over loopback vs a plain TLS stream (same run), and collector
// ingest with many concurrent simulated agents (p50/p99 acknowledgement time).
//
// Usage: custos-bench-net [--mib N] [--blob-kib N] [--lanes N] [--batch-kib N] [--rounds N] [--agents N] [--requests N]
//                         [--profile-upload]  (upload rounds only, for perf record)
// Everything runs in this process on 127.0.0.1: a real CollectorServer (SQLite in a temp dir,
// certificates and KEK made by the openssl CLI), real pinned Transport clients, and for the
// baseline a NIOSSL server that discards what it reads.

import BenchSupport
import Collector
import CollectorStorage
import CustosBase
import Envelope
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Spool
import Synchronization
import Transport
import Wire

// MARK: Arguments

let totalMiB = argument("--mib", 128)
let blobKiB = argument("--blob-kib", 256)
let agentCount = argument("--agents", 1000)
let requestsPerAgent = argument("--requests", 3)

var logger = Logger(label: "bench")
logger.logLevel = .error

// MARK: Helpers

@discardableResult
func sh(_ command: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw BenchError("command failed: \(command)") }
    return String(decoding: data, as: UTF8.self)
}

func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

let dir = FileManager.default.temporaryDirectory.appendingPathComponent("custos-bench-net-\(getpid())").path
try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: dir) }

// Certificates (P-256, self-signed, pinned) and an RSA-2048 KEK, by the openssl CLI.
try sh("""
    cd '\(dir)' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout tls.key \
      -out tls.pem -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
      -addext basicConstraints=critical,CA:FALSE && \
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out keypair.pem && \
    openssl rsa -in keypair.pem -pubout -out publickey.crt
    """)
let pin = "sha256/" + (try sh("openssl x509 -in '\(dir)/tls.pem' -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64"))
    .trimmingCharacters(in: .whitespacesAndNewlines)
let kek = try KEKPublicKey(pemFile: dir + "/publickey.crt")

// MARK: Collector

let config = CollectorConfiguration(listenHost: "127.0.0.1", listenPort: 0, tlsCertFile: dir + "/tls.pem",
                                    tlsKeyFile: dir + "/tls.key", database: .sqlite(path: dir + "/collector.db"),
                                    maxRequestBytes: 64 << 20,
                                    // Every simulated agent holds a connection; the upload lanes too.
                                    maxConnections: max(1024, agentCount + 256), trapSIGHUP: false)
// Cancelling the server at the end makes Hummingbird log its shutdown at error level; the
// bench checks every answer itself, so the server logs only critical lines.
var serverLogger = logger
serverLogger.logLevel = .critical
let server = try await CollectorServer(configuration: config, logger: serverLogger)
_ = try await server.storage.registerKEK(KEKRegistration(pubDatafile: dir + "/publickey.crt", publicKeyPEM: nil,
                                                         privDatafile: nil, privEncrypted: false, active: true, kekID: nil))
let (portStream, portContinuation) = AsyncStream<Int>.makeStream()
let serverTask = Task { try await server.run(onListening: { portContinuation.yield($0) }) }
var port = 0
for await p in portStream { port = p; break }

// MARK: 1. Upload throughput vs a plain TLS stream

/// Pre-sealed records served to the real `Uploader` from memory, so the figure is the upload
/// path (Uploader lanes, pinned TLS, HTTP, collector parse, SQLite store, ack) without the
/// agent's own spool I/O. Like the spool, it hands out blobs of a DEK only with (or after
/// the acknowledgement of) that DEK's record.
final class MemoryQueue: UploadQueue, Sendable {
    struct State { var pending: [SpoolEntry]; var leased: [Data: SpoolEntry] = [:]; var acked = 0; var dekAcked = false }
    let state: Mutex<State>
    let total: Int
    let done: AsyncStream<Void>.Continuation
    init(_ entries: [SpoolEntry], done: AsyncStream<Void>.Continuation) {
        state = Mutex(State(pending: entries))
        total = entries.count
        self.done = done
    }
    func leaseForUpload(maxItems: Int, maxBytes: Int) async throws -> [SpoolEntry] {
        state.withLock { s in
            if !s.dekAcked && s.pending.first?.kind != .dekRecord { return [] }
            var out: [SpoolEntry] = [], bytes = 0
            while let e = s.pending.first, out.count < maxItems, out.isEmpty || bytes + e.payload.count <= maxBytes {
                out.append(s.pending.removeFirst())
                bytes += e.payload.count
                s.leased[e.id] = e
            }
            return out
        }
    }
    func acknowledge(_ ids: [Data]) async throws {
        let finished = state.withLock { s -> Bool in
            for id in ids where s.leased.removeValue(forKey: id) != nil {
                s.acked += 1
                s.dekAcked = true  // the first acknowledged batch starts with the DEK record
            }
            return s.acked == total
        }
        if finished { done.yield() }
    }
    func giveBack(_ ids: [Data], retryAfter: Duration?) async throws {
        state.withLock { s in s.pending.insert(contentsOf: ids.compactMap { s.leased.removeValue(forKey: $0) }, at: 0) }
    }
}

let blobBytes = blobKiB * 1024
let blobCount = max(1, totalMiB * 1024 / blobKiB)
let lanes = argument("--lanes", UploaderConfiguration().parallelRequests)
let batchBytes = argument("--batch-kib", UploaderConfiguration().maxBatchBytes / 1024) * 1024
let rounds = argument("--rounds", 3)
let payload = Data((0..<blobBytes).map { UInt8(truncatingIfNeeded: $0 &* 31) })
let token0 = try await server.storage.addAgent(try AgentID("bench-0"))
let collectorURL = try CollectorURL("https://127.0.0.1:\(port)")
let pinPolicy = try TLSPolicy(pins: [try SPKIPin(pin)], caFile: nil)
let transport0 = TransportConfiguration(server: collectorURL, agentID: try AgentID("bench-0"), agentToken: token0,
                                        policy: pinPolicy)
let clock = ContinuousClock()
/// One upload round: a fresh DEK session and blobs (new ids, so the collector stores them all).
@MainActor func uploadRound() async throws -> (seconds: Double, bytes: Int) {
    let session = try DEKSession(kek: kek, agentID: "bench-0")
    let dekID = Data(session.record.dekID.bytes)
    var entries = [SpoolEntry(id: dekID, kind: .dekRecord, dekID: dekID, captureTimeMs: 0,
                              payload: session.record.serialized)]
    for i in 0..<blobCount {
        let record = try session.seal(payload, kind: .screen, captureTimeMs: Int64(i))
        entries.append(SpoolEntry(id: Data(record.header.blobID.bytes), kind: .screen, dekID: dekID, captureTimeMs: Int64(i),
                                  payload: record.serialized))
    }
    let bytes = entries.reduce(0) { $0 + $1.payload.count }
    let (doneStream, doneContinuation) = AsyncStream<Void>.makeStream()
    let queue = MemoryQueue(entries, done: doneContinuation)
    let client = try CollectorClient(configuration: transport0, logger: logger)
    let uploader = Uploader(queue: queue, client: client,
                            configuration: UploaderConfiguration(maxBatchBytes: batchBytes, idleInterval: .milliseconds(5),
                                                                 parallelRequests: lanes),
                            logger: logger)
    let start = clock.now
    let run = Task { try await uploader.run() }
    for await _ in doneStream { break }
    let elapsed = seconds(start.duration(to: clock.now))
    run.cancel()
    _ = try? await run.value
    await client.close()
    guard uploader.status.totalRefused == 0 else { throw BenchError("the collector refused records") }
    return (elapsed, bytes)
}

/// Baseline: the same number of bytes over one TLS connection (same certificate, TLS 1.3) to a
/// NIOSSL server that discards them and answers one byte at the end.
/// With `file` set, the server also writes what it reads to that file and calls `fdatasync`
/// after every 4 MiB (and at the end): the same durability as the collector's acknowledgement,
/// without HTTP, parsing or SQLite.
final class Discard: ChannelInboundHandler, @unchecked Sendable {
    // Confined to its channel's event loop, like every ChannelHandler.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var seen = 0
    var unsynced = 0
    let expected: Int
    let file: FileHandle?
    init(expected: Int, file path: String?) {
        self.expected = expected
        file = path.flatMap { path in
            _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600])
            return FileHandle(forWritingAtPath: path)
        }
    }
    deinit { try? file?.close() }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        seen += buffer.readableBytes
        if let file {
            do {
                try file.write(contentsOf: buffer.readableBytesView)
                unsynced += buffer.readableBytes
                if unsynced >= 4 << 20 || seen >= expected {
                    guard fdatasync(file.fileDescriptor) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
                    unsynced = 0
                }
            } catch {
                fatalError("durable reference: cannot write or sync: \(error)")
            }
        }
        if seen >= expected {
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: [1])), promise: nil)
        }
    }
}
final class Done: ChannelInboundHandler, @unchecked Sendable {
    // Confined to its channel's event loop.
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<Void>
    init(_ p: EventLoopPromise<Void>) { promise = p }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { promise.succeed(()) }
}

let group = MultiThreadedEventLoopGroup.singleton
var serverTLS = TLSConfiguration.makeServerConfiguration(
    certificateChain: try NIOSSLCertificate.fromPEMFile(dir + "/tls.pem").map { .certificate($0) },
    privateKey: .privateKey(try NIOSSLPrivateKey(file: dir + "/tls.key", format: .pem)))
serverTLS.minimumTLSVersion = .tlsv12
let serverContext = try NIOSSLContext(configuration: serverTLS)
var clientTLS = TLSConfiguration.makeClientConfiguration()
clientTLS.certificateVerification = .noHostnameVerification
clientTLS.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(dir + "/tls.pem"))
let clientContext = try NIOSSLContext(configuration: clientTLS)

@MainActor func plainRound(bytes: Int, durable: Bool = false) async throws -> Double {
    let file: String? = durable ? dir + "/durable-reference.bin" : nil
    let chunk = [UInt8](repeating: 0x5A, count: 4 << 20)
    let plainServer = try await ServerBootstrap(group: group)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { ch in
            ch.eventLoop.makeCompletedFuture {
                try ch.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverContext))
                try ch.pipeline.syncOperations.addHandler(Discard(expected: bytes, file: file))
            }
        }
        .bind(host: "127.0.0.1", port: 0).get()
    let donePromise = group.next().makePromise(of: Void.self)
    let start = clock.now
    let channel = try await ClientBootstrap(group: group)
        .channelInitializer { ch in
            ch.eventLoop.makeCompletedFuture {
                try ch.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: clientContext, serverHostname: nil))
                try ch.pipeline.syncOperations.addHandler(Done(donePromise))
            }
        }
        .connect(host: "127.0.0.1", port: plainServer.localAddress!.port!).get()
    // All writes queued at once (a stream, no per-request round trip), then wait for the answer.
    var left = bytes
    var lastWrite: EventLoopFuture<Void>? = nil
    while left > 0 {
        let n = min(left, chunk.count)
        lastWrite = channel.writeAndFlush(ByteBuffer(bytes: chunk[0..<n]))
        left -= n
    }
    try await lastWrite?.get()
    try await donePromise.futureResult.get()
    let elapsed = seconds(start.duration(to: clock.now))
    try await channel.close().get()
    try await plainServer.close().get()
    if let file { unlink(file) }
    return elapsed
}

// Alternate the two, order swapped every round; medians.
// A third series, the durable reference, sits between them in every round.
var uploadTimes: [Double] = [], plainTimes: [Double] = [], durableTimes: [Double] = []
if CommandLine.arguments.contains("--profile-upload") {
    // For `perf record`: upload rounds only, no references, no ingest.
    for _ in 0..<rounds { print(String(format: "upload: %.2f s", try await uploadRound().seconds)) }
    try? FileManager.default.removeItem(atPath: dir)  // exit skips the defer above
    exit(0)
}
let first = try await uploadRound()  // also fixes the byte count of every round
let totalBytes = first.bytes
uploadTimes.append(first.seconds)
durableTimes.append(try await plainRound(bytes: totalBytes, durable: true))
plainTimes.append(try await plainRound(bytes: totalBytes))
for round in 1..<max(1, rounds) {
    if round % 2 == 0 {
        uploadTimes.append(try await uploadRound().seconds)
        durableTimes.append(try await plainRound(bytes: totalBytes, durable: true))
        plainTimes.append(try await plainRound(bytes: totalBytes))
    } else {
        plainTimes.append(try await plainRound(bytes: totalBytes))
        durableTimes.append(try await plainRound(bytes: totalBytes, durable: true))
        uploadTimes.append(try await uploadRound().seconds)
    }
}
let requestCount = (totalBytes + (4 << 20) - 1) / (4 << 20)
func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }
let mb = Double(totalBytes) / 1e6
let uploadRate = mb / median(uploadTimes), plainRate = mb / median(plainTimes), durableRate = mb / median(durableTimes)
print(String(format: "upload:  %.1f MB per round in ~%d requests of ~4.2 MB, %d lanes: %.1f MB/s median of %d (Uploader + pinned TLS + HTTP + collector parse + SQLite store + ack)",
             mb, requestCount, lanes, uploadRate, rounds))
print(String(format: "plain:   same bytes over one TLS stream to a discarding NIOSSL server: %.1f MB/s median", plainRate))
print(String(format: "ratio:   %.2f (goal >= 0.8); rounds upload %@ MB/s, plain %@ MB/s", uploadRate / plainRate,
             uploadTimes.map { String(format: "%.0f", mb / $0) }.joined(separator: " "),
             plainTimes.map { String(format: "%.0f", mb / $0) }.joined(separator: " ")))
print(String(format: "durable: same bytes over one TLS stream, written to a file with fdatasync every 4 MiB: %.1f MB/s median; upload/durable %.2f; rounds %@ MB/s",
             durableRate, uploadRate / durableRate,
             durableTimes.map { String(format: "%.0f", mb / $0) }.joined(separator: " ")))

// MARK: 2. Ingest: many concurrent agents

struct Agent: Sendable {
    let id: String
    let client: CollectorClient
    let bodies: [Data]
}
var agents: [Agent] = []
let smallPayload = Data(repeating: 0x61, count: 2048)  // a keystroke chunk-sized blob
for i in 0..<agentCount {
    let id = "agent-\(i)"
    let token = try await server.storage.addAgent(try AgentID(id))
    let s = try DEKSession(kek: kek, agentID: id)
    var agentBodies: [Data] = []
    for r in 0..<requestsPerAgent {
        var body = r == 0 ? s.record.serialized : Data()
        body.append(try s.seal(smallPayload, kind: .keystrokes, captureTimeMs: Int64(r)).serialized)
        agentBodies.append(body)
    }
    let c = try CollectorClient(configuration: TransportConfiguration(
        server: collectorURL, agentID: try AgentID(id), agentToken: token, policy: pinPolicy),
        logger: logger)
    agents.append(Agent(id: id, client: c, bodies: agentBodies))
}
let latencies = Mutex<[Double]>([])
let failures = Atomic<Int>(0)
let ingestStart = clock.now
await withTaskGroup(of: Void.self) { group in
    for agent in agents {
        group.addTask {
            for body in agent.bodies {
                let t0 = clock.now
                do {
                    let r = try await agent.client.upload(body, timeout: .seconds(120))
                    if !r.results.allSatisfy(\.isAcknowledged) { failures.add(1, ordering: .relaxed) }
                } catch {
                    failures.add(1, ordering: .relaxed)
                }
                let dt = seconds(t0.duration(to: clock.now))
                latencies.withLock { $0.append(dt) }
            }
            await agent.client.close()
        }
    }
}
let ingestTime = seconds(ingestStart.duration(to: clock.now))
let sorted = latencies.withLock { $0 }.sorted()
func percentile(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
let stored = try await server.storage.counts()
print(String(format: "ingest:  %d agents x %d requests (first with its DEK record; 2 KiB blobs), all concurrent, each its own TLS connection",
             agentCount, requestsPerAgent))
print(String(format: "ingest:  %.0f requests/s over %.1f s; ack time p50 %.0f ms, p99 %.0f ms, max %.0f ms (first request includes the TLS handshake); failures %d",
             Double(sorted.count) / ingestTime, ingestTime, percentile(0.5) * 1000, percentile(0.99) * 1000,
             (sorted.last ?? 0) * 1000, failures.load(ordering: .relaxed)))
print("stored:  \(stored.captures) captures, \(stored.deks) DEK records")
serverTask.cancel()
_ = await serverTask.result
if failures.load(ordering: .relaxed) > 0 { exit(1) }
