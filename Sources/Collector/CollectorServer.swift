import Foundation
import Synchronization
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOFoundationCompat
import NIOSSL
import ServiceLifecycle
import Wire

/// The reference collector: HTTPS only (TLS 1.2 minimum, 1.3 preferred), Hummingbird 2 over NIOSSL,
/// storage behind ``CollectorStore`` (SQLite by default). API: docs/API.md.
///
/// It never decrypts anything: it parses record headers (Envelope), checks the agent and the KEK
/// and stores the sealed bytes by id.
public final class CollectorServer: Sendable {
    public let configuration: CollectorConfiguration
    public let store: any CollectorStore
    public let registry: KEKRegistry
    let inflight: InflightBudget
    /// Bytes of upload bodies being received and stored now (`max-inflight-bytes` bounds it).
    public var inflightBytes: Int { inflight.inUse }
    /// The most upload-body bytes held at once since start.
    public var inflightPeakBytes: Int { inflight.peak }
    let logger: Logger
    let tls: TLSConfiguration

    /// Opens the store (unless one is given) and loads the TLS certificate chain and key.
    /// - Throws: ``CollectorError`` `.configuration` for unreadable TLS files, `.database` for the store.
    public init(configuration: CollectorConfiguration, store: (any CollectorStore)? = nil, logger: Logger) throws(CollectorError) {
        self.configuration = configuration
        inflight = InflightBudget(limit: configuration.maxInflightBytes, retryAfterSeconds: configuration.retryAfterSeconds)
        self.logger = logger
        if let store { self.store = store } else { self.store = try SQLiteCollectorStore(path: configuration.databasePath) }
        self.registry = KEKRegistry(store: self.store, logger: logger)
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            for (key, file) in [("tls-cert", configuration.tlsCertFile), ("tls-key", configuration.tlsKeyFile)]
            where !FileManager.default.isReadableFile(atPath: file) {
                throw CollectorError(.configuration, "\(key) '\(file)': \(FileManager.default.fileExists(atPath: file) ? "not readable" : "file does not exist")")
            }
            chain = try NIOSSLCertificate.fromPEMFile(configuration.tlsCertFile)
        } catch let error as CollectorError {
            throw error
        } catch {
            throw CollectorError(.configuration, "tls-cert '\(configuration.tlsCertFile)': cannot read a PEM certificate chain: \(error)")
        }
        guard !chain.isEmpty else {
            throw CollectorError(.configuration, "tls-cert '\(configuration.tlsCertFile)': no certificate found")
        }
        do {
            key = try NIOSSLPrivateKey(file: configuration.tlsKeyFile, format: .pem)
        } catch {
            throw CollectorError(.configuration, "tls-key '\(configuration.tlsKeyFile)': cannot read a PEM private key: \(error)")
        }
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                           privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        tls.maximumTLSVersion = .tlsv13
        do {
            _ = try NIOSSLContext(configuration: tls)
        } catch {
            throw CollectorError(.configuration, "tls-key '\(configuration.tlsKeyFile)' does not match tls-cert '\(configuration.tlsCertFile)' (or cannot serve TLS): \(error)")
        }
        self.tls = tls
    }

    /// Serves until the task is cancelled or a graceful shutdown is triggered (for the executable:
    /// SIGTERM/SIGINT, see `runWithSignals`). `onListening` receives the bound TCP port.
    public func run(onListening: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        await registry.refresh()
        let app = try makeApplication(onListening: onListening)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: app),
                       .init(service: KEKRefresher(registry: registry, interval: configuration.kekPollInterval,
                                                   trapSIGHUP: configuration.trapSIGHUP))],
            gracefulShutdownSignals: configuration.trapSIGHUP ? [.sigterm, .sigint] : [],
            logger: logger))
        try await group.run()
    }

    func makeApplication(onListening: @escaping @Sendable (Int) async -> Void) throws -> some ApplicationProtocol {
        let router = Router(context: BasicRequestContext.self)
        let registry = self.registry
        let ingestor = Ingestor(store: store, registry: registry, logger: logger,
                                maxRecords: configuration.maxRecordsPerRequest)
        let store = self.store
        let logger = self.logger
        let maxBytes = configuration.maxRequestBytes
        let budget = inflight
        router.get(RouterPath(WireAPI.healthPath)) { _, _ -> Response in
            // No detail (paths, errors) for this unauthenticated endpoint: the log has it.
            Self.json(.ok, HealthResponse(status: ingestor.storageErrors.isFailing ? "storage-failing" : "ok", apiVersion: 1,
                                          activeKEKs: registry.activeIDs.count))
        }
        router.post(RouterPath(WireAPI.recordsPath)) { request, _ -> Response in
            await Self.upload(request, store: store, ingestor: ingestor, maxBytes: maxBytes, budget: budget, logger: logger)
        }
        let listen = configuration
        return Application(
            router: router,
            server: try .tls(.http1(configuration: .init(idleTimeout: TimeAmount(listen.idleTimeout))),
                             tlsConfiguration: tls),
            configuration: .init(address: .hostname(listen.listenHost, port: listen.listenPort), serverName: nil,
                                 backlog: 1024),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.info("collector listening", metadata: ["collector.port": "\(port)"])
                await onListening(port)
            },
            logger: logger)
    }

    static func upload(_ request: Request, store: any CollectorStore, ingestor: Ingestor, maxBytes: Int,
                       budget: InflightBudget, logger: Logger) async -> Response {
        guard let auth = request.headers[.authorization].flatMap(WireAPI.parseAuthorization) else {
            logger.warning("upload refused: missing or malformed Authorization")
            return unauthorized()
        }
        do {
            guard try await store.authenticate(agentID: auth.agentID, token: auth.token) else {
                logger.warning("upload refused: wrong token", metadata: ["collector.agent_id": "\(auth.agentID)"])
                return unauthorized()
            }
        } catch {
            logger.error("authentication failed", metadata: ["collector.error": "\(error)"])
            return json(.serviceUnavailable, ErrorResponse(error: .unavailable, message: "authentication store unavailable"),
                        retryAfter: 5)
        }
        let type = request.headers[.contentType]?.split(separator: ";").first.map {
            $0.trimmingCharacters(in: .whitespaces).lowercased()
        }
        guard type == WireAPI.recordsContentType else {
            return json(.unsupportedMediaType, ErrorResponse(error: .unsupportedMediaType,
                                                             message: "expected Content-Type \(WireAPI.recordsContentType)"))
        }
        let declared = request.headers[.contentLength].flatMap { Int($0) }
        if let length = declared, length > maxBytes {
            logger.warning("upload refused: too large", metadata: ["collector.agent_id": "\(auth.agentID)",
                                                                   "collector.bytes": "\(length)"])
            return json(.contentTooLarge, ErrorResponse(error: .tooLarge, message: "body of \(length) bytes exceeds \(maxBytes)"))
        }
        // Reserve the body's size before reading it (a body without Content-Length counts as
        // the largest allowed), so memory stays bounded however many agents upload at once.
        let reserved = declared ?? maxBytes
        guard budget.reserve(reserved) else {
            logger.notice("upload deferred: collector busy", metadata: [
                "collector.agent_id": "\(auth.agentID)", "collector.bytes": "\(reserved)",
                "collector.inflight_bytes": "\(budget.inUse)"])
            return json(.serviceUnavailable, ErrorResponse(
                error: .unavailable,
                message: "collector busy: \(budget.inUse) bytes of uploads in flight (max-inflight-bytes \(budget.limit)); retry later"),
                retryAfter: budget.retryAfterSeconds)
        }
        defer { budget.release(reserved) }
        // Collected into one buffer of the declared size, allocated once: no regrowth, and the
        // TLS layer's read buffers are released as soon as each fragment is copied.
        var body = ByteBuffer()
        body.reserveCapacity(max(0, declared ?? 0))
        do {
            try await request.body.collect(upTo: maxBytes, into: &body)
        } catch is NIOTooManyBytesError {
            logger.warning("upload refused: body too large", metadata: ["collector.agent_id": "\(auth.agentID)"])
            return json(.contentTooLarge, ErrorResponse(error: .tooLarge, message: "body exceeds \(maxBytes) bytes"))
        } catch {
            // The client went away or the connection timed out mid-body (idle-timeout-seconds).
            logger.warning("upload body could not be read", metadata: ["collector.agent_id": "\(auth.agentID)",
                                                                       "collector.error": "\(error)"])
            return json(.badRequest, ErrorResponse(error: .malformed, message: "the request body could not be read: \(error)"))
        }
        switch await ingestor.ingest(agentID: auth.agentID, body: body) {
        case .results(let status, let response):
            return json(.init(code: status), response)
        case .error(let status, let error):
            return json(.init(code: status), error)
        }
    }

    static func unauthorized() -> Response {
        var r = json(.unauthorized, ErrorResponse(error: .unauthorized, message: "expected Authorization: Bearer AGENTID:TOKEN"))
        r.headers[.wwwAuthenticate] = "Bearer realm=\"custos\""
        return r
    }

    static func json(_ status: HTTPResponse.Status, _ value: some Encodable, retryAfter: Int? = nil) -> Response {
        let data = (try? JSONEncoder().encode(value)) ?? Data("{}".utf8)
        var headers: HTTPFields = [.contentType: WireAPI.jsonContentType]
        if let retryAfter { headers[.retryAfter] = "\(retryAfter)" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// Bytes of upload bodies the collector holds at once (`max-inflight-bytes`). One request is
/// always let through when nothing else is in flight, so a body larger than the limit (but
/// within `max-request-bytes`) is still served.
final class InflightBudget: Sendable {
    let limit: Int
    let retryAfterSeconds: Int
    private let used = Mutex((now: 0, peak: 0))

    init(limit: Int, retryAfterSeconds: Int) {
        self.limit = limit
        self.retryAfterSeconds = retryAfterSeconds
    }

    var inUse: Int { used.withLock { $0.now } }
    /// The most ever held at once (for tests and diagnostics).
    var peak: Int { used.withLock { $0.peak } }

    /// Takes `bytes` from the budget; false (nothing taken) when that would pass the limit.
    func reserve(_ bytes: Int) -> Bool {
        used.withLock { used in
            guard used.now == 0 || used.now + bytes <= limit else { return false }
            used.now += bytes
            used.peak = max(used.peak, used.now)
            return true
        }
    }

    func release(_ bytes: Int) {
        used.withLock { $0.now -= bytes }
    }
}
