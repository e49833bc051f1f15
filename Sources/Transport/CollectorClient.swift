import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS
import CustosBase
import Synchronization
import Wire

/// Where and how the agent talks to its collector (agent config keys `server-url`,
/// `server-pin` (repeatable), `server-ca`, `agent-id`, `agent-token`).
///
/// Holds already-validated CustosBase values (parsed once by `AgentConfig`): nothing here
/// re-parses a string, so the transport accepts exactly what `--check-config` accepts.
public struct TransportConfiguration: Sendable {
    /// The collector (`server-url`).
    public var server: CollectorURL
    /// Agent id sent in `Authorization: Bearer AGENTID:TOKEN`.
    public var agentID: AgentID
    /// The agent's secret token (printed once by `custos agents add`). Never logged; revealed
    /// only to build the `Authorization` header.
    public var agentToken: Secret
    /// Certificate trust and pinning.
    public var policy: TLSPolicy
    /// TCP connect plus TLS handshake limit (default 10 s).
    public var connectTimeout: Duration
    /// One request/response limit (default 60 s).
    public var requestTimeout: Duration

    /// Collector host name or IP address, without brackets.
    public var host: String { server.host }
    /// Collector TCP port.
    public var port: Int { server.port }

    public init(server: CollectorURL, agentID: AgentID, agentToken: Secret, policy: TLSPolicy,
                connectTimeout: Duration = .seconds(10), requestTimeout: Duration = .seconds(60)) {
        self.server = server
        self.agentID = agentID
        self.agentToken = agentToken
        self.policy = policy
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
    }
}

/// A raw HTTP answer.
struct HTTPAnswer: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: ByteBuffer
}

