import Foundation

/// The one error type of the Transport module. `description` names the peer, file or key
/// involved and what was expected; it never contains record bytes or tokens.
public struct TransportError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is (stable for callers and tests; more cases may appear).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        /// Bad `server-url`, `server-pin`, `server-ca`, `agent-id` or `agent-token`.
        public static let configuration = Code(name: "configuration")
        /// The TCP connection could not be opened.
        public static let connect = Code(name: "connect")
        /// The collector's certificate failed the ``TLSPolicy`` (pin, chain, host name, expiry):
        /// nothing was sent. ``TransportError/presentedPins`` lists the presented keys.
        public static let peerRefused = Code(name: "peer-refused")
        /// The TLS handshake failed for another reason (for example TLS ≤ 1.1 offered by the server).
        public static let handshake = Code(name: "handshake")
        /// The connection broke or timed out during a request.
        public static let io = Code(name: "io")
        /// The collector answered with an unexpected status or an unreadable body.
        public static let protocolError = Code(name: "protocol")
        /// The collector refused the whole request (401, 413, 415, 400, 429, 503…).
        public static let rejected = Code(name: "rejected")
        /// The call was cancelled (shutdown) before it completed. Not a fault: nothing is known
        /// about delivery, and the records stay spooled until acknowledged.
        public static let cancelled = Code(name: "cancelled")
        /// The spool failed.
        public static let spool = Code(name: "spool")
    }

    public let code: Code
    public let message: String
    /// For `.peerRefused`: the `sha256/BASE64` pins of the certificates the server presented, leaf first.
    public let presentedPins: [String]
    /// For `.rejected`: the HTTP status.
    public let httpStatus: Int?
    /// For `.rejected` with 429/503: the collector's `Retry-After`.
    public let retryAfter: Duration?

    public init(_ code: Code, _ message: String, presentedPins: [String] = [], httpStatus: Int? = nil,
                retryAfter: Duration? = nil) {
        self.code = code
        self.message = message
        self.presentedPins = presentedPins
        self.httpStatus = httpStatus
        self.retryAfter = retryAfter
    }

    public var description: String {
        var s = "transport \(code): \(message)"
        if !presentedPins.isEmpty { s += " (presented SPKI: \(presentedPins.joined(separator: ", ")))" }
        return s
    }
}
