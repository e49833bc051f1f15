import CollectorStorage
import CollectorStorageOpen
import CustosBase
import Envelope
import Foundation
import Synchronization
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOFoundationCompat
import NIOSSL
import ServiceLifecycle
import Wire

/// The reference collector: HTTPS only (TLS 1.2 minimum, 1.3 preferred), Hummingbird 2 over NIOSSL,
/// storage behind the `CollectorStorage` seam (opened from `database=` by `StorageOpener`:
/// a SQLite file by default). API: docs/API.md.
///
/// It never decrypts anything: it parses record headers (Envelope), checks the agent and the KEK
/// and stores the sealed bytes by id.
public final class CollectorServer: Sendable {
    public let configuration: CollectorConfiguration
    public let storage: any CollectorStorage
    /// Whether ``run(onListening:)`` closes ``storage`` when it ends (it opened it).
    let ownsStorage: Bool
    public let registry: KEKRegistry
    let healthCheck: StorageHealthCheck
    let inflight: InflightBudget
    /// Bytes of upload bodies being received and stored now (`max-inflight-bytes` bounds it).
    public var inflightBytes: Int { inflight.inUse }
    /// The most upload-body bytes held at once since start.
    public var inflightPeakBytes: Int { inflight.peak }
    let logger: Logger
    let tls: TLSConfiguration
    let connections: ConnectionLimit
    /// The admin listener's TLS configuration and API, nil without `admin-listen`.
    let admin: (tls: TLSConfiguration, api: AdminAPI)?
    /// Connections open now (`max-connections` bounds it).
    public var openConnections: Int { connections.count }

    /// Loads the TLS certificate chain and key, then opens the storage at `database=` (unless
    /// `storage` is given: the caller then owns it, runs it and closes it). No connection to a
    /// PostgreSQL database is made here: ``run(onListening:)`` does it.
    /// - Throws: ``CollectorError`` `.configuration` for unreadable TLS files, `.database` when
    ///   the storage cannot be opened (the message names it: a SQLite file that cannot be
    ///   opened, a PostgreSQL password file that is missing or open to others).
    public init(configuration: CollectorConfiguration, storage: (any CollectorStorage)? = nil,
                logger: Logger) async throws(CollectorError) {
        self.configuration = configuration
        inflight = InflightBudget(limit: configuration.maxInflightBytes, perAgentLimit: configuration.maxUploadsPerAgent,
                                  retryAfterSeconds: configuration.retryAfterSeconds)
        self.logger = logger
        connections = ConnectionLimit(limit: configuration.maxConnections, logger: logger)
        self.tls = try Self.loadTLS(cert: configuration.tlsCertFile, key: configuration.tlsKeyFile)
        if let directory = configuration.blobDirectory {
            // What can be checked without the database (its marker is checked once it answers).
            do { try SharedBlobDirectory.checkPlace(directory) } catch {
                throw CollectorError(.configuration, error.message)  // names the directory and blob-dir=
            }
        }
        if let storage {
            self.storage = storage
            ownsStorage = false
        } else {
            do {
                self.storage = try await StorageOpener.openService(configuration.database, blobDirectory: configuration.blobDirectory,
                                                                          logger: logger)
            } catch {
                throw CollectorError(.database, "database=\(SafeText.escaped(configuration.database.description)): cannot open the storage: \(error.message)")
            }
            ownsStorage = true
        }
        registry = KEKRegistry(storage: self.storage, logger: logger)
        healthCheck = StorageHealthCheck(storage: self.storage)
        if let a = configuration.admin {
            let adminTLS = try Self.loadTLS(cert: a.tlsCertFile, key: a.tlsKeyFile, certKey: "admin-tls-cert", keyKey: "admin-tls-key")
            let ownKey = try Self.ownKey(a.serverPrivateKeyFile)
            admin = (adminTLS, AdminAPI(storage: self.storage, configuration: a, ownKey: ownKey, logger: logger))
        } else {
            admin = nil
        }
    }

