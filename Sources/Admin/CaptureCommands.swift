import ArgumentParser
import CollectorStorage
import CustosBase
import Envelope
import Foundation

/// `custos captures …`.
public struct CapturesCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "captures",
        abstract: "Look at stored captures without decrypting them.",
        subcommands: [CapturesListCommand.self]
    )
    public init() {}
}

/// `custos captures list --db collector.db [--agent ID] [--kind screen|keystrokes|generic|activity] [--since TIME]`.
public struct CapturesListCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List stored captures: time, agent, kind, size, ids, and <Encrypted> in place of content.",
        discussion: """
            Needs no key: nothing is decrypted. TIME is ISO 8601, a date, Unix ms, or an age like 2h / 7d. \
            Rows are read and printed a page at a time (oldest first unless --newest-first); when --limit \
            stops the listing early, the last line gives the --after value that continues it.
            """
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var selection: CaptureSelection
    @Option(help: "At most N rows.")
    var limit: Int?
    @Option(help: ArgumentHelp("Start after this position (printed by an earlier listing cut short by --limit).",
                               valueName: "cursor"))
    var after: String?
    @Flag(help: "Newest captures first.")
    var newestFirst = false

    public init() {}

    /// Rows asked of the storage at once (the most one page holds in memory).
    static let pageSize = 1000

    public func validate() throws {
        if let limit, limit < 1 { throw ValidationError("--limit \(limit): expected at least 1") }
        if let after, CaptureCursor(token: after) == nil {
            throw ValidationError("--after \(after): expected a cursor as a listing prints it (TIME-BLOBID)")
        }
    }

    public func run() async throws {
        let query = try selection.query(order: newestFirst ? .descending : .ascending)
        try await withStorage(try database.location(), createIfMissing: false) { storage in
            var listing = CaptureListing()
            var cursor = after.flatMap(CaptureCursor.init(token:))
            var left = limit ?? .max
            repeat {
                let (asked, from) = (min(Self.pageSize, left), cursor)
                let page = try await storageCall { () throws(StorageError) in
                    try await storage.captures(query, after: from, limit: asked)
                }
                Console.out(listing.add(page.items))
                left -= page.items.count
                cursor = page.next
            } while cursor != nil && left > 0
            Console.out(listing.summary(more: cursor))
        }
    }
}

/// The `captures list` table, built a page at a time: one line per capture (`<Encrypted>` for
/// its content) and a count line. Every value comes from the database, which the README's
/// stolen-database adversary may have changed: each cell is escaped by `Console.table`, so a
/// row stays one line of seven columns.
public struct CaptureListing {
    private var widths: [Int] = []
    private var headerShown = false
    private(set) var count = 0
    private(set) var bytes = 0

    /// The lines of `rows` (with the header before the first page).
    mutating func add(_ rows: [CaptureInfo]) -> TerminalText {
        var lines: [[String]] = []
        if !headerShown {
            lines.append(["CAPTURE TIME (UTC)", "AGENT", "USER", "DISPLAY", "KIND", "SIZE", "BLOB ID", "KEK ID", "CONTENT"])
            headerShown = true
        }
        for r in rows {
            lines.append([OutputNaming.iso(r.captureTimeMs), r.agentID.rawValue, r.user?.rawValue ?? "-", r.display ?? "-",
                          r.kind.name, Self.byteCount(r.size),
                          r.blobID.hex, String(r.kekID.hex.prefix(16)) + "…", "<Encrypted>"])
            count += 1
            bytes += r.size
        }
        return Console.table(lines, widths: &widths)
    }

    /// `4 captures, 1.2 KiB sealed`, and where to continue when `more` is not nil.
    func summary(more: CaptureCursor?) -> TerminalText {
        Console.line("\(count) capture\(count == 1 ? "" : "s"), \(Self.byteCount(bytes)) sealed"
                     + (more.map { "; more after this: --after \($0.token)" } ?? ""))
    }

    /// The whole table of `rows` at once.
    static func table(_ rows: [CaptureInfo]) -> TerminalText {
        var listing = CaptureListing()
        let body = listing.add(rows)
        return Console.lines([body, listing.summary(more: nil)])
    }

    /// `812 B`, `14.2 KiB`, `3.1 MiB`.
    static func byteCount(_ n: Int) -> String {
        if n < 1024 { return "\(n) B" }
        if n < 1024 * 1024 { return String(format: "%.1f KiB", Double(n) / 1024) }
        return String(format: "%.1f MiB", Double(n) / 1024 / 1024)
    }
}

/// Which captures: `--agent`, `--kind`, `--user`, `--since`, `--until` (shared by `captures
/// list`, `decrypt` and `export`).
struct CaptureSelection: ParsableArguments {
    @Option(help: "Only this agent.")
    var agent: String?
    @Option(help: "Only this kind: screen, keystrokes, generic or activity.")
    var kind: String?
    @Option(help: "Only captures of this user's graphical sessions (the login name the agent named; '?' for a session whose user it could not find).")
    var user: String?
    @Option(help: "Only captures at or after TIME (ISO 8601, date, Unix ms, or an age like 2h).")
    var since: String?
    @Option(help: "Only captures before TIME.")
    var until: String?

