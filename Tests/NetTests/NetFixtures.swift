import Collector
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Logging
import Synchronization
import TestSupport
import Transport
import Wire

/// A collector with a registered KEK and an agent, plus records sealed for that agent.
struct NetFixture {
    let dir: TempDir
    let collector: TestCollector
    let agentID: String
    let token: String
    let kekPublic: String
    let kekPrivate: String
    let logs: LogCapture
    /// The storage the test gave the collector (closed by ``stop()``), if any.
    let givenStorage: (any CollectorStorage)?

    /// Starts a collector presenting `certificate`; registers the KEK unless `registerKEK` is false.
    /// - Parameters:
    ///   - storage: a storage to serve, made from the database path (default: the collector opens it).
    static func start(_ name: String = "net", certificate: String = "leaf", registerKEK: Bool = true,
                      maxRequestBytes: Int = 16 * 1024 * 1024, maxInflightBytes: Int = 256 << 20,
                      retryAfterSeconds: Int = 5, idleTimeout: Duration = .seconds(30),
                      bodyTimeout: Duration = .seconds(120), maxUploadsPerAgent: Int = 4,
                      maxConnections: Int = 1024, kekPollInterval: Duration = .seconds(3),
                      storage makeStorage: ((String) throws -> any CollectorStorage)? = nil) async throws -> NetFixture {
        let dir = try TempDir("custos-\(name)")
        let logs = LogCapture()
        let shared = try sharedMaterial.get()
        let given = try makeStorage?(dir.file("collector.db"))
        let collector = try await TestCollector.start(in: dir.path, pki: shared.pki, certificate: certificate,
                                                      storage: given, maxRequestBytes: maxRequestBytes,
                                                      kekPollInterval: kekPollInterval, maxInflightBytes: maxInflightBytes,
                                                      retryAfterSeconds: retryAfterSeconds, idleTimeout: idleTimeout,
                                                      bodyTimeout: bodyTimeout, maxUploadsPerAgent: maxUploadsPerAgent,
                                                      maxConnections: maxConnections, logger: logs.logger("collector", level: .info))
        let (pub, priv) = shared.kek
        if registerKEK {
            _ = try await collector.storage.registerKEK(pathOnlyKEK(pub, priv))
            await collector.server.registry.refresh()
        }
        let agentID = "host-\(UInt32.random(in: 0...UInt32.max))"
        let token = try await collector.storage.addAgent(try AgentID(agentID)).revealed
        return NetFixture(dir: dir, collector: collector, agentID: agentID, token: token, kekPublic: pub,
                          kekPrivate: priv, logs: logs, givenStorage: given)
    }

    func stop() async {
        await collector.stop()
        await givenStorage?.close()
        dir.remove()
    }

    /// A DEK record followed by `count` sealed blobs of `size` random bytes each, for `agent` (default: ours).
    func records(count: Int, size: Int = 1000, agent: String? = nil) throws -> (records: [EnvelopeRecord], plaintexts: [Data]) {
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: kekPublic), agentID: agent ?? agentID)
        var out: [EnvelopeRecord] = [.dekRecord(session.record)]
        var plain: [Data] = []
        for i in 0..<count {
            let p = randomData(size)
            plain.append(p)
            out.append(.blob(try session.seal(p, kind: i % 2 == 0 ? .screen : .keystrokes, captureTimeMs: 1_700_000_000_000 + Int64(i))))
        }
        return (out, plain)
    }

    /// A client for this collector with the given trust settings (default: the leaf pin).
    func client(pins: [String]? = nil, caFile: String? = nil, host: String = "127.0.0.1", token: String? = nil,
                agentID: String? = nil, logger: Logger? = nil) throws -> CollectorClient {
        let pinValues = try (try pins ?? [collector.pin]).map { p throws in try SPKIPin(p) }
        let config = TransportConfiguration(server: try CollectorURL("https://\(host):\(collector.port)"),
                                            agentID: try AgentID(agentID ?? self.agentID),
                                            agentToken: Secret(token ?? self.token),
                                            policy: try TLSPolicy(pins: pinValues, caFile: caFile))
        return try CollectorClient(configuration: config, logger: logger ?? logs.logger("transport"))
    }

    var storedCounts: (captures: Int, deks: Int) { get async throws { try await collector.storage.counts() } }
}

