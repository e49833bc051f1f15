import CustosBase
import HummingbirdCore
import Logging
import NIOCore
import Synchronization

/// The collector's cap on open connections (`max-connections`): each costs about 55 KB of
/// memory (TLS and HTTP state, buffers) and a file descriptor, idle or not. A connection
/// accepted above the cap is closed at once, before its TLS handshake; the first refusal of an
/// episode is logged (warning) and the next accepted connection logs the recovery, once each
/// (``RepeatedErrorLog``). Thread-safe.
final class ConnectionLimit: Sendable {
    /// `max-connections`.
    let limit: Int
    private let open = Mutex(0)
    private let refusals = RepeatedErrorLog()
    private let logger: Logger

    init(limit: Int, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    /// Connections open now (admitted and not yet closed).
    var count: Int { open.withLock { $0 } }

    /// Takes a slot for a new connection; false (and the refusal logged once per episode) when
    /// `limit` are open.
    func admit(peer: String) -> Bool {
        let admitted = open.withLock { n -> Bool in
            guard n < limit else { return false }
            n += 1
            return true
        }
        if admitted {
            refusals.success("accepting connections again (below max-connections \(limit))", logger: logger)
        } else {
            refusals.failure("connection refused: max-connections (\(limit)) connections are open; closing new ones until some close",
                             key: "max-connections", level: .warning,
                             metadata: ["collector.peer": .safe(peer)], logger: logger)
        }
        return admitted
    }

    /// Gives back the slot of a closed connection.
    func release() { open.withLock { $0 -= 1 } }
}

/// A child channel (TLS over HTTP/1, as Hummingbird builds it) that first takes a slot of a
/// ``ConnectionLimit``: within the limit it sets up `base` and gives the slot back when the
/// connection closes; above it the connection is closed as soon as it is active.
///
/// Setup never fails for a refused connection: a failed child-channel initializer is passed to
/// the server channel (NIO `ServerBootstrap`), which would end Hummingbird's accept loop.
struct LimitedChildChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let limit: ConnectionLimit

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        guard limit.admit(peer: channel.remoteAddress.map { "\($0)" } ?? "?") else {
            return channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(CloseWhenActive())
            }.flatMap { base.setup(channel: channel, logger: logger) }
        }
        let limit = self.limit
        channel.closeFuture.whenComplete { _ in limit.release() }
        return base.setup(channel: channel, logger: logger)
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// Closes its channel as soon as it is active (at once if it is already), before any byte is read.
final class CloseWhenActive: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { context.close(promise: nil) }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.close(promise: nil)
    }
}