    /// The collector's own KEK from `server-private-key-file` (unencrypted PEM), nil for nil.
    /// - Throws: ``CollectorError`` `.configuration` naming the file and why.
    static func ownKey(_ file: String?) throws(CollectorError) -> KEKPrivateKey? {
        guard let file else { return nil }
        do {
            return try KEKPrivateKey(pemFile: file, passphrase: nil)
        } catch {
            throw CollectorError(.configuration, "server-private-key-file '\(SafeText.escaped(file))': \(SafeText.escaped(String(describing: error))) (expected an unencrypted PEM RSA private key)")
        }
    }

    /// The server TLS configuration from a certificate chain and key file (`tls-cert` and
    /// `tls-key`, or the admin listener's); `certKey` and `keyKey` name the keys in messages.
    static func loadTLS(cert certFile: String, key keyFile: String, certKey: String = "tls-cert",
                        keyKey: String = "tls-key") throws(CollectorError) -> TLSConfiguration {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            for (key, file) in [(certKey, certFile), (keyKey, keyFile)]
            where !FileManager.default.isReadableFile(atPath: file) {
                throw CollectorError(.configuration, "\(key) '\(file)': \(FileManager.default.fileExists(atPath: file) ? "not readable" : "file does not exist")")
            }
            chain = try NIOSSLCertificate.fromPEMFile(certFile)
        } catch let error as CollectorError {
            throw error
        } catch {
            throw CollectorError(.configuration, "\(certKey) '\(certFile)': cannot read a PEM certificate chain: \(error)")
        }
        guard !chain.isEmpty else {
            throw CollectorError(.configuration, "\(certKey) '\(certFile)': no certificate found")
        }
        do {
            key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
        } catch {
            throw CollectorError(.configuration, "\(keyKey) '\(keyFile)': cannot read a PEM private key: \(error)")
        }
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                           privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        tls.maximumTLSVersion = .tlsv13
        // After sending close_notify, NIOSSL keeps reading (and decrypting) until the client's
        // close_notify or this timeout (default 5 s). A client that floods a refused request
        // never answers it, so keep the wait short.
        tls.shutdownTimeout = .seconds(1)
        do {
            _ = try NIOSSLContext(configuration: tls)
        } catch {
            throw CollectorError(.configuration, "\(keyKey) '\(keyFile)' does not match \(certKey) '\(certFile)' (or cannot serve TLS): \(error)")
        }
        return tls
    }

    /// Serves until the task is cancelled or a graceful shutdown is triggered (for the executable:
    /// SIGTERM/SIGINT, see `runWithSignals`). `onListening` receives the bound TCP port. Closes
    /// the storage it opened when it ends.
    ///
    /// One `ServiceGroup` runs, in this order: the storage it opened (its `run()`: PostgreSQL's
    /// connection pool; started first, stopped last), the HTTP server, the KEK refresher, and
    /// — when the retention policy expires anything — the ``RetentionService``.
    /// Before listening, the server connects to the storage and brings its schema up to date
    /// (``startStorage()``): a storage that refuses (wrong password, no such database, TLS,
    /// newer schema) ends `run` with a ``CollectorError`` `.database`; one that cannot be
    /// reached now is logged (naming host and port) and retried in the background while the
    /// server serves: uploads are answered 503 with `Retry-After` and health says
    /// `storage-failing` until it answers.
    /// `onAdminListening` receives the admin listener's bound port (`admin-listen`).
    public func run(onListening: @escaping @Sendable (Int) async -> Void = { _ in },
                    onAdminListening: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        do {
            let app = AfterStorageStart(server: self, app: try makeApplication(onListening: onListening))
            var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
            if ownsStorage { services.append(.init(service: storage)) }
            services.append(.init(service: app))
            if let admin, let listen = configuration.admin {
                services.append(.init(service: makeAdminApplication(admin.api, tls: admin.tls, listen: listen,
                                                                    onListening: onAdminListening)))
            }
            services += [
                         .init(service: KEKRefresher(registry: registry, interval: configuration.kekPollInterval,
                                                     trapSIGHUP: configuration.trapSIGHUP))]
            if !configuration.retention.keepsEverything {
                services.append(.init(service: RetentionService(storage: storage, policy: configuration.retention,
                                                                interval: configuration.retentionInterval, logger: logger)))
            }
            let group = ServiceGroup(configuration: .init(
                services: services,
                gracefulShutdownSignals: configuration.trapSIGHUP ? [.sigterm, .sigint] : [],
                logger: logger))
            try await group.run()
        } catch {
            if ownsStorage { await storage.close() }
            throw error
        }
        if ownsStorage { await storage.close() }
    }

    func makeApplication(onListening: @escaping @Sendable (Int) async -> Void) throws -> some ApplicationProtocol {
        let router = Router(context: CollectorRequestContext.self)
        let registry = self.registry
        let ingestor = Ingestor(storage: storage, registry: registry, logger: logger,
                                maxRecords: configuration.maxRecordsPerRequest)
        let storage = self.storage, healthCheck = self.healthCheck
        let logger = self.logger
        let limits = UploadLimits(maxBytes: configuration.maxRequestBytes, bodyTimeout: configuration.bodyTimeout,
                                  retryAfterSeconds: configuration.retryAfterSeconds)
        let budget = inflight
        // Before the routes: applies to them all and to unknown paths.
        router.add(middleware: BodyGuard())
        router.get(RouterPath(WireAPI.healthPath)) { _, _ -> Response in
            // Which storage and whether it answers; no error text (paths, SQL) for this
            // unauthenticated endpoint: the log has it.
            let health = await healthCheck.current()
            let failing = ingestor.storageErrors.isFailing || !health.reachable
            return Self.json(.ok, HealthResponse(status: failing ? "storage-failing" : "ok", apiVersion: 1,
                                                 activeKEKs: registry.activeIDs.count,
                                                 storage: .init(backend: health.backend, location: health.location,
                                                                reachable: health.reachable)))
        }
        router.post(RouterPath(WireAPI.recordsPath)) { request, context -> Response in
            let started = ContinuousClock.now
            let (response, unread) = await Self.upload(request, storage: storage, ingestor: ingestor, limits: limits,
                                                       budget: budget, started: started, logger: logger)
            guard let unread else { return response }
            return Self.closing(response, after: request, drainingUpTo: unread,
                                until: min(started + limits.bodyTimeout, .now + Self.drainTime), channel: context.channel)
        }
        let listen = configuration
        let tls = self.tls, connections = self.connections
        let http1 = HTTP1Channel.Configuration(idleTimeout: TimeAmount(listen.idleTimeout))
        return Application(
            router: router,
            // Hummingbird's `.tls(.http1(...))`, behind the max-connections check.
            server: HTTPServerBuilder { responder in
                LimitedChildChannel(base: try TLSChannel(HTTP1Channel(responder: responder, configuration: http1),
                                                         tlsConfiguration: tls),
                                    limit: connections)
            },
            configuration: .init(address: .hostname(listen.listenHost, port: listen.listenPort), serverName: nil,
                                 backlog: 1024),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.info("collector listening", metadata: ["collector.port": "\(port)"])
                await onListening(port)
            },
            logger: logger)
    }

    /// The admin listener (`admin-listen`): its own Hummingbird server, TLS like the agents'
    /// listener (TLS 1.2 minimum, 1.3 preferred), serving ``AdminAPI``.
    func makeAdminApplication(_ api: AdminAPI, tls: TLSConfiguration, listen: AdminListenerConfiguration,
                              onListening: @escaping @Sendable (Int) async -> Void) -> some ApplicationProtocol {
        Self.adminApplication(api, tls: tls, listen: listen, idleTimeout: configuration.idleTimeout, logger: logger,
                              onListening: onListening)
    }

    /// The admin listener's Hummingbird application (also `custos dashboard`'s, ``LocalDashboard``).
    static func adminApplication(_ api: AdminAPI, tls: TLSConfiguration, listen: AdminListenerConfiguration, idleTimeout: Duration,
                                 logger: Logger, onListening: @escaping @Sendable (Int) async -> Void) -> some ApplicationProtocol {
        let http1 = HTTP1Channel.Configuration(idleTimeout: TimeAmount(idleTimeout))
        return Application(
            router: api.router(),
            server: HTTPServerBuilder { responder in
                try TLSChannel(HTTP1Channel(responder: responder, configuration: http1), tlsConfiguration: tls)
            },
            configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: nil, backlog: 256),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.info("admin listener (dashboard) listening", metadata: ["collector.admin_port": "\(port)"])
                await onListening(port)
            },
            logger: logger)
    }

    /// Bytes of a refused request's unread body the collector still reads (and discards) before
    /// closing the connection: enough for a client that sends its whole body before reading the
    /// answer to get that answer instead of a reset, and no more. Unauthenticated requests get
    /// the small figure; authenticated ones up to `max-request-bytes` (an agent may send that much
    /// anyway).
    static let unauthenticatedDrainBytes = 64 << 10
    /// How long a refused request's body is drained at most.
    static let drainTime = Duration.seconds(10)

    /// Handles `POST /v1/records`. Returns the answer and, for a refusal sent before its body was
    /// read to the end, how many more body bytes may be drained before the connection is closed
    /// (nil: the body was read; the connection stays open for the next request).
    static func upload(_ request: Request, storage: any CollectorStorage, ingestor: Ingestor, limits: UploadLimits,
                       budget: InflightBudget, started: ContinuousClock.Instant,
                       logger: Logger) async -> (Response, unread: Int?) {
        let maxBytes = limits.maxBytes
        guard let auth = request.headers[.authorization].flatMap(WireAPI.parseAuthorization),
              let agentID = try? AgentID(auth.agentID) else {
            logger.warning("upload refused: missing or malformed Authorization")
            return (unauthorized(), Self.unauthenticatedDrainBytes)
        }
        do {
            guard try await storage.authenticate(agentID, token: Secret(auth.token)) else {
                logger.warning("upload refused: wrong token", metadata: ["collector.agent_id": .safe(auth.agentID)])
                return (unauthorized(), Self.unauthenticatedDrainBytes)
            }
            ingestor.authErrors.success("agent tokens can be checked again", logger: logger)
        } catch {
            // The storage failed, not the agent: logged once per kind (repeats at debug), and
            // its recovery once; health reports the storage itself.
            ingestor.authErrors.failure("storage unavailable while checking an agent's token; uploads answered 503",
                                        key: "\(error.code)", metadata: ["collector.error": .safe(error)], logger: logger)
            return (json(.serviceUnavailable, ErrorResponse(error: .unavailable, message: "authentication store unavailable"),
                         retryAfter: limits.retryAfterSeconds), Self.unauthenticatedDrainBytes)
        }
        let agent: Logger.Metadata = ["collector.agent_id": .safe(auth.agentID)]
        let type = request.headers[.contentType]?.split(separator: ";").first.map {
            $0.trimmingCharacters(in: .whitespaces).lowercased()
        }
        guard type == WireAPI.recordsContentType else {
            return (json(.unsupportedMediaType, ErrorResponse(error: .unsupportedMediaType,
                                                              message: "expected Content-Type \(WireAPI.recordsContentType)")),
                    maxBytes)
        }
        // The HTTP parser has checked Content-Length's syntax; one it accepted that does not fit
        // an Int (above 2^63-1 bytes) is too large as well.
        let contentLength = request.headers[.contentLength]
        let declared = contentLength.flatMap { Int($0) }
        if contentLength != nil && (declared ?? .max) > maxBytes {
            let length = contentLength ?? "?"
            logger.warning("upload refused: too large", metadata: agent.merging(["collector.bytes": .safe(length)]) { $1 })
            return (json(.contentTooLarge, ErrorResponse(error: .tooLarge, message: "body of \(length) bytes exceeds \(maxBytes)")),
                    maxBytes)
        }
        // Reserve the body's size before reading it (a body without Content-Length counts as
        // the largest allowed), so memory stays bounded however many agents upload at once; and
        // at most max-uploads-per-agent of them per agent, so one agent cannot hold it all.
        let reserved = declared ?? maxBytes
        switch budget.reserve(reserved, agent: auth.agentID) {
        case .reserved:
            break
        case .full:
            logger.notice("upload deferred: collector busy", metadata: agent.merging([
                "collector.bytes": "\(reserved)", "collector.inflight_bytes": "\(budget.inUse)"]) { $1 })
            return (json(.serviceUnavailable, ErrorResponse(
                error: .unavailable,
                message: "collector busy: \(budget.inUse) bytes of uploads in flight (max-inflight-bytes \(budget.limit)); retry later"),
                retryAfter: budget.retryAfterSeconds), maxBytes)
        case .agentAtLimit(let uploads):
            logger.warning("upload deferred: agent has too many uploads in flight", metadata: agent.merging([
                "collector.uploads": "\(uploads)"]) { $1 })
            return (json(.serviceUnavailable, ErrorResponse(
                error: .unavailable,
                message: "agent \(auth.agentID) has \(uploads) uploads in flight (max-uploads-per-agent \(budget.perAgentLimit)); retry later"),
                retryAfter: budget.retryAfterSeconds), maxBytes)
        }
        defer { budget.release(reserved, agent: auth.agentID) }
        // Collected into one buffer of the declared size, allocated once: no regrowth, and the
        // TLS layer's read buffers are released as soon as each fragment is copied. The body must
        // arrive within body-timeout-seconds (checked as bytes arrive; a silent connection is
        // closed by idle-timeout-seconds), so a trickle cannot hold its reservation for ever.
        var body = ByteBuffer()
        body.reserveCapacity(max(0, declared ?? 0))
        let deadline = started + limits.bodyTimeout
        do {
            for try await fragment in request.body {
                guard body.readableBytes + fragment.readableBytes <= maxBytes else {
                    logger.warning("upload refused: body too large", metadata: agent)
                    // 0: the body has been iterated; Hummingbird allows one iterator per body.
                    return (json(.contentTooLarge, ErrorResponse(error: .tooLarge, message: "body exceeds \(maxBytes) bytes")), 0)
                }
                guard ContinuousClock.now <= deadline else {
                    logger.warning("upload refused: body too slow", metadata: agent.merging([
                        "collector.bytes": "\(body.readableBytes + fragment.readableBytes)",
                        "collector.body_timeout_seconds": "\(limits.bodyTimeout.components.seconds)"]) { $1 })
                    return (json(.requestTimeout, ErrorResponse(
                        error: .timeout,
                        message: "the body did not arrive within body-timeout-seconds (\(limits.bodyTimeout.components.seconds) s)")),
                            0)
                }
                body.writeImmutableBuffer(fragment)
            }
        } catch {
            // The client went away or the connection timed out mid-body (idle-timeout-seconds).
            logger.warning("upload body could not be read", metadata: agent.merging(["collector.error": .safe(error)]) { $1 })
            return (json(.badRequest, ErrorResponse(error: .malformed, message: "the request body could not be read: \(error)")), 0)
        }
        switch await ingestor.ingest(agentID: agentID, body: body) {
        case .results(let status, let response):
            return (json(.init(code: status), response), nil)
        case .error(let status, let error):
            return (json(.init(code: status), error, retryAfter: status == 503 ? limits.retryAfterSeconds : nil), nil)
        }
    }

    /// `response` with `Connection: close`; once it is sent, up to `limit` more bytes of
    /// `request`'s body are read and discarded until `deadline` (the connection is closed then,
    /// whether or not bytes arrive), then the connection is closed.
    /// Without this, Hummingbird would read a refused body to its end, however long.
    /// `limit` must be 0 when the handler has iterated the body already (one iterator per body).
    static func closing(_ response: Response, after request: Request, drainingUpTo limit: Int,
                        until deadline: ContinuousClock.Instant, channel: any Channel) -> Response {
        var closing = response
        closing.headers[.connection] = "close"
        let answer = response.body
        closing.body = ResponseBody(contentLength: answer.contentLength) { writer in
            defer { stopReadingAndClose(channel) }
            try await answer.write(writer)
            guard limit > 0 else { return }
            let left = ContinuousClock.now.duration(to: deadline)
            let cutOff = channel.eventLoop.scheduleTask(in: TimeAmount(left)) {
                stopReadingAndClose(channel)
            }
            defer { cutOff.cancel() }
            var drained = 0
            for try await fragment in request.body {
                drained += fragment.readableBytes
                if drained > limit { break }
            }
        }
        return closing
    }

    /// Stops reading from the socket, then closes the connection. Closing alone is not enough:
    /// after sending close_notify, NIOSSL goes on reading (and decrypting) whatever the client
    /// sends until the client's close_notify or `shutdownTimeout`; a client flooding a refused
    /// request would keep the collector busy for that long.
    static func stopReadingAndClose(_ channel: any Channel) {
        channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in
            channel.close(promise: nil)
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

/// The storage's health for `GET /v1/health`, asked of the storage at most once a second
/// (the endpoint needs no authentication: a flood of requests costs one query a second).
final class StorageHealthCheck: Sendable {
    let storage: any CollectorStorage
    private let last = Mutex<(at: ContinuousClock.Instant, health: StorageHealth)?>(nil)

    init(storage: any CollectorStorage) { self.storage = storage }

    func current() async -> StorageHealth {
        if let cached = last.withLock({ $0 }), cached.at.duration(to: .now) < .seconds(1) { return cached.health }
        let health = await storage.health()
        last.withLock { $0 = (.now, health) }
        return health
    }
}

/// Every route but the upload (which reads its body under its own limits, see
/// ``CollectorServer/upload(_:storage:ingestor:limits:budget:started:logger:)``) expects no body.
/// A request elsewhere that has one — an unknown path, `GET /v1/health` with a body — is
/// answered as usual but with `Connection: close`, and at most 64 KiB of its body is read before
/// the connection is closed. Without this Hummingbird would read any such body to its end.
struct BodyGuard: RouterMiddleware {
    typealias Context = CollectorRequestContext

    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        let hasBody = request.headers[.transferEncoding] != nil
            || request.headers[.contentLength].map { $0.trimmingCharacters(in: .whitespaces) != "0" } ?? false
        let response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            guard hasBody else { throw error }
            response = try error.response(from: request, context: context)
        }
        // The router records the matched route; the upload route has dealt with its body itself.
        guard hasBody, context.endpointPath != WireAPI.recordsPath else { return response }
        return CollectorServer.closing(response, after: request, drainingUpTo: CollectorServer.unauthenticatedDrainBytes,
                                       until: .now + CollectorServer.drainTime, channel: context.channel)
    }
}

