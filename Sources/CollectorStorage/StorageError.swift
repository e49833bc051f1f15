/// The one error type of every storage backend (SQLite, PostgreSQL) and of the seam.
///
/// `description` names the database (a file path, or `host:port/dbname` — never a password) and
/// the record or row involved, and says what was expected; it never holds tokens, key bytes or
/// sealed bytes. Text that came from the database is escaped (`SafeText`) before it is put here.
public struct StorageError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        /// The database cannot be reached right now (server down, connection lost, locked
        /// too long). Transient: the caller retries; the collector answers agents 503 with
        /// `Retry-After`, so nothing is lost.
        public static let unavailable = Code(name: "unavailable")
        /// The database answered with a failure that retrying will not fix (schema newer than
        /// this build, constraint it should not hit, wrong password or database name).
        public static let failed = Code(name: "failed")
        /// A value the backend cannot store (an id of the wrong form, a limit out of range).
        public static let invalidArgument = Code(name: "invalid-argument")
        /// The agent, KEK row or record asked for does not exist.
        public static let notFound = Code(name: "not-found")
        /// It exists already (an agent id).
        public static let alreadyExists = Code(name: "already-exists")
        /// A stored value is not what this build wrote (a row that does not parse, a blob
        /// file shorter than its row says).
        public static let corrupt = Code(name: "corrupt")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "storage \(code): \(message)" }
}
