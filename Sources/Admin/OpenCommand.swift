import ArgumentParser
import Envelope
import Foundation

/// `custos open`: recovers the plaintext of a sealed file (a record stream: DEK records and
/// sealed blobs, as `custos seal` and `custos-agent record` write).
///
/// One blob and `--out` neither an existing directory nor ending in `/`: `--out` is a new file
/// holding exactly its plaintext; nothing is written unless it opens. Otherwise (several blobs,
/// as in a `custos-agent record` file, or `--out DIR/`): `--out` is a directory written exactly as
/// `custos decrypt --in` writes it (docs/ADMIN.md): each frame as a PNG, each keystroke chunk as
/// text per window plus `keystrokes.jsonl`, generic blobs as `.bin`, and `manifest.json`; a blob
/// that fails to open is named by id and skipped, and the exit status is 1.
public struct OpenCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "open",
        abstract: "Decrypt a sealed file with the KEK's private key."
    )

    @Option(help: "Private key PEM (keypair.pem), any form openssl writes.")
    var key: String

    @Option(help: "File whose first line is the passphrase; '-' reads standard input. Without it, custos asks on the terminal.")
    var passphraseFile: String?

    @Option(name: .customLong("in"), help: "Sealed file (record stream) to open.")
    var input: String

    @Option(name: .customLong("out"), help: "Output file (one blob) or directory (several blobs).")
    var output: String

    public init() {}

    public func run() async throws {
        let sealed = try readInput(input, what: "sealed input")
        let records: [EnvelopeRecord]
        do {
            records = try RecordStream.parse(sealed)
        } catch let e as EnvelopeError {
            throw EnvelopeError(e.code, "\(input): \(e.message)")
        }
        let blobs = records.compactMap { if case .blob(let b) = $0 { b } else { nil } }
        guard !blobs.isEmpty else {
            throw CLIError("\(input): holds no sealed blob (\(records.count) DEK record(s) only, or empty)")
        }
        // Ask for a passphrase only when the key is encrypted (or one was offered explicitly).
        let passphrase: SecretBytes? = try passphraseFile != nil || KEKPrivateKey.requiresPassphrase(pemFile: key)
            ? Passphrase.read(file: passphraseFile, prompt: "Passphrase for \(key): ") : nil
        var outIsDirectory: ObjCBool = false
        let existingDirectory = FileManager.default.fileExists(atPath: output, isDirectory: &outIsDirectory) && outIsDirectory.boolValue
        if blobs.count > 1 || output.hasSuffix("/") || existingDirectory {
            try await openIntoDirectory(passphrase: passphrase)
            return
        }
        let privateKey = try KEKPrivateKey(pemFile: key, passphrase: passphrase)
        var openers: [DEKID: BlobOpener] = [:]
        var dekOrder: [DEKID: Int] = [:]
        for case .dekRecord(let record) in records where openers[record.dekID] == nil {
            do {
                openers[record.dekID] = try privateKey.unwrap(record)
                dekOrder[record.dekID] = dekOrder.count
            } catch let e as EnvelopeError {
                throw EnvelopeError(e.code, "\(input): \(e.message)")
            }
        }
        var plaintexts: [(name: String, data: Data)] = []
        for blob in blobs {
            let h = blob.header
            guard let opener = openers[h.dekID] else {
                if h.kekID != privateKey.id {
                    throw EnvelopeError(.keyMismatch, "\(input): blob \(h.blobID) is sealed for KEK \(h.kekID), but \(key) is KEK \(privateKey.id)")
                }
                throw CLIError("\(input): blob \(h.blobID) names DEK \(h.dekID), which has no DEK record in this file")
            }
            do {
                let data = try opener.open(blob)
                let name = String(format: "%06d-%06llu-%@.bin", dekOrder[h.dekID]!, h.sequence, h.kind.name)
                plaintexts.append((name, data))
            } catch let e as EnvelopeError {
                throw EnvelopeError(e.code, "\(input): \(e.message)")
            }
        }
        try writeOutput(plaintexts[0].data, to: output)
    }

    /// Several blobs: the capture-aware directory layout of `custos decrypt --in`.
    private func openIntoDirectory(passphrase: SecretBytes?) async throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDir), !isDir.boolValue {
            throw CLIError("\(output): exists and is not a directory (the input holds several blobs)")
        }
        let report = try await DecryptJob.run(input: .recordStream(input), keyFile: key, passphrase: passphrase,
                                        options: DecryptOptions(output: .directory(output)),
                                        actor: loginUser(), log: printError, progressStyle: .quiet)
        for f in report.failures { printError("failed: blob \(f.blobID): \(f.reason)") }
        printError("open: \(report.decrypted) of \(report.attempted) blobs opened (\(report.screens) screen frames, \(report.videoSummary), \(report.keystrokeChunks) keystroke chunks, \(report.generic) other) → \(output)")
        if !report.failures.isEmpty {
            throw AdminError(.decryptionFailed, "\(report.failures.count) of \(report.attempted) blobs failed to open (listed above); the others were written")
        }
    }
}
