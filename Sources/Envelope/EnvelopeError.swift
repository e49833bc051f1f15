/// The one error type of the `Envelope` module.
///
/// `code` says what kind of failure it was (stable, comparable, growable without breaking
/// callers); `message` names the file, field, DEK id or blob id involved and what was expected.
/// Neither ever contains key bytes, passphrases or plaintext.
public struct EnvelopeError: Error, CustomStringConvertible, Sendable {
    /// An opaque, growable failure kind.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// AES-GCM tag check failed: a header or ciphertext byte was changed, or the blob was
        /// opened with the wrong DEK material.
        public static let authenticationFailed = Code("authenticationFailed")
        /// Bytes do not follow docs/FORMAT.md (bad magic, bad record type, bad lengths, bad fields).
        public static let malformed = Code("malformed")
        /// The input ends before the record's declared length.
        public static let truncated = Code("truncated")
        /// Format version or algorithm suite this build does not know.
        public static let unsupportedVersion = Code("unsupportedVersion")
        /// A key that is not a usable RSA key (not RSA, a certificate, an unknown PEM label).
        public static let unsupportedKey = Code("unsupportedKey")
        /// An RSA key under 2048 bits.
        public static let keyTooSmall = Code("keyTooSmall")
        /// A private key given where a public key (KEK) belongs.
        public static let privateKeyGiven = Code("privateKeyGiven")
        /// The key file cannot be parsed (empty, garbage, bad base64, PEM body of the wrong form).
        public static let invalidKey = Code("invalidKey")
        /// Wrong, empty or missing passphrase for an encrypted private key.
        public static let wrongPassphrase = Code("wrongPassphrase")
        /// The record or blob names a different KEK than the private key in use.
        public static let keyMismatch = Code("keyMismatch")
        /// The blob names a different DEK than the opener holds.
        public static let dekMismatch = Code("dekMismatch")
        /// RSA-OAEP unwrap of the DEK failed (wrapped key damaged or made for another key).
        public static let unwrapFailed = Code("unwrapFailed")
        /// The unwrapped DEK does not match the record's key commitment (or a record field was changed).
        public static let commitmentMismatch = Code("commitmentMismatch")
        /// A value outside what the format can carry (agent id too long, blob too large).
        public static let invalidArgument = Code("invalidArgument")
        /// Reading or writing a file failed.
        public static let io = Code("io")
        /// The system CSPRNG or a crypto library call failed unexpectedly.
        public static let internalError = Code("internalError")
    }

    public let code: Code
    /// Human-readable detail naming the file/field/id and what was expected. Never secret.
    public let message: String
    /// Where the error was thrown (for bug reports).
    public let fileID: String
    public let line: Int

    public init(_ code: Code, _ message: String, fileID: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.fileID = fileID
        self.line = line
    }

    public var description: String { "\(code): \(message)" }
}
