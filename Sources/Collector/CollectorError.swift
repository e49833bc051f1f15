import Foundation

/// The one error type of the Collector module (starting the collector: its configuration, TLS
/// files and storage; storage calls themselves throw `StorageError`). `description` names the
/// file, key or database involved and what was expected; it never contains tokens, key bytes,
/// passwords or record contents.
public struct CollectorError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is (stable; more cases may appear).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        /// A bad configuration value or file (`collector.cfg`, TLS files).
        public static let configuration = Code(name: "configuration")
        /// The storage (`database=`) cannot be opened.
        public static let database = Code(name: "database")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "collector \(code): \(message)" }
}