/// The limits one upload runs under (from ``CollectorConfiguration``).
struct UploadLimits: Sendable {
    /// `max-request-bytes`.
    let maxBytes: Int
    /// `body-timeout-seconds`: from the request head to the body's last byte.
    let bodyTimeout: Duration
    /// `retry-after-seconds`.
    let retryAfterSeconds: Int
}

/// The request context of the collector's routes: Hummingbird's basic context plus the
/// connection, which a refusal closes (``CollectorServer/closing(_:after:drainingUpTo:until:channel:)``).
struct CollectorRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// Bytes of upload bodies the collector holds at once (`max-inflight-bytes`), and uploads per
/// agent (`max-uploads-per-agent`). One request is always let through when nothing else is in
/// flight, so a body larger than the limit (but within `max-request-bytes`) is still served.
final class InflightBudget: Sendable {
    let limit: Int
    let perAgentLimit: Int
    let retryAfterSeconds: Int
    private struct State {
        var now = 0
        var peak = 0
        var uploads: [String: Int] = [:]
    }
    private let used = Mutex(State())

    init(limit: Int, perAgentLimit: Int, retryAfterSeconds: Int) {
        self.limit = limit
        self.perAgentLimit = perAgentLimit
        self.retryAfterSeconds = retryAfterSeconds
    }

