import ArgumentParser
import CustosBase
import Envelope
import Foundation

/// `custos seal`: seals one file into a self-contained sealed file: a DEK record followed by one
/// sealed blob (docs/FORMAT.md).
public struct SealCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "seal",
        abstract: "Seal a file to a KEK: writes a DEK record followed by one sealed blob."
    )

    @Option(help: "KEK: RSA public key PEM (e.g. publickey.crt).")
    var kek: String

    @Option(help: "Capture kind written in the header: screen, keystrokes, generic or activity.")
    var kind: String = "generic"

    @Option(help: "Agent id written in the header (1-255 UTF-8 bytes).")
    var agent: String

    @Option(name: .customLong("in"), help: "File to seal.")
    var input: String

    @Option(name: .customLong("out"), help: "Sealed file to write.")
    var output: String

    @Option(help: "With --display: write a sealed session blob (record type 3) naming this user (UserName: 1-128 UTF-8 bytes, no '/', control or bidirectional characters, not '.' or '..').")
    var user: String?

    @Option(help: "With --user: the session's display written in the header (1-255 UTF-8 bytes, e.g. :1).")
    var display: String?

    public init() {}

    public func validate() throws {
        guard CaptureKind(name: kind) != nil else {
            throw ValidationError("--kind must be screen, keystrokes, generic or activity, not '\(kind)'")
        }
        guard (user == nil) == (display == nil) else {
            throw ValidationError("--user and --display go together (a sealed session blob names both)")
        }
        _ = try blobSession()
    }

    /// The session named by `--user`/`--display`, nil without them.
    /// - Throws: `ValidationError` naming the option whose value is not valid.
    func blobSession() throws -> BlobSession? {
        guard let user, let display else { return nil }
        let name: UserName
        do { name = try UserName(user, field: "--user") } catch { throw ValidationError(error.description) }
        do { return try BlobSession(user: name, display: display) } catch let e as EnvelopeError { throw ValidationError("--display: \(e.message)") }
    }

    public func run() async throws {
        let key = try KEKPublicKey(pemFile: kek)
        let plaintext = try readInput(input, what: "input")
        let session = try DEKSession(kek: key, agentID: agent)
        let now = Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
        let blob = try session.seal(plaintext, kind: CaptureKind(name: kind)!, captureTimeMs: now, session: try blobSession())
        try writeOutput(RecordStream.encode([.dekRecord(session.record), .blob(blob)]), to: output, mode: 0o644)
    }
}
