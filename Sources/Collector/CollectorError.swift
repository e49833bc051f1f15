import Foundation

/// The one error type of the Collector module. `description` names the file, key, agent or record
/// involved and what was expected; it never contains tokens, key bytes or record contents.
public struct CollectorError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is (stable; more cases may appear).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        /// A bad configuration value or file (`collector.cfg`, TLS files).
        public static let configuration = Code(name: "configuration")
        /// The storage (`database=`) cannot be opened.
        public static let database = Code(name: "database")
        /// A bad argument (agent id, KEK file, filter).
        public static let invalidArgument = Code(name: "invalid-argument")
        /// The thing asked for does not exist.
        public static let notFound = Code(name: "not-found")
        /// It exists already (for example an agent id).
        public static let alreadyExists = Code(name: "already-exists")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "collector \(code): \(message)" }
}