    var inUse: Int { used.withLock { $0.now } }
    /// The most ever held at once (for tests and diagnostics).
    var peak: Int { used.withLock { $0.peak } }

    enum Reservation {
        case reserved
        /// Taking the bytes would pass `max-inflight-bytes`.
        case full
        /// The agent has this many uploads in flight already (`max-uploads-per-agent`).
        case agentAtLimit(Int)
    }

    /// Takes `bytes` from the budget for one upload of `agent`; nothing is taken unless `.reserved`.
    func reserve(_ bytes: Int, agent: String) -> Reservation {
        used.withLock { used in
            let uploads = used.uploads[agent, default: 0]
            guard uploads < perAgentLimit else { return .agentAtLimit(uploads) }
            guard used.now == 0 || used.now + bytes <= limit else { return .full }
            used.now += bytes
            used.peak = max(used.peak, used.now)
            used.uploads[agent] = uploads + 1
            return .reserved
        }
    }

    /// Gives back what `reserve(bytes, agent:)` took.
    func release(_ bytes: Int, agent: String) {
        used.withLock { used in
            used.now -= bytes
            let left = used.uploads[agent, default: 1] - 1
            used.uploads[agent] = left > 0 ? left : nil
        }
    }
}

// MARK: Storage start

extension CollectorServer {
    /// How often an unreachable storage is tried again at start (0.5 s, doubling to 10 s).
    static let storageRetry = Backoff(initial: .milliseconds(500), cap: .seconds(10))

