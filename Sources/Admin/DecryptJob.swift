import CollectorStorage
import CollectorStorageOpen
import CustosBase
import Envelope
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What `custos decrypt` / `custos export` should do.
public struct DecryptOptions: Sendable {
    /// A directory of files (`decrypt`) or one zip archive (`export`).
    public enum Output: Sendable, Equatable {
        case directory(String)
        case archive(String)
    }
    public var output: Output
    /// Only this agent's captures.
    public var agentID: AgentID?
    /// Only this kind.
    public var kind: CaptureKind?
    /// Only this user's captures (sealed session blobs naming the user).
    public var user: UserName?
    /// Capture time lower bound, Unix ms, inclusive.
    public var sinceMs: Int64?
    /// Capture time upper bound, Unix ms, exclusive.
    public var untilMs: Int64?
    /// `--stills`: a PNG still from video at the start of each WebM file and every this many ms
    /// of capture time after; nil: none.
    public var stillsEveryMs: Int64?
    /// A WebM file is cut at the next keyframe once it holds this many bytes (it is built in memory).
    public var maxVideoFileBytes: Int

    public init(output: Output, agentID: AgentID? = nil, kind: CaptureKind? = nil, user: UserName? = nil, sinceMs: Int64? = nil,
                untilMs: Int64? = nil, stillsEveryMs: Int64? = nil, maxVideoFileBytes: Int = 256 << 20) {
        self.output = output
        self.agentID = agentID
        self.kind = kind
        self.user = user
        self.sinceMs = sinceMs
        self.untilMs = untilMs
        self.stillsEveryMs = stillsEveryMs
        self.maxVideoFileBytes = maxVideoFileBytes
    }

    /// The selection as a storage query (oldest first).
    var query: CaptureQuery { CaptureQuery(agentID: agentID, kind: kind, user: user, sinceMs: sinceMs, untilMs: untilMs) }

    var operation: String {
        if case .archive = output { return "export" }
        return "decrypt"
    }
    var outputPath: String {
        switch output {
        case .directory(let p), .archive(let p): p
        }
    }
}

/// Where the sealed items come from.
public enum SealedInput: Sendable {
    /// The collector's storage (or a copy of its database file); audit records are appended to
    /// it. A SQLite file must exist (it is never created). `blobDirectory`: a PostgreSQL
    /// database's blob directory (`blob-dir=`), to read blobs kept in blob files.
    case database(StorageLocation, blobDirectory: String? = nil)
    /// A record-stream file (a sealed file or an API export); there is no database to audit into.
    case recordStream(String)
}

/// Just-in-time decryption: loads the private KEK with the passphrase, appends an audit record,
/// decrypts the selected captures into a directory or archive, and appends a completion record.
///
/// Order matters: the key is opened (wrong passphrase → nothing is written) and the selection is
/// checked against the key (no matching KEK → nothing is written, the needed KEK ids are named)
/// before the output exists; the audit record is written before any plaintext (fail closed).
public enum DecryptJob {
    /// Runs one decrypt or export.
    ///
    /// - Parameters:
    ///   - passphrase: for an encrypted key; wiped before this returns (the decrypted private key
    ///     is freed, and zeroed by BoringSSL, when the function returns).
    ///   - actor: who runs it, for the audit record (``loginUser()``).
    ///   - log: one line of status text (stderr in the CLI).
    ///   - progressStyle: nil = bar on a TTY, lines otherwise.
    /// - Returns: the report; `failures` non-empty means some items failed (CLI exit 1).
    /// - Throws: `AdminError` — `.wrongPassphrase`, `.keyMismatch` (no selected item is sealed to
    ///   this key; message lists the KEK ids needed), `.io` (unreadable input, unwritable output),
    ///   `.database`.
    public static func run(input: SealedInput, keyFile: String, passphrase: SecretBytes?, options: DecryptOptions,
                           actor: String, log: @escaping (String) -> Void,
                           progressStyle: ProgressStyle? = nil) async throws -> DecryptReport {
        defer { passphrase?.wipe() }
        // 1. The sealed items.
        switch input {
        case .database(let location, let blobDirectory):
            return try await withStorage(location, createIfMissing: false, blobDirectory: blobDirectory) { storage in
                // Before the key is opened: a blob directory that is missing, foreign or unmounted,
                // or one needed but not given, is said now rather than as a failure per blob.
                try await checkBlobDirectory(storage, name: location.shown, option: "--db-blob-dir")
                return try await run(source: CollectorSource(storage: storage, name: location.shown), audit: storage, keyFile: keyFile,
                              passphrase: passphrase, options: options, actor: actor, log: log, progressStyle: progressStyle)
            }
        case .recordStream(let path):
            return try await run(source: try RecordStreamSource(path: path), audit: nil, keyFile: keyFile, passphrase: passphrase,
                                 options: options, actor: actor, log: log, progressStyle: progressStyle)
        }
    }