    func validate() throws {
        if let kind, CaptureKind(name: kind) == nil {
            throw ValidationError("--kind \(kind): expected screen, keystrokes, generic or activity")
        }
        if let agent {
            do { _ = try AgentID(agent, field: "--agent") } catch { throw ValidationError(error.description) }
        }
        _ = try userName()
    }

    /// `--agent` (checked by ``validate()``).
    func agentID() throws -> AgentID? {
        guard let agent else { return nil }
        do { return try AgentID(agent, field: "--agent") } catch { throw AdminError(.usage, error.description) }
    }
    /// `--kind` (checked by ``validate()``).
    var captureKind: CaptureKind? { kind.flatMap(CaptureKind.init(name:)) }
    /// `--since` in Unix ms. - Throws: `AdminError` for a TIME it cannot read.
    func sinceMs() throws -> Int64? { try since.map { try parseTime($0, field: "--since") } }
    /// `--until` in Unix ms. - Throws: `AdminError` for a TIME it cannot read.
    func untilMs() throws -> Int64? { try until.map { try parseTime($0, field: "--until") } }

    /// `--user` as a ``UserName`` (its one validator).
    /// - Throws: `ValidationError` naming `--user` when it is not a valid user name.
    func userName() throws -> UserName? {
        guard let user else { return nil }
        do { return try UserName(user, field: "--user") } catch { throw ValidationError(error.description) }
    }

    /// The selection as a storage query.
    func query(order: CaptureQuery.Order = .ascending) throws -> CaptureQuery {
        CaptureQuery(agentID: try agentID(), kind: captureKind, user: try userName(), sinceMs: try sinceMs(), untilMs: try untilMs(),
                     order: order)
    }
}

/// Options shared by `decrypt` and `export`.
struct DecryptArguments: ParsableArguments {
    @Option(help: ArgumentHelp("Collector database (or a copy of it): a SQLite file, or postgres://USER@HOST[:PORT]/DBNAME[?sslmode=MODE]; the audit records are appended to it.",
                               valueName: "path-or-url"))
    var db: String?
    @Option(help: ArgumentHelp("File whose first line is the PostgreSQL password (never part of --db).", valueName: "file"))
    var dbPasswordFile: String?
    @Option(help: dbBlobDirHelp)
    var dbBlobDir: String?
    @Option(name: .customLong("in"), help: "Instead of --db: a record-stream file (sealed file or API export).")
    var input: String?
    @Option(help: "Private key PEM (keypair.pem), any form openssl writes.")
    var key: String
    @Option(help: "File whose first line is the passphrase; '-' reads standard input. Without it, custos asks on the terminal.")
    var passphraseFile: String?
    @OptionGroup var selection: CaptureSelection
    @Option(name: .customLong("stills"), help: ArgumentHelp(
        "Also write PNG stills of the screen video at the start of each WebM file, every SECONDS of capture time after (decimals allowed), and at its end.",
        valueName: "SECONDS"), transform: StillsInterval.init(parsing:))
    var stills: StillsInterval?
    @Flag(help: "No progress output.")
    var quiet = false

    func validate() throws {
        guard (db == nil) != (input == nil) else { throw ValidationError("give exactly one of --db and --in") }
        if let db {
            try validateBlobDirectoryOption(dbBlobDir, "--db-blob-dir", for: try storageLocation(db, passwordFile: dbPasswordFile))
        } else if dbPasswordFile != nil || dbBlobDir != nil {
            throw ValidationError("\(dbPasswordFile != nil ? "--db-password-file" : "--db-blob-dir") goes with --db")
        }
    }