/// A pinned HTTPS/1.1 client for the collector API. Keeps one keep-alive connection and opens
/// a new one (with a full certificate check) when it breaks. Requests are serialised.
///
/// No request byte is written before the TLS handshake has completed and ``TLSPolicy`` has
/// accepted the collector's certificate.
public actor CollectorClient {
    public nonisolated let configuration: TransportConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let sslContext: NIOSSLContext
    private var channel: (any Channel)?

    /// - Throws: ``TransportError`` (`.configuration`) when NIOSSL rejects the TLS configuration.
    public init(configuration: TransportConfiguration,
                eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger) throws(TransportError) {
        self.configuration = configuration
        self.group = eventLoopGroup
        self.logger = logger
        do {
            sslContext = try NIOSSLContext(configuration: configuration.policy.makeClientTLSConfiguration())
        } catch {
            throw TransportError(.configuration, "TLS configuration: \(error)")
        }
    }

    /// Another client for the same collector with the same settings and event loop group: its
    /// own connection, so a second request can be in flight beside this one's.
    /// - Throws: ``TransportError`` (`.configuration`), as ``init(configuration:eventLoopGroup:logger:)``.
    public func sibling() throws(TransportError) -> CollectorClient {
        try CollectorClient(configuration: configuration, eventLoopGroup: group, logger: logger)
    }

    /// Uploads a record stream (`POST /v1/records`).
    /// - Parameters:
    ///   - body: concatenated Envelope records (bytes).
    ///   - timeout: overall limit for this call; default ``TransportConfiguration/requestTimeout``.
    /// - Returns: the per-record results (HTTP 200 or 422).
    /// - Throws: ``TransportError``: `.peerRefused`/`.handshake`/`.connect`/`.io` when nothing could be
    ///   delivered, `.rejected` (with `httpStatus`, `retryAfter`) when the collector refused the request.
    public func upload(_ body: Data, timeout: Duration? = nil) async throws(TransportError) -> UploadResponse {
        try await upload(records: [body], timeout: timeout)
    }

    /// Uploads Envelope records (`POST /v1/records`), concatenated in order into one request body
    /// (each record's bytes are copied once, into the body).
    /// - Parameters:
    ///   - records: serialized Envelope records, or any split of a record stream (bytes).
    ///   - timeout: overall limit for this call; default ``TransportConfiguration/requestTimeout``.
    /// - Returns: the per-record results (HTTP 200 or 422).
    /// - Throws: ``TransportError`` as ``upload(_:timeout:)``.
    public func upload(records: [Data], timeout: Duration? = nil) async throws(TransportError) -> UploadResponse {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: WireAPI.recordsContentType)
        headers.add(name: "Authorization", value: WireAPI.authorization(agentID: configuration.agentID,
                                                                        token: configuration.agentToken))
        var buffer = ByteBuffer()
        buffer.reserveCapacity(records.reduce(0) { $0 + $1.count })
        for record in records { buffer.writeBytes(record) }
        let answer = try await request(.POST, WireAPI.recordsPath, headers: headers, body: buffer, timeout: timeout)
        switch answer.status.code {
        case 200, 422:
            do {
                return try JSONDecoder().decode(UploadResponse.self, from: Data(answer.body.readableBytesView))
            } catch {
                throw TransportError(.protocolError, "collector \(configuration.host): unreadable upload answer: \(error)")
            }
        default:
            throw Self.rejection(answer, host: configuration.host)
        }
    }

    /// `GET /v1/health`.
    public func health(timeout: Duration? = nil) async throws(TransportError) -> HealthResponse {
        let answer = try await request(.GET, WireAPI.healthPath, headers: HTTPHeaders(), body: nil, timeout: timeout)
        guard answer.status == .ok,
              let h = try? JSONDecoder().decode(HealthResponse.self, from: Data(answer.body.readableBytesView)) else {
            throw Self.rejection(answer, host: configuration.host)
        }
        return h
    }

    /// Closes the kept connection, if any.
    public func close() async {
        if let channel { try? await channel.close() }
        channel = nil
    }

    static func rejection(_ answer: HTTPAnswer, host: String) -> TransportError {
        let err = try? JSONDecoder().decode(ErrorResponse.self, from: Data(answer.body.readableBytesView))
        var retry: Duration?
        if let v = answer.headers.first(name: "Retry-After"), let s = Int(v.trimmingCharacters(in: .whitespaces)), s >= 0 {
            retry = .seconds(s)
        }
        let what = err.map { "\($0.error.rawValue): \($0.message)" } ?? "no error body"
        return TransportError(.rejected, "collector \(host) answered \(answer.status.code) (\(what))",
                              httpStatus: Int(answer.status.code), retryAfter: retry)
    }

    private func request(_ method: HTTPMethod, _ path: String, headers: HTTPHeaders, body: ByteBuffer?,
                         timeout: Duration?) async throws(TransportError) -> HTTPAnswer {
        let limit = timeout ?? configuration.requestTimeout
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers = headers
        head.headers.replaceOrAdd(name: "Host", value: "\(configuration.server.hostForHeader):\(configuration.port)")
        head.headers.replaceOrAdd(name: "Content-Length", value: "\(body?.readableBytes ?? 0)")
        // One request at a time on the kept connection (the actor is re-entrant across awaits).
        await acquire()
        defer { releaseTurn() }
        // A connection may be closed by the collector meanwhile: retry once on a new one
        // (uploads are idempotent by record id, so a repeated POST is harmless).
        do {
            return try await send(head, body, limit: limit)
        } catch where error.code == .io {
            return try await send(head, body, limit: limit)
        }
    }

    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    private func acquire() async {
        if !busy { busy = true; return }
        await withCheckedContinuation { waiting.append($0) }
    }

    private func releaseTurn() {
        if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
    }

    private func send(_ head: HTTPRequestHead, _ body: ByteBuffer?, limit: Duration) async throws(TransportError) -> HTTPAnswer {
        let ch = try await connectedChannel()
        let promise = ch.eventLoop.makePromise(of: HTTPAnswer.self)
        let timeout = ch.eventLoop.scheduleTask(in: TimeAmount(limit)) {
            promise.fail(TransportError(.io, "collector \(self.configuration.host): no answer within \(limit)"))
            ch.close(promise: nil)
        }
        let written = ch.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenFailure { error in
            // The request never reached the handler (channel already closed): answer the caller.
            promise.fail(TransportError(.io, "collector \(self.configuration.host): cannot send: \(error)"))
        }
        ch.writeAndFlush(PendingRequest(head: head, body: body, promise: promise), promise: written)
        do {
            let answer = try await promise.futureResult.get()
            timeout.cancel()
            if answer.headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "close" }) {
                await close()
            }
            return answer
        } catch {
            timeout.cancel()
            await close()
            if let e = error as? TransportError { throw e }
            throw TransportError(.io, "collector \(configuration.host):\(configuration.port): \(error)")
        }
    }

    private func connectedChannel() async throws(TransportError) -> any Channel {
        if let channel, channel.isActive { return channel }
        channel = nil
        let ch = try await connect()
        channel = ch
        return ch
    }

    /// Opens TCP, runs the TLS handshake with the policy's verification and waits for it to finish.
    private func connect() async throws(TransportError) -> any Channel {
        let host = configuration.host
        let verifier = PeerVerifier(policy: configuration.policy, host: host)
        let context = sslContext
        let sni: String? = configuration.server.hostIsIPAddress ? nil : host
        let handshake = FutureBox()
        let connectTimeout = configuration.connectTimeout
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(connectTimeout.components.seconds))
            // TCP_NODELAY at level IPPROTO_TCP (`.tcpOption`; ClientBootstrap sets it by default
            // too). `.socketOption(.tcp_nodelay)` would be SOL_SOCKET option 1, SO_DEBUG, which
            // needs CAP_NET_ADMIN: every connect failed with EACCES under the unit (issue 12).
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let tls = try NIOSSLClientHandler(context: context, serverHostname: sni,
                                                      customVerificationCallback: { certs, promise in
                                                          promise.succeed(verifier.verify(certs))
                                                      })
                    let waiter = HandshakeWaiter(promise: channel.eventLoop.makePromise())
                    handshake.future.withLock { $0 = waiter.promise.futureResult }
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(tls)
                    try ops.addHandler(waiter)
                    try ops.addHTTPClientHandlers()
                    try ops.addHandler(ResponseCollector())
                }
            }
        let ch: any Channel
        do {
            ch = try await bootstrap.connect(host: host, port: configuration.port).get()
        } catch {
            throw TransportError(.connect, "collector \(host):\(configuration.port): cannot connect: \(error)")
        }
        let handshakeDone = handshake.future.withLock { $0 }!
        let deadline = ch.eventLoop.scheduleTask(in: .seconds(connectTimeout.components.seconds)) { ch.close(promise: nil) }
        // Cancelled on the event loop as soon as the handshake ends, not when this task resumes.
        handshakeDone.whenComplete { _ in deadline.cancel() }
        do {
            try await handshakeDone.get()
            return ch
        } catch {
            try? await ch.close()
            if let v = verifier.verdict.withLock({ $0 }), !v.accepted {
                logRefusedPeer(v, host: host, logger: logger)
                throw TransportError(.peerRefused, "collector \(host):\(configuration.port): certificate refused: \(v.reason)",
                                     presentedPins: v.presentedPins)
            }
            throw TransportError(.handshake, "collector \(host):\(configuration.port): TLS handshake failed: \(error)")
        }
    }
}