    /// ``run(input:keyFile:passphrase:options:actor:log:progressStyle:)`` on an open source;
    /// audit records go to `audit` (nil for a record stream: nowhere to write them).
    static func run(source: any SealedItemSource, audit auditLog: (any AuditStore)?, keyFile: String, passphrase: SecretBytes?,
                    options: DecryptOptions, actor: String, log: @escaping (String) -> Void,
                    progressStyle: ProgressStyle?) async throws -> DecryptReport {
        let op = options.operation
        func audit(_ action: String, _ detail: String) async throws {
            guard let auditLog else { return }
            do { try await auditLog.appendAudit(actor: actor, action: action, detail: detail) } catch {
                throw AdminError(.database, "cannot append the audit record (\(action)); nothing more is decrypted: \(error.message)")
            }
        }
        let selection = "agent=\(options.agentID?.rawValue ?? "*") kind=\(options.kind?.name ?? "*") since=\(options.sinceMs.map(OutputNaming.iso) ?? "-") until=\(options.untilMs.map(OutputNaming.iso) ?? "-")"
            + (options.stillsEveryMs.map { " stills_every_ms=\($0)" } ?? "")

        // 2. The key. Nothing is written before it opens.
        let key: KEKPrivateKey
        do {
            key = try KEKPrivateKey(pemFile: keyFile, passphrase: passphrase)
        } catch let e as EnvelopeError {
            let err = AdminError.fromKeyLoading(e)
            if err.code == .wrongPassphrase {
                try await audit("captures.\(op).refused", "\(selection) key=\(keyFile) reason=wrong-passphrase")
            }
            throw err
        }
        passphrase?.wipe()

        // 3. The selection, checked against the key: a first walk over its pages (metadata only).
        var selected = 0, mine = 0
        var otherKEKs: [String: Int] = [:]
        try await source.forEachPage(options.query) { page in
            selected += page.count
            for c in page {
                if c.kekID == key.id { mine += 1 } else { otherKEKs[c.kekID.hex, default: 0] += 1 }
            }
            return true
        }
        if selected > 0, mine == 0 {
            let needed = otherKEKs.sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value) items)" }
            try await audit("captures.\(op).refused", "\(selection) kek=\(key.id.hex) selected=\(selected) reason=no-matching-kek")
            throw AdminError(.keyMismatch, "\(keyFile) is KEK \(key.id.hex), but none of the \(selected) selected items is sealed to it; the data needs KEK ids: \(needed.joined(separator: ", "))")
        }
        if !otherKEKs.isEmpty {
            log("note: \(selected - mine) selected items are sealed to other KEKs and are left out: \(otherKEKs.keys.sorted().joined(separator: ", ")) (use --agent, or their keys)")
        }

        // 4. The output, then the audit record, then plaintext.
        let sink: any CaptureSink
        switch options.output {
        case .directory(let p): sink = try DirectorySink(root: p, log: log)
        case .archive(let p): sink = try ZipSink(path: p)
        }
        do {
            try await audit("captures.\(op)", "\(selection) kek=\(key.id.hex) selected=\(selected) attempted=\(mine) out=\(options.outputPath) source=\(source.name)")
        } catch {
            sink.abort()
            throw error
        }

        let previous = installInterruptHandlers()
        defer { restoreSignalHandlers(previous) }
        let progress = ProgressReporter(label: op, style: progressStyle.map(\.style))
        let decryptor = Decryptor(key: key, source: source, sink: sink, progress: progress,
                                  video: VideoExportOptions(stillsEveryMs: options.stillsEveryMs,
                                                            maxFileBytes: options.maxVideoFileBytes,
                                                            selectionStartMs: options.sinceMs))
        // The second walk decrypts, and counts what it meets (captures may have arrived since
        // the first): the report describes what this walk did.
        var report = DecryptReport()
        do {
            try await decryptor.run(options.query, expected: mine, report: &report)
            // A torn end of a record stream is a failure of the whole (exit 1), not of one blob.
            if let damage = source.damage { report.failures.append(.init(blobID: "", reason: damage)) }
            if report.interrupted, case .archive = options.output {
                sink.abort()
            } else {
                let manifest = Manifest(operation: op, createdAt: OutputNaming.iso(Int64(Date().timeIntervalSince1970 * 1000)),
                                        actor: actor, source: source.name, kekID: key.id.hex,
                                        selection: .init(agent: options.agentID?.rawValue, kind: options.kind?.name,
                                                         since: options.sinceMs.map(OutputNaming.iso),
                                                         until: options.untilMs.map(OutputNaming.iso),
                                                         stillsEveryMs: options.stillsEveryMs),
                                        counts: report, files: decryptor.files)
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                _ = try sink.add(try enc.encode(manifest), at: "manifest.json", compress: true)
                try sink.commit()
            }
        } catch {
            sink.abort()
            try? await audit("captures.\(op).done", "\(selection) kek=\(key.id.hex) decrypted=\(report.decrypted) failed=\(report.failures.count) error=\(error)")
            throw error
        }
        try await audit("captures.\(op).done", "\(selection) kek=\(key.id.hex) decrypted=\(report.decrypted) failed=\(report.failures.count) screens=\(report.screens) video_packets=\(report.videoPackets) video_files=\(report.videoFiles) video_skipped=\(report.videoPacketsSkippedTotal) video_before_since=\(report.videoPacketsBeforeSelection) stills=\(report.stills) keystroke_chunks=\(report.keystrokeChunks) activity_chunks=\(report.activityChunks) interrupted=\(report.interrupted)")
        return report
    }
}