/// The counts of the SQLite database at `path`, read through a storage of its own (the
/// collector's is closed once it stops).
func storedCounts(in path: String) async throws -> (captures: Int, deks: Int) {
    let storage = try SQLiteStorage(path: path)
    let counts = try await storage.counts()
    await storage.close()
    return counts
}

/// An `encryption_kek` row as the seed's SQL makes it: the public key's path only.
func pathOnlyKEK(_ publicKey: String, _ privateKey: String? = nil) -> KEKRegistration {
    KEKRegistration(pubDatafile: publicKey, publicKeyPEM: nil, privDatafile: privateKey, privEncrypted: false, kekID: nil)
}

/// Every capture `query` selects, all pages.
func allCaptures(_ storage: any CollectorStorage, _ query: CaptureQuery = CaptureQuery()) async throws -> [CaptureInfo] {
    var out: [CaptureInfo] = [], cursor: CaptureCursor?
    repeat {
        let page = try await storage.captures(query, after: cursor, limit: 1000)
        out += page.items
        cursor = page.next
    } while cursor != nil
    return out
}

/// A DEK record as the collector stores it.
func ingestItem(_ r: DEKRecord) -> IngestItem {
    .dek(StoredDEK(dekID: r.dekID, kekID: r.kekID, agentID: try! AgentID(r.agentID), creationTimeMs: r.creationTimeMs,
                   record: r.serialized))
}

/// A sealed blob as the collector stores it: its header's fields (a session blob's user and
/// display too), `bytes` (default its own), by `agent` (default the header's).
func ingestItem(_ b: SealedBlob, bytes: Data? = nil, agent: AgentID? = nil) -> IngestItem {
    let h = b.header
    return .blob(StoredBlob(blobID: h.blobID, agentID: agent ?? (try! AgentID(h.agentID)), kind: h.kind, dekID: h.dekID,
                            kekID: h.kekID, sequence: Int64(bitPattern: h.sequence), captureTimeMs: h.captureTimeMs,
                            bytes: bytes ?? b.serialized, user: h.session?.user, display: h.session?.display))
}

extension EnvelopeRecord {
    /// The blob id of a sealed blob (traps for a DEK record).
    var blobID: BlobID {
        guard case .blob(let b) = self else { preconditionFailure("not a sealed blob") }
        return b.header.blobID
    }
}

/// Certificates and a KEK made once per test process (openssl is slow on a busy 2-core machine).
/// The folder is left in the temp dir for the process' lifetime.
let sharedMaterial: Result<(pki: TestPKI, kek: (publicKey: String, privateKey: String)), any Error> = Result {
    let dir = try TempDir("custos-net-shared")
    return (try makeTestPKI(in: dir.path), try makeTestKEK(in: dir.path))
}

/// A transport configuration from test strings, each parsed by its CustosBase validator
/// (the same ones `AgentConfig` uses).
func testTransport(serverURL: String, agentID: String, agentToken: String, pins: [String],
                   caFile: String?) throws -> TransportConfiguration {
    TransportConfiguration(server: try CollectorURL(serverURL), agentID: try AgentID(agentID), agentToken: Secret(agentToken),
                           policy: try TLSPolicy(pins: try pins.map { p throws in try SPKIPin(p) }, caFile: caFile))
}

func stream(_ records: [EnvelopeRecord]) -> Data { RecordStream.encode(records) }

/// Writes a `collector.cfg` serving the shared PKI's leaf certificate on `listen`, with
/// `database=DATABASE` (default `collector.db`, beside the file; or a `postgres://` URL, then
/// with `database-password-file=` when `passwordFile` is given) and any `extra` lines.
func writeCollectorConfig(_ path: String, pki: TestPKI, listen: String, database: String = "collector.db",
                          passwordFile: String? = nil, extra: String = "") throws {
    try """
        listen=\(listen)
        tls-cert=\(pki.chain("leaf"))
        tls-key=\(pki.key("leaf"))
        database=\(database)
        \(passwordFile.map { "database-password-file=\($0)" } ?? "")
        \(extra)
        """.write(toFile: path, atomically: true, encoding: .utf8)
}