/// Hands the handshake future out of the channel initializer.
private final class FutureBox: Sendable {
    let future = Mutex<EventLoopFuture<Void>?>(nil)
}

/// Fulfils its promise when the TLS handshake completes; fails it when the channel errors or closes first.
private final class HandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let promise: EventLoopPromise<Void>
    private var done = false
    init(promise: EventLoopPromise<Void>) { self.promise = promise }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? TLSUserEvent, case .handshakeCompleted = e, !done {
            done = true
            promise.succeed(())
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done { done = true; promise.fail(error) }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done { done = true; promise.fail(TransportError(.handshake, "connection closed during the TLS handshake")) }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // Also reached when the TCP connect fails (the channel never becomes active).
        if !done { done = true; promise.fail(TransportError(.connect, "connection closed before the TLS handshake")) }
    }
}

/// One request written into the pipeline with the promise for its answer.
struct PendingRequest: Sendable {
    var head: HTTPRequestHead
    var body: ByteBuffer?
    var promise: EventLoopPromise<HTTPAnswer>
}

/// Writes a ``PendingRequest`` and collects the HTTP/1.1 answer into its promise. One request at a time.
private final class ResponseCollector: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = PendingRequest
    typealias OutboundOut = HTTPClientRequestPart

    private var pending: EventLoopPromise<HTTPAnswer>?
    private var head: HTTPResponseHead?
    private var body = ByteBuffer()

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        guard pending == nil else {
            let error = TransportError(.io, "a request is already in flight on this connection")
            request.promise.fail(error)
            promise?.fail(error)
            return
        }
        pending = request.promise
        head = nil
        body.clear()
        context.write(wrapOutboundOut(.head(request.head)), promise: nil)
        if let b = request.body, b.readableBytes > 0 {
            context.write(wrapOutboundOut(.body(.byteBuffer(b))), promise: nil)
        }
        context.write(wrapOutboundOut(.end(nil)), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
        case .body(var b):
            body.writeBuffer(&b)
        case .end:
            if let p = pending, let h = head {
                pending = nil
                p.succeed(HTTPAnswer(status: h.status, headers: h.headers, body: body))
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(TransportError(.io, "\(error)"))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(TransportError(.io, "connection closed by the collector"))
        context.fireChannelInactive()
    }

    private func fail(_ error: TransportError) {
        if let p = pending {
            pending = nil
            p.fail(error)
        }
    }
}
