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
                throw TransportError(.protocolError, "collector \(configuration.server): unreadable upload answer: \(error)")
            }
        default:
            throw Self.rejection(answer, host: configuration.server.description)
        }
    }

    /// `GET /v1/health`.
    public func health(timeout: Duration? = nil) async throws(TransportError) -> HealthResponse {
        let answer = try await request(.GET, WireAPI.healthPath, headers: HTTPHeaders(), body: nil, timeout: timeout)
        guard answer.status == .ok,
              let h = try? JSONDecoder().decode(HealthResponse.self, from: Data(answer.body.readableBytesView)) else {
            throw Self.rejection(answer, host: configuration.server.description)
        }
        return h
    }

    /// Connects exactly as an upload does (TCP connect, TLS handshake, certificate and pin check
    /// by ``TLSPolicy``) on a new connection, then closes it. Writes no request byte. For
    /// `custos-agent --check-config`.
    /// - Parameter timeout: limit for the connect and the handshake together (default 5 s).
    /// - Returns: the `sha256/BASE64` pins of the certificates the collector presented, leaf first.
    /// - Throws: ``TransportError``: `.connect` (e.g. connection refused, permission denied, no TCP
    ///   connection in time), `.peerRefused` (with ``TransportError/presentedPins``), `.handshake`
    ///   (including no handshake in time), `.cancelled`.
    public func probe(timeout: Duration = .seconds(5)) async throws(TransportError) -> [String] {
        let (ch, verdict) = try await connect(deadline: NIODeadline.now() + TimeAmount(timeout))
        ch.close(promise: nil)
        return verdict?.presentedPins ?? []
    }

    /// Closes the kept connection, if any, without waiting for the collector's TLS close_notify
    /// (RFC 8446 §6.1 lets the closing side not wait): a hung collector must not hold the caller.
    /// NIOSSL finishes the shutdown in the background within the policy's `shutdownTimeout`.
    public func close() async {
        channel?.close(promise: nil)
        channel = nil
    }

    static func rejection(_ answer: HTTPAnswer, host: String) -> TransportError {
        let err = try? JSONDecoder().decode(ErrorResponse.self, from: Data(answer.body.readableBytesView))
        var retry: Duration?
        if let v = answer.headers.first(name: "Retry-After"), let s = Int(v.trimmingCharacters(in: .whitespaces)), s >= 0 {
            retry = .seconds(s)
        }
        // The collector's message is outside text: escaped before it can reach a log line.
        let what = err.map { "\($0.error.rawValue): \(SafeText.escaped($0.message))" } ?? "no error body"
        return TransportError(.rejected, "collector \(host) answered \(answer.status.code) (\(what))",
                              httpStatus: Int(answer.status.code), retryAfter: retry)
    }

    private func request(_ method: HTTPMethod, _ path: String, headers: HTTPHeaders, body: ByteBuffer?,
                         timeout: Duration?) async throws(TransportError) -> HTTPAnswer {
        let limit = timeout ?? configuration.requestTimeout
        // One limit for the whole call: waiting for the turn, connecting, the TLS handshake, the answer.
        let deadline = NIODeadline.now() + TimeAmount(limit)
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers = headers
        head.headers.replaceOrAdd(name: "Host", value: "\(configuration.server.hostForHeader):\(configuration.port)")
        head.headers.replaceOrAdd(name: "Content-Length", value: "\(body?.readableBytes ?? 0)")
        // One request at a time on the kept connection (the actor is re-entrant across awaits).
        try await acquire()
        defer { releaseTurn() }
        // A connection may be closed by the collector meanwhile: retry once on a new one
        // (uploads are idempotent by record id, so a repeated POST is harmless).
        do {
            return try await send(head, body, deadline: deadline, limit: limit)
        } catch where error.code == .io && !Task.isCancelled && NIODeadline.now() < deadline {
            return try await send(head, body, deadline: deadline, limit: limit)
        }
    }

    /// One request at a time on the kept connection.
    private let turns = TurnQueue()

    /// Waits for this client's turn. Cancellable: a cancelled waiter leaves the queue at once
    /// and throws `.cancelled`.
    private func acquire() async throws(TransportError) {
        guard await turns.acquire() else { throw cancelled("waiting for the connection") }
    }

    private func releaseTurn() { turns.release() }

    private func cancelled(_ what: String) -> TransportError {
        TransportError(.cancelled, "collector \(configuration.host):\(configuration.port): cancelled while \(what)")
    }

    /// Sends one request on the kept connection (opening it first if needed) and waits for the
    /// answer until `deadline`. Cancellation fails the wait at once and closes the connection
    /// (the collector may or may not have stored the records; uploads are idempotent).
    private func send(_ head: HTTPRequestHead, _ body: ByteBuffer?, deadline: NIODeadline,
                      limit: Duration) async throws(TransportError) -> HTTPAnswer {
        let ch = try await connectedChannel(deadline: deadline)
        let promise = ch.eventLoop.makePromise(of: HTTPAnswer.self)
        let host = configuration.server.description
        let timeout = ch.eventLoop.scheduleTask(deadline: deadline) {
            promise.fail(TransportError(.io, "collector \(host): no answer within \(limit)"))
            ch.close(promise: nil)
        }
        let written = ch.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenFailure { error in
            // The request never reached the handler (channel already closed): answer the caller.
            promise.fail(TransportError(.io, "collector \(host): cannot send: \(error)"))
        }
        ch.writeAndFlush(PendingRequest(head: head, body: body, promise: promise), promise: written)
        let cancelError = cancelled("waiting for the answer")
        do {
            let answer = try await withTaskCancellationHandler {
                try await promise.futureResult.get()
            } onCancel: {
                promise.fail(cancelError)
                ch.close(promise: nil)
            }
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

    private func connectedChannel(deadline: NIODeadline) async throws(TransportError) -> any Channel {
        if let channel, channel.isActive { return channel }
        channel = nil
        let ch = try await connect(deadline: deadline).channel
        channel = ch
        return ch
    }

    /// Opens TCP, runs the TLS handshake with the policy's verification and waits for it to
    /// finish: the one connect path (uploads and ``probe(timeout:)``). Both waits end at
    /// `deadline` or after ``TransportConfiguration/connectTimeout``, whichever comes first,
    /// and at once when the task is cancelled (the channel is closed).
    /// - Returns: the channel, ready for a request, and the accepted peer's verdict.
    private func connect(deadline: NIODeadline) async throws(TransportError) -> Connected {
        let host = configuration.host
        let verifier = PeerVerifier(policy: configuration.policy, host: host)
        let context = sslContext
        let sni: String? = configuration.server.hostIsIPAddress ? nil : host
        let box = ConnectBox()
        let start = NIODeadline.now()
        let connectDeadline = min(deadline, start + TimeAmount(configuration.connectTimeout))
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(max(.milliseconds(1), connectDeadline - .now()))
            // TCP_NODELAY at level IPPROTO_TCP (ClientBootstrap sets it by default too). At level
            // SOL_SOCKET the same number 1 is SO_DEBUG, which needs CAP_NET_ADMIN: every connect
            // failed with EACCES under the unit (issue 12).
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let tls = try NIOSSLClientHandler(context: context, serverHostname: sni,
                                                      customVerificationCallback: { certs, promise in
                                                          promise.succeed(verifier.verify(certs))
                                                      })
                    let waiter = HandshakeWaiter(promise: channel.eventLoop.makePromise())
                    box.state.withLock { $0.handshake = waiter.promise.futureResult; $0.channel = channel }
                    if box.state.withLock({ $0.cancelled }) { channel.close(promise: nil) }
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(tls)
                    try ops.addHandler(waiter)
                    try ops.addHTTPClientHandlers()
                    try ops.addHandler(ResponseCollector())
                }
            }
        // Cancellation closes the channel being connected (or, before it exists, marks the attempt
        // so the initializer closes it): both waits then fail at once. withTaskCancellationHandler
        // has no typed throws, so the outcome travels as a Result.
        let result = await withTaskCancellationHandler { () async -> Result<Connected, TransportError> in
            do throws(TransportError) {
                return .success(try await finishConnect(bootstrap, box: box, verifier: verifier, start: start,
                                                        deadline: connectDeadline))
            } catch {
                return .failure(error)
            }
        } onCancel: {
            let ch = box.state.withLock { s -> (any Channel)? in s.cancelled = true; return s.channel }
            ch?.close(promise: nil)
        }
        return try result.get()
    }

    private typealias Connected = (channel: any Channel, verdict: PeerVerdict?)

    /// The waits of ``connect(deadline:)``: TCP connect, then the TLS handshake until `deadline`.
    private func finishConnect(_ bootstrap: ClientBootstrap, box: ConnectBox, verifier: PeerVerifier, start: NIODeadline,
                               deadline: NIODeadline) async throws(TransportError) -> Connected {
        let host = configuration.host, port = configuration.port
        let ch: any Channel
        do {
            ch = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            if Task.isCancelled { throw cancelled("connecting") }
            throw TransportError(.connect, "collector \(host):\(port): cannot connect: \(Self.reason(error))")
        }
        let handshakeDone = box.state.withLock { $0.handshake }!
        let timer = ch.eventLoop.scheduleTask(deadline: deadline) { ch.close(promise: nil) }
        // Cancelled on the event loop as soon as the handshake ends, not when this task resumes.
        handshakeDone.whenComplete { _ in timer.cancel() }
        do {
            try await handshakeDone.get()
            return (ch, verifier.verdict.withLock { $0 })
        } catch {
            ch.close(promise: nil)  // not awaited: see close()
            if let v = verifier.verdict.withLock({ $0 }), !v.accepted {
                throw TransportError(.peerRefused, "collector \(host):\(port): certificate refused: \(v.reason)",
                                     presentedPins: v.presentedPins)
            }
            if Task.isCancelled { throw cancelled("in the TLS handshake") }
            if NIODeadline.now() >= deadline {
                throw TransportError(.handshake, "collector \(host):\(port): no TLS handshake within \(Self.seconds(deadline - start))")
            }
            if let io = error as? IOError, [ECONNRESET, EPIPE].contains(io.errnoCode) {
                throw TransportError(.handshake, "collector \(host):\(port): the connection was closed during the TLS handshake "
                                     + "(the collector may be at its max-connections limit, or the port may not speak TLS)")
            }
            throw TransportError(.handshake, "collector \(host):\(port): TLS handshake failed: \(error)")
        }
    }

    /// A connect error in words: `connection refused`, `permission denied (EACCES)`, a time-out.
    static func reason(_ error: any Error) -> String {
        if let e = error as? IOError {
            return "\(String(cString: strerror(e.errnoCode))) (errno \(e.errnoCode))"
        }
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first {
            return reason(first.error)
        }
        if error is ChannelError, case ChannelError.connectTimeout(let t) = error as! ChannelError {
            return "no TCP connection within \(seconds(t))"
        }
        return "\(error)"
    }

    static func seconds(_ t: TimeAmount) -> String {
        String(format: "%.1f s", Double(t.nanoseconds) / 1e9)
    }
}