    /// Connects to the storage and brings its schema up to date (`StorageOpener.prepare`), then
    /// reads the KEK registry. Returns false when the storage cannot be reached now (logged
    /// once, at error, naming the database: host and port for PostgreSQL).
    /// - Throws: ``CollectorError`` `.database` when the storage refuses for good (a wrong
    ///   password, an unknown database, TLS, a newer schema): retrying would not help;
    ///   `.configuration` when `blob-dir=` cannot be used (``checkBlobDirectory()``).
    func startStorage() async throws(CollectorError) -> Bool {
        let blobs: BlobDirectoryCheck
        do {
            try await StorageOpener.prepare(storage)
            blobs = try await storage.checkBlobDirectory()
        } catch where error.code == .unavailable {
            logger.error("storage: cannot reach the database at start; answering uploads 503 and retrying", metadata: [
                "collector.database": .safe(configuration.database.description), "collector.error": .safe(error.message)])
            return false
        } catch {
            throw CollectorError(.database, "database=\(SafeText.escaped(configuration.database.description)): \(error.message)")
        }
        if case .unusable(let why) = blobs {
            throw CollectorError(.configuration, why)  // names the directory and blob-dir=
        }
        warnIfBlobDirectoryNeeded(blobs)
        await registry.refresh()
        return true
    }