    func run(output: DecryptOptions.Output) async throws {
        let options = DecryptOptions(output: output, agentID: try selection.agentID(), kind: selection.captureKind,
                                     user: try selection.userName(), sinceMs: try selection.sinceMs(), untilMs: try selection.untilMs(),
                                     stillsEveryMs: stills?.milliseconds)
        let sealed: SealedInput
        var files = [key]
        if let db {
            let location = try storageLocation(db, passwordFile: dbPasswordFile)
            sealed = .database(location, blobDirectory: dbBlobDir)
            if case .sqlite(let path) = location { files.insert(path, at: 0) }
        } else {
            sealed = .recordStream(input!)
            files.insert(input!, at: 0)
        }
        // Check the inputs before asking for the passphrase.
        for path in files where !FileManager.default.fileExists(atPath: path) {
            throw AdminError(.io, "\(path): file does not exist")
        }
        // An unencrypted key (PKCS#1 / PKCS#8 without a passphrase) needs no prompt.
        let encrypted = (try? String(contentsOfFile: key, encoding: .utf8)).map { $0.contains("ENCRYPTED") } ?? true
        let passphrase = encrypted || passphraseFile != nil
            ? try Passphrase.read(file: passphraseFile, prompt: "Passphrase for \(key): ") : nil
        let report = try await DecryptJob.run(input: sealed, keyFile: key, passphrase: passphrase, options: options,
                                        actor: loginUser(), log: printError, progressStyle: quiet ? .quiet : nil)
        for f in report.failures { printError(f.blobID.isEmpty ? "failed: \(f.reason)" : "failed: blob \(f.blobID): \(f.reason)") }
        let what = "\(counted(report.screens, "screen frame")), \(report.videoSummary), "
            + "\(counted(report.keystrokeChunks, "keystroke chunk")) in \(counted(report.keystrokeWindows, "window")), "
            + "\(counted(report.activityPeriods, "activity period")), \(report.generic) other"
        printError("\(options.operation): \(report.decrypted) of \(counted(report.attempted, "item")) decrypted (\(what)) → \(options.outputPath)"
                   + (report.failures.isEmpty ? "" : "; \(report.failures.count) FAILED"))
        if report.interrupted {
            throw AdminError(.interrupted, "interrupted after \(report.decrypted) items; \(output == .archive(options.outputPath) ? "no archive was written" : "the files written are complete")")
        }
        if !report.failures.isEmpty {
            throw AdminError(.decryptionFailed, report.failureLine("item", verb: "decrypt"))
        }
        if report.videoPacketsSkippedTotal > 0 {
            throw AdminError(.decryptionFailed, "\(counted(report.videoPacketsSkippedTotal, "video packet")) decrypted but not written "
                             + "(\(report.videoPacketsSkipped.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))): "
                             + report.videoPacketsSkipped.keys.sorted().compactMap { VideoSkipReason.explanation[$0] }.joined(separator: "; ")
                             + "; the rest was written")
        }
    }
}

/// `custos decrypt --db collector.db --key keypair.pem [--agent ID] [--since/--until] --out DIR`.
public struct DecryptCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "decrypt",
        abstract: "Decrypt captures into a directory: screen video as WebM (and PNG stills with --stills), PNG frames, keystroke text per window, keystrokes.jsonl, manifest.json.",
        discussion: """
            Asks for the key's passphrase (no echo) unless --passphrase-file is given. Each DEK is unwrapped \
            once. An audit record (who, when, selection, counts) is appended to the database before any \
            plaintext is written. Exit 0 when every item decrypted, 1 when the passphrase or key is wrong, \
            any item failed (each is named by blob id) or a video packet could not be written (no keyframe \
            before it), 2 for usage or I/O errors.
            """
    )
    @OptionGroup var common: DecryptArguments
    @Option(help: "Output directory: created with mode 0700; an existing one must be yours and not writable by group/others (a looser mode such as 0755 is tightened to 0700). Symbolic links inside it are refused.")
    var out: String

    public init() {}

    public func run() async throws { try await common.run(output: .directory(out)) }
}

/// `custos export … --out FILE.zip`: the same as decrypt, into one zip archive with a manifest.
public struct ExportCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Decrypt captures into one zip archive with manifest.json (what was included, and counts).",
        discussion: "Same selection, passphrase and exit codes as decrypt. The archive appears only when complete."
    )
    @OptionGroup var common: DecryptArguments
    @Option(help: "Archive to write (.zip); never overwritten.")
    var out: String

    public init() {}

    public func run() async throws { try await common.run(output: .archive(out)) }
}

/// `--stills SECONDS`: the capture time between two still pictures of a video, written as
/// decimal seconds (`10`, `2.5`, `0.25`: digits with an optional fraction of up to 3 digits; no
/// sign, exponent, hexadecimal or `inf`), from 0.001 s to 31,536,000 s (a year).
struct StillsInterval: Sendable, Equatable {
    let milliseconds: Int64

    /// - Throws: `ValidationError` saying what is expected.
    init(parsing text: String) throws {
        let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let whole = parts[0], fraction = parts.count > 1 ? parts[1] : ""
        let digits = { (s: Substring) in s.utf8.allSatisfy { (0x30...0x39).contains($0) } }
        guard !whole.isEmpty, whole.count <= 9, digits(whole), digits(fraction), fraction.count <= 3,
              parts.count == 1 || !fraction.isEmpty,
              let seconds = Int64(whole) else {
            throw ValidationError("'\(SafeText.escaped(text))' is not seconds between stills: expected decimal seconds such as 10 or 2.5 (up to 3 decimals)")
        }
        let ms = seconds * 1000 + (Int64(fraction + String(repeating: "0", count: 3 - fraction.count)) ?? 0)
        guard (1...31_536_000_000).contains(ms) else {
            throw ValidationError("--stills \(SafeText.escaped(text)): expected from 0.001 to 31536000 seconds (a year)")
        }
        milliseconds = ms
    }
}
