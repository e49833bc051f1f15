import ArgumentParser
import CaptureFormat
import Envelope
import Foundation
import Video

/// `custos open`: recovers the plaintext of a sealed file (a record stream: DEK records and
/// sealed blobs, as `custos seal` and `custos-agent record` write).
///
/// One blob and `--out` neither an existing directory nor ending in `/`: `--out` is a new file
/// holding the blob in its natural form, and nothing is written unless it opens and decodes: a
/// PNG screen frame as the PNG, a video packet as a one-frame WebM (a keyframe; an inter packet
/// cannot be decoded alone and is refused), a keystroke chunk as the window's text (as `decrypt`
/// writes it), any other blob (`custos seal`, whatever its kind, when the bytes are not a
/// capture payload) as exactly its plaintext. Otherwise (several blobs,
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

    @Option(name: .customLong("out"), help: "Output file (one blob) or directory (several blobs, or a path ending in /).")
    var output: String

    @Option(name: .customLong("stills"), help: ArgumentHelp(
        "With a directory --out: also write PNG stills of the screen video at the start of each WebM file, every SECONDS of capture time after, and at its end.",
        valueName: "SECONDS"), transform: StillsInterval.init(parsing:))
    var stills: StillsInterval?

    public init() {}

    public func run() async throws {
        let sealed = try readInput(input, what: "sealed input")
        let records: [EnvelopeRecord]
        let torn: (offset: Int, bytes: Int)?
        do {
            (records, torn) = try RecordStream.parseAllowingTornTail(sealed)
        } catch let e as EnvelopeError {
            throw EnvelopeError(e.code, "\(input): \(e.message)")
        }
        let blobs = records.compactMap { if case .blob(let b) = $0 { b } else { nil } }
        guard !blobs.isEmpty else {
            throw CLIError("\(input): holds no complete sealed blob (\(records.count) DEK record(s) only, or empty"
                           + (torn.map { "; its last \($0.bytes) bytes are a record cut short" } ?? "") + ")")
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
        guard stills == nil else {
            throw AdminError(.usage, "--stills needs a directory --out (a path ending in /): \(input) holds one blob, written to the file \(output)")
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
        var plaintexts: [(header: BlobHeader, data: Data)] = []
        for blob in blobs {
            let h = blob.header
            guard let opener = openers[h.dekID] else {
                if h.kekID != privateKey.id {
                    throw EnvelopeError(.keyMismatch, "\(input): blob \(h.blobID) is sealed for KEK \(h.kekID), but \(key) is KEK \(privateKey.id)")
                }
                throw CLIError("\(input): blob \(h.blobID) names DEK \(h.dekID), which has no DEK record in this file")
            }
            do {
                plaintexts.append((h, try opener.open(blob)))
            } catch let e as EnvelopeError {
                throw EnvelopeError(e.code, "\(input): \(e.message)")
            }
        }
        let (header, plaintext) = plaintexts[0]
        let natural: Data
        do {
            natural = try Self.naturalForm(plaintext, header: header)
        } catch {
            throw AdminError(.decryptionFailed, "\(input): blob \(header.blobID) opened, but its \(header.kind.name) payload cannot be written: \(error)")
        }
        try writeOutput(natural, to: output)
        if let torn {
            throw AdminError(.decryptionFailed, "\(input): the last \(torn.bytes) bytes (from byte \(torn.offset)) are a record cut short "
                             + "(the writer was stopped mid-write); the complete blob before it was written to \(output)")
        }
    }

    /// One opened blob as a file a viewer takes (see the type's documentation).
    /// - Throws: `VideoError`, `CaptureFormatError` or `AdminError` naming what is wrong.
    static func naturalForm(_ plaintext: Data, header: BlobHeader) throws -> Data {
        switch header.kind {
        case .screen where VideoPacketPayload.matches(plaintext):
            let (meta, packet) = try VideoPacketPayload.decode(plaintext)
            guard meta.keyframe else {
                throw AdminError(.decryptionFailed, "video packet \(meta.packetIndex) of stream \(meta.streamID) is not a keyframe: "
                                 + "it decodes only after the packets before it (open the whole recording into a directory)")
            }
            let writer = WebMWriter(trackUID: UInt64(meta.streamID.prefix(16), radix: 16) ?? 1)
            try writer.append([UInt8](packet), timeMs: meta.captureTimeMs, keyframe: true)
            return try writer.finish()
        case .screen:
            // A PNG frame payload, or bytes sealed as `screen` by `custos seal`: those as they are.
            return (try? FramePayload.decode(plaintext).png) ?? plaintext
        case .keystrokes:
            guard let chunk = try? KeystrokeChunk.decode(plaintext) else { return plaintext }
            return OutputNaming.windowText(agent: header.agentID, title: chunk.windowTitle, wmClass: chunk.wmClass,
                                           chunks: [chunk])
        case .activity:
            // One chunk: its periods as the timeline's CSV.
            var timeline = ActivityTimelineExport()
            timeline.add(try ActivityChunk.decode(plaintext), agent: header.agentID, user: header.session?.user.rawValue,
                         display: header.session?.display)
            return ActivityTimelineExport.csv(timeline.rows())
        default:
            return plaintext
        }
    }

    /// Several blobs: the capture-aware directory layout of `custos decrypt --in`.
    private func openIntoDirectory(passphrase: SecretBytes?) async throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDir), !isDir.boolValue {
            throw CLIError("\(output): exists and is not a directory (the input holds several blobs)")
        }
        let report = try await DecryptJob.run(input: .recordStream(input), keyFile: key, passphrase: passphrase,
                                        options: DecryptOptions(output: .directory(output), stillsEveryMs: stills?.milliseconds),
                                        actor: loginUser(), log: printError, progressStyle: .quiet)
        for f in report.failures { printError(f.blobID.isEmpty ? "failed: \(f.reason)" : "failed: blob \(f.blobID): \(f.reason)") }
        printError("open: \(report.decrypted) of \(counted(report.attempted, "blob")) opened (\(counted(report.screens, "screen frame")), "
                   + "\(report.videoSummary), \(counted(report.keystrokeChunks, "keystroke chunk")), \(counted(report.activityChunks, "activity chunk")), \(report.generic) other) → \(output)")
        if !report.failures.isEmpty {
            throw AdminError(.decryptionFailed, report.failureLine("blob", verb: "open"))
        }
        if report.videoPacketsSkippedTotal > 0 {
            throw AdminError(.decryptionFailed, "\(counted(report.videoPacketsSkippedTotal, "video packet")) opened but not written "
                             + "(no keyframe before them in \(input)); the rest was written")
        }
    }
}