    /// Rows pointing into blob files without `blob-dir=`: logged at warning (their bytes cannot
    /// be read here). (`blob-dir=` itself is checked against the database, its marker, once the
    /// database answers, so a directory that cannot be used is a clear error at start rather than
    /// a 503 at the first large upload; each upload still checks it, for a volume unmounted later.)
    func warnIfBlobDirectoryNeeded(_ check: BlobDirectoryCheck) {
        if check == .needed {
            logger.warning("storage: rows point into blob files, but blob-dir= is not set: their bytes cannot be read by this collector (set blob-dir= to the directory the other collectors use)",
                           metadata: ["collector.database": .safe(configuration.database.description)])
        }
    }

    /// Tries ``startStorage()``'s connection again with ``storageRetry`` until it works (logged
    /// once, at notice), the task is cancelled or the server shuts down. A storage that refuses
    /// for good at a retry (e.g. it came up with another password) is logged at error and
    /// tried again: the server keeps answering 503 rather than stopping.
    func retryStorage() async {
        var failures = 1
        let errors = RepeatedErrorLog()
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let delay = Self.storageRetry.delay(afterFailures: failures)
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
            } catch { return }
            do {
                try await StorageOpener.prepare(storage)
                logger.notice("storage: the database answers; schema up to date",
                              metadata: ["collector.database": .safe(configuration.database.description)])
                let blobs = (try? await storage.checkBlobDirectory()) ?? .ready
                if case .unusable(let why) = blobs {
                    // Serving already: large uploads get 503 until the directory is fixed.
                    logger.error("storage: blob-dir= cannot be used; large blobs are refused until it is fixed",
                                 metadata: ["collector.error": .safe(why)])
                }
                warnIfBlobDirectoryNeeded(blobs)
                await registry.refresh()
                return
            } catch {
                failures += 1
                if error.code != .unavailable, errors.isNew(error.message) {
                    logger.error("storage: the database refuses the collector", metadata: [
                        "collector.database": .safe(configuration.database.description), "collector.error": .safe(error.message)])
                }
            }
        }
    }
}

/// The HTTP server, started once ``CollectorServer/startStorage()`` has tried the storage: it
/// ends the group with its error when the storage refuses for good, and otherwise serves while
/// ``CollectorServer/retryStorage()`` tries an unreachable storage again in a child task.
struct AfterStorageStart<App: Service>: Service {
    let server: CollectorServer
    let app: App

    func run() async throws {
        let ready = try await server.startStorage()
        try await withThrowingTaskGroup(of: Bool.self) { group in
            if !ready { group.addTask { await server.retryStorage(); return false } }
            group.addTask { try await app.run(); return true }
            while let appEnded = try await group.next() {
                if appEnded { group.cancelAll(); return }
            }
        }
    }
}