/// A FIFO of tasks waiting for their turn, under a lock so that cancellation can resume a
/// waiter directly from its cancellation handler (no hop through an actor or a new task).
private final class TurnQueue: Sendable {
    private struct State {
        var busy = false
        var waiting: [(id: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
        var nextID: UInt64 = 0
        /// Waiters cancelled before they were queued.
        var cancelledEarly: Set<UInt64> = []
    }
    private let state = Mutex(State())

    /// Waits until the turn is free and takes it; returns false (without the turn) when the
    /// task was cancelled while waiting.
    func acquire() async -> Bool {
        let id: UInt64? = state.withLock { s in
            if !s.busy { s.busy = true; return nil }
            s.nextID += 1
            return s.nextID
        }
        guard let id else { return true }
        do {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                    let early = state.withLock { s -> Bool in
                        if s.cancelledEarly.remove(id) != nil { return true }
                        s.waiting.append((id, c))
                        return false
                    }
                    if early { c.resume(throwing: CancellationError()) }
                }
            } onCancel: {
                let c = state.withLock { s -> CheckedContinuation<Void, any Error>? in
                    if let i = s.waiting.firstIndex(where: { $0.id == id }) { return s.waiting.remove(at: i).continuation }
                    s.cancelledEarly.insert(id)
                    return nil
                }
                c?.resume(throwing: CancellationError())
            }
            // Granted (maybe cancelled just after): forget a late cancellation mark.
            _ = state.withLock { $0.cancelledEarly.remove(id) }
            return true
        } catch {
            return false
        }
    }

    /// Passes the turn to the next waiter, or frees it.
    func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            if s.waiting.isEmpty { s.busy = false; return nil }
            return s.waiting.removeFirst().continuation
        }
        next?.resume()
    }
}

/// Hands the channel and its handshake future out of the channel initializer, and tells the
/// initializer when the connecting task was cancelled before the channel existed.
private final class ConnectBox: Sendable {
    struct State {
        var handshake: EventLoopFuture<Void>?
        var channel: (any Channel)?
        var cancelled = false
    }
    let state = Mutex(State())
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
