import ArgumentParser
import CustosConfig
import Envelope
import Foundation
import Spool
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `custos-agent record`: runs capture for N seconds and writes one sealed record-stream file
/// (a DEK record followed by the blobs) under the configured KEK. Never plaintext.
struct RecordCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "record",
        abstract: "Capture for N seconds into one sealed file (DEK record + blobs); open it with `custos open`.")
    @OptionGroup var options: ConfigOption
    @Option(help: "How long to capture, in seconds.") var seconds: Double
    @Option(help: "The sealed file to write (must not exist).") var out: String

    func validate() throws {
        guard seconds > 0, seconds <= 86_400 else { throw ValidationError("--seconds must be more than 0 and at most 86400") }
    }

    func run() async throws {
        let config = try options.load()
        Hardening.apply()
        let logger = makeLogger("custos-agent.record")
        // Check the KEK before creating --out, so a refusal leaves no file behind.
        do { _ = try KEKPublicKey(pemFile: config.activeKEKFile) } catch {
            FileHandle.standardError.write(Data("custos-agent record: \(config.enableEncryption ? "kek-file" : "server-kek-file") \(config.activeKEKFile) is not usable: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let sink: RecordFileSink
        do { sink = try RecordFileSink(path: out) } catch {
            FileHandle.standardError.write(Data("custos-agent record: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let sealer = Sealer(config: config, sink: sink, logger: logger)
        guard sealer.refresh(config: config) else {
            try? sink.close()
            unlink(out)
            FileHandle.standardError.write(Data("custos-agent record: \(sealer.status.reason ?? "no KEK")\n".utf8))
            throw ExitCode(2)
        }
        let capture = CaptureService(config: config, sealer: sealer, logger: logger, backend: CaptureBackends.standard)
        await capture.run(for: seconds)
        try sink.close()
        let c = capture.snapshot
        if c.framesSealed == 0 && c.chunksSealed == 0 && c.activitySealed == 0 {
            // Nothing captured: remove the file (it holds only a DEK record) and say why.
            unlink(out)
            let why = capture.lastError.map { "; last error: \($0)" } ?? ""
            FileHandle.standardError.write(Data("custos-agent record: nothing was captured in \(seconds) s on display \(config.displays) (errors: \(c.errors))\(why); \(out) not written\n".utf8))
            throw ExitCode(1)
        }
        defer { print("open it with: custos open --key keypair.pem --in \(out) --out DIR/") }
        print("recorded \(out): frames=\(c.framesSealed) unchanged=\(c.framesUnchanged) keystroke-chunks=\(c.chunksSealed) activity=\(c.activitySealed) errors=\(c.errors) kek=\(sealer.status.kekID?.hex ?? "-")")
    }
}

/// Appends sealed records to a new file (created 0600, `O_EXCL`), `fsync`ing after each, so the
/// file is always a valid record stream up to its last whole record.
final class RecordFileSink: RecordSink {
    private let fd: Mutex<Int32>
    let path: String

    init(path: String) throws {
        self.path = path
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw SealerUnavailable(description: "\(path): cannot create: \(String(cString: strerror(errno)))")
        }
        self.fd = Mutex(fd)
    }

    func put(_ record: EnvelopeRecord, kind: SpoolKind, dekID: DEKID, captureTimeMs: Int64,
             group: Int64?) throws -> Set<Int64> {
        let bytes = record.serialized
        try fd.withLock { fd in
            guard fd >= 0 else { throw SealerUnavailable(description: "\(path): already closed") }
            do {
                // FileHandle writes it all (partial writes, EINTR) or throws.
                try FileHandle(fileDescriptor: fd, closeOnDealloc: false).write(contentsOf: bytes)
            } catch {
                throw SealerUnavailable(description: "\(path): write failed: \((error as NSError).localizedDescription)")
            }
            guard fsync(fd) == 0 else {
                throw SealerUnavailable(description: "\(path): fsync failed: \(String(cString: strerror(errno)))")
            }
        }
        return []  // a file evicts nothing
    }

    func close() throws {
        try fd.withLock { fd in
            guard fd >= 0 else { return }
            let r = Glibc.close(fd)
            fd = -1
            if r != 0 { throw SealerUnavailable(description: "\(path): close failed") }
        }
    }

    deinit { fd.withLock { if $0 >= 0 { _ = Glibc.close($0) } } }
}
