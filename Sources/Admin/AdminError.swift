import CollectorStorage
import Envelope
import Foundation

/// The error type of the admin verbs (`keys generate/register/list`, `agents add`,
/// `captures list`, `decrypt`, `export`).
///
/// `message` names the file, database, KEK id or blob id involved and what was expected; it never
/// holds passphrases, key bytes or decrypted content. `exitCode` follows the CLI contract:
/// 1 = authentication or decryption failed (wrong passphrase, wrong key, tampered data),
/// 2 = usage or I/O (unreadable input, unwritable output, database error).
public struct AdminError: Error, CustomStringConvertible, Sendable {
    /// A growable failure kind.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// Bad arguments or a refused operation (a file that would be overwritten).
        public static let usage = Code("usage")
        /// A file or directory cannot be read or written.
        public static let io = Code("io")
        /// The collector storage failed (cannot be opened, read or written).
        public static let database = Code("database")
        /// The private key cannot be opened with the passphrase given.
        public static let wrongPassphrase = Code("wrongPassphrase")
        /// The private key is not the KEK the selected data was sealed for.
        public static let keyMismatch = Code("keyMismatch")
        /// Some items could not be decrypted (tampered, damaged, or their DEK failed).
        public static let decryptionFailed = Code("decryptionFailed")
        /// The run was interrupted (SIGINT/SIGTERM) before it finished.
        public static let interrupted = Code("interrupted")
        /// A key file is unusable (from Envelope).
        public static let invalidKey = Code("invalidKey")
        /// A copy (`custos db migrate`) does not match its source: a count, a row or a blob's bytes.
        public static let verificationFailed = Code("verificationFailed")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// The process exit status for this error (1 crypto or verification failure, 2 usage/I/O, 130 interrupted).
    public var exitCode: Int32 {
        switch code {
        case .wrongPassphrase, .keyMismatch, .decryptionFailed, .verificationFailed: 1
        case .interrupted: 130
        default: 2
        }
    }

    /// Maps an Envelope key-loading error to an admin error with the same message.
    static func fromKeyLoading(_ e: EnvelopeError) -> AdminError {
        switch e.code {
        case .wrongPassphrase: AdminError(.wrongPassphrase, e.message)
        case .io: AdminError(.io, e.message)
        default: AdminError(.invalidKey, e.message)
        }
    }

    /// A storage failure: `.usage` for what the administrator asked (a missing database, an
    /// agent that exists already or not at all), `.database` for the rest; the message names
    /// the database (never a password).
    static func fromStorage(_ e: StorageError) -> AdminError {
        AdminError(e.code == .invalidArgument || e.code == .alreadyExists || e.code == .notFound ? .usage : .database,
                   e.message)
    }
}
