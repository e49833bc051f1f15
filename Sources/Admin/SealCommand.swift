import ArgumentParser
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

    public init() {}

    public func validate() throws {
        guard CaptureKind(name: kind) != nil else {
            throw ValidationError("--kind must be screen, keystrokes, generic or activity, not '\(kind)'")
        }
    }

    public func run() async throws {
        let key = try KEKPublicKey(pemFile: kek)
        let plaintext = try readInput(input, what: "input")
        let session = try DEKSession(kek: key, agentID: agent)
        let now = Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
        let blob = try session.seal(plaintext, kind: CaptureKind(name: kind)!, captureTimeMs: now)
        try writeOutput(RecordStream.encode([.dekRecord(session.record), .blob(blob)]), to: output, mode: 0o644)
    }
}
