import Foundation

/// The one error type of every capture backend (the seam's and each backend's).
///
/// `description` names the display, request or field involved and what was expected. It never
/// contains pixels or keystroke text.
public struct CaptureError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, coarsely; `description` has the details.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        /// The display could not be opened or was lost; capture retries with backoff.
        public static let displayUnavailable = Code(name: "displayUnavailable")
        /// The X server answered a request with an X protocol error.
        public static let xProtocolError = Code(name: "xProtocolError")
        /// A required X extension (RECORD, XKEYBOARD) is missing on this display.
        public static let extensionUnavailable = Code(name: "extensionUnavailable")
        /// The encoder (libpng, libaom) failed on a monitor's frame.
        public static let encoding = Code(name: "encoding")
        /// A monitor's size is outside what the encoder takes (AV1: each side 2…16384 pixels):
        /// that monitor is not recorded while it has that size; the others are.
        public static let monitorUnsupported = Code(name: "monitorUnsupported")
        /// A caller passed a value outside its documented range.
        public static let invalidArgument = Code(name: "invalidArgument")
        /// The server sent pixels in a layout this module cannot read.
        public static let unsupportedFormat = Code(name: "unsupportedFormat")
        /// The recorder was started twice or used after stop.
        public static let invalidState = Code(name: "invalidState")
    }

    public let code: Code
    public let message: String
    /// For `.displayUnavailable`: which it is (no server, authorization refused, lost, bad name).
    public let problem: DisplayProblem?
    public let fileID: String
    public let line: Int

    public init(_ code: Code, _ message: String, problem: DisplayProblem? = nil, fileID: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.problem = problem
        self.fileID = fileID
        self.line = line
    }

    public var description: String { "\(code): \(message)" }
}

/// Why a capture session's display cannot be used (X11: the display server or its cookie).
public enum DisplayProblem: String, Sendable, Hashable {
    /// Nothing accepts connections at the display's socket (missing, refused, or the server did
    /// not answer the connection setup).
    case noServer = "no-server"
    /// The server answered the connection setup with Failed or Authenticate.
    case authorizationRefused = "authorization-refused"
    /// A live connection broke (server exited or restarted).
    case lost
    /// The display name is unset or not of the form `[host]:N[.S]`.
    case badName = "bad-name"
}
