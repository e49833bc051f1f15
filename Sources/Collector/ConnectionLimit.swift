import CSysShim
import CustosBase
import Dispatch
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
    private let open = Mutex((count: 0, closedSinceTrim: 0, trimPending: false))
    private let refusals = RepeatedErrorLog()
    private let logger: Logger

    init(limit: Int, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    /// Connections open now (admitted and not yet closed).
    var count: Int { open.withLock { $0.count } }

    /// Takes a slot for a new connection; false (and the refusal logged once per episode) when
    /// `limit` are open.
    func admit(peer: String) -> Bool {
        let admitted = open.withLock { s -> Bool in
            guard s.count < limit else { return false }
            s.count += 1
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

    /// Connections closed between two `malloc_trim(0)` calls.
    static let closesPerTrim = 256

    /// Gives back the slot of a closed connection. After every ``closesPerTrim`` closes, and when
    /// the last connection closes after at least 8 others, glibc's
    /// `malloc_trim(0)` (man 3 malloc_trim) runs on a Dispatch thread (never an event loop or the
    /// cooperative pool), at most one at a time: without it the heap of a burst of idle
    /// connections stays resident after they close (docs/API.md, "Connections and memory").
    func release() {
        let trim = open.withLock { s -> Bool in
            s.count -= 1
            s.closedSinceTrim += 1
            let due = s.closedSinceTrim >= Self.closesPerTrim || (s.count == 0 && s.closedSinceTrim >= 8)
            guard due, !s.trimPending else { return false }
            s.closedSinceTrim = 0
            s.trimPending = true
            return true
        }
        guard trim else { return }
        DispatchQueue.global(qos: .utility).async { [self] in
            _ = custos_malloc_trim()
            open.withLock { $0.trimPending = false }
        }
    }
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