/// How progress is shown (see `ProgressReporter`).
public enum ProgressStyle: Sendable {
    case bar, lines, quiet
    var style: ProgressReporter.Style {
        switch self {
        case .bar: .bar
        case .lines: .lines
        case .quiet: .quiet
        }
    }
}

/// The person running the tool: the login name (`getlogin(3)`), else `SUDO_USER`, else the
/// effective user's name; with the effective uid when it differs from the name's.
public func loginUser() -> String {
    let euid = geteuid()
    var effective = "uid\(euid)"
    if let pw = getpwuid(euid), let n = pw.pointee.pw_name { effective = String(cString: n) }
    var name: String?
    if let p = getlogin() { name = String(cString: p) }
    if name == nil || name!.isEmpty { name = ProcessInfo.processInfo.environment["SUDO_USER"] }
    guard let n = name, !n.isEmpty else { return effective }
    return n == effective ? n : "\(n) (as \(effective))"
}

private func onInterrupt(_ signal: Int32) {
    interruptRequested.store(true, ordering: .relaxed)
}

private func installInterruptHandlers() -> [Int32: sighandler_t?] {
    interruptRequested.store(false, ordering: .relaxed)
    var old: [Int32: sighandler_t?] = [:]
    for s in [SIGINT, SIGTERM] { old[s] = signal(s, onInterrupt) }
    return old
}

private func restoreSignalHandlers(_ old: [Int32: sighandler_t?]) {
    for (s, h) in old { signal(s, h) }
}

/// Parses a time for `--since`/`--until`: ISO 8601 (`2026-11-30T12:00:00Z`, with optional
/// fractional seconds or a `±hh:mm` offset), a date (`2026-11-30`, UTC midnight), Unix
/// milliseconds of 10 or more digits (`1764547200000`; fewer would be days of January 1970, so
/// they are refused rather than read), or an age before `now` (`90s`, `30m`, `2h`, `7d`).
/// - Parameter field: the option the text came from (`--until`), named in errors.
/// - Returns: Unix ms.
/// - Throws: `AdminError.usage` naming the option and the text, and saying which forms are read.
public func parseTime(_ text: String, field: String? = nil, now: Date = Date()) throws -> Int64 {
    let shown = (field.map { "\($0) " } ?? "") + SafeText.quoted(text)
    let forms = "expected ISO 8601 like 2026-11-30T12:00:00Z, a date 2026-11-30, Unix ms of 10 or more digits like 1764547200000, or an age like 2h / 7d"
    /// Years 1...9999 only (what ISO 8601 with four-digit years, and the databases, hold).
    func inRange(_ ms: Int64) throws -> Int64 {
        guard (-62_135_596_800_000 ... 253_402_300_799_999).contains(ms) else {
            throw AdminError(.usage, "\(shown): outside the years 1 to 9999")
        }
        return ms
    }
    let t = text.trimmingCharacters(in: .whitespaces)
    if !t.isEmpty, t.utf8.allSatisfy({ (0x30...0x39).contains($0) }) {
        guard t.count >= 10 else {
            throw AdminError(.usage, "\(shown): a number is read as Unix ms only with 10 or more digits (fewer would be in January 1970); \(forms)")
        }
        guard let ms = Int64(t) else { throw AdminError(.usage, "\(shown): too large for Unix ms; \(forms)") }
        return try inRange(ms)
    }
    if let unit = t.last, let n = Int64(t.dropLast()), n >= 0 {
        let seconds: Int64? = switch unit {
        case "s": n
        case "m": n * 60
        case "h": n * 3600
        case "d": n * 86400
        default: nil
        }
        if let seconds { return Int64(now.timeIntervalSince1970 * 1000) - seconds * 1000 }
    }
    let withFraction = ISO8601DateFormatter()
    withFraction.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    let plain = ISO8601DateFormatter()
    plain.formatOptions = [.withInternetDateTime]
    let day = ISO8601DateFormatter()
    day.formatOptions = [.withFullDate]
    day.timeZone = TimeZone(identifier: "UTC")
    // The formatter moves an impossible date (2027-02-30) to another day: refuse it instead.
    if let m = t.prefixMatch(of: /([0-9]{4})-([0-9]{2})-([0-9]{2})/) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let parts = DateComponents(calendar: calendar, year: Int(m.1), month: Int(m.2), day: Int(m.3))
        guard parts.isValidDate else {
            throw AdminError(.usage, "\(shown): \(m.0) is not a date of the calendar")
        }
    }
    for f in [withFraction, plain, day] {
        if let d = f.date(from: t) { return try inRange(Int64((d.timeIntervalSince1970 * 1000).rounded())) }
    }
    throw AdminError(.usage, "\(shown): not a time (\(forms))")
}
