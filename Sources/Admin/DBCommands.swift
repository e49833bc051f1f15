import ArgumentParser
import CollectorStorage
import CollectorStorageOpen
import CustosBase
import Envelope
import Foundation

/// `custos db …`: whole-database operations.
public struct DBCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "db",
        abstract: "Whole-database operations on a collector's storage.",
        subcommands: [DBMigrateCommand.self]
    )
    public init() {}
}

/// `custos db migrate --from collector.db --to postgres://…`: copies a collector database into
/// another (typically an embedded SQLite file, with its blob files, into PostgreSQL), then
/// verifies it (``StorageMigration``). Stop the collector writing to `--from` first, or run it
/// again afterwards: the copy is idempotent, so a second run adds what arrived meanwhile.
public struct DBMigrateCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Copy a collector database (agents, KEKs, DEK records, captures with their blob bytes, audit log, legal holds, dashboard accounts) into another, then verify counts and a sample of blobs byte for byte.",
        discussion: """
            Typical use: custos db migrate --from /var/lib/custos-collector/collector.db \
            --to postgres://custos@db.example.org/custos --to-password-file /etc/custos/database-password. \
            Rows are copied as they are: agents keep their tokens, KEK rows and audit entries their ids and \
            times, captures their capture and receive times, dashboard accounts their password hashes and TOTP \
            secrets (their sessions are not copied: reviewers log in again). Running it again resumes an interrupted copy \
            (what is there already is skipped); a target holding other data under the same ids is refused. \
            Exit 0 when the copy verifies, 1 when it does not (the numbers are printed), 2 for usage or \
            database errors.
            """
    )

    @Option(help: ArgumentHelp("The database to copy: a SQLite file (its blob files beside it), or a postgres:// URL.", valueName: "path-or-url"))
    var from: String
    @Option(help: ArgumentHelp("File whose first line is --from's PostgreSQL password.", valueName: "file"))
    var fromPasswordFile: String?
    @Option(help: ArgumentHelp("The database to copy into: a postgres:// URL (or a SQLite file path); its schema is created when missing.", valueName: "path-or-url"))
    var to: String
    @Option(help: ArgumentHelp("File whose first line is --to's PostgreSQL password.", valueName: "file"))
    var toPasswordFile: String?
    @Option(help: ArgumentHelp("--from's blob directory (its collectors' blob-dir=), when --from is a postgres:// database whose large blobs are in blob files.", valueName: "dir"))
    var fromBlobDir: String?
    @Option(help: ArgumentHelp("Blob directory for --to (a postgres:// database; what its collectors' blob-dir= will be): blobs of 32 KiB or more go to blob files there instead of the table. It must exist (mode 0700).", valueName: "dir"))
    var toBlobDir: String?
    @Option(help: ArgumentHelp("How many captures, spread over the whole copy, to compare byte for byte after copying (besides every count and every DEK record).", valueName: "N"))
    var verifySample = 1000
    @Flag(help: "No progress lines.")
    var quiet = false

    public init() {}

    public func validate() throws {
        let source = try storageLocation(from, passwordFile: fromPasswordFile, field: "--from", passwordField: "--from-password-file")
        let target = try storageLocation(to, passwordFile: toPasswordFile, field: "--to", passwordField: "--to-password-file")
        guard source.description != target.description else {
            throw ValidationError("--from and --to name the same database (\(SafeText.escaped(source.description)))")
        }
        try validateBlobDirectoryOption(fromBlobDir, "--from-blob-dir", for: source)
        try validateBlobDirectoryOption(toBlobDir, "--to-blob-dir", for: target)
        guard (0...10_000_000).contains(verifySample) else {
            throw ValidationError("--verify-sample \(verifySample): expected 0 to 10000000 captures")
        }
    }

    public func run() async throws {
        let source = try storageLocation(from, passwordFile: fromPasswordFile, field: "--from", passwordField: "--from-password-file")
        let target = try storageLocation(to, passwordFile: toPasswordFile, field: "--to", passwordField: "--to-password-file")
        let quiet = self.quiet
        let log: @Sendable (String) -> Void = { line in if !quiet { printError(line) } }
        let sample = verifySample, actor = loginUser(), sourceName = source.description
        let report: MigrationReport = try await withStorage(source, createIfMissing: false,
                                                            blobDirectory: fromBlobDir) { (from: any CollectorStorage) -> MigrationReport in
            try await withStorage(target, createIfMissing: true, blobDirectory: toBlobDir) { (to: any CollectorStorage) -> MigrationReport in
                // The blob directories first: a bad --to-blob-dir would otherwise fail at the first
                // large blob, leaving a partial copy behind.
                try await checkBlobDirectory(from, name: sourceName, option: "--from-blob-dir")
                try await checkBlobDirectory(to, name: target.description, option: "--to-blob-dir")
                let migration = StorageMigration(source: from, target: to, sourceName: sourceName, verifySample: sample,
                                                 actor: actor, log: log)
                return try await migration.run()
            }
        }
        printError("db migrate: \(report.summary) → \(target.description)")
        if !report.problems.isEmpty {
            for p in report.problems.prefix(20) { printError("mismatch: \(p)") }
            throw AdminError(.verificationFailed, "the copy does not match its source: \(counted(report.problems.count, "problem")) (listed above)")
        }
    }
}

/// What a migration did and found.
struct MigrationReport: Sendable {
    var agents = (copied: 0, new: 0)
    var keks = (copied: 0, new: 0)
    var deks = (copied: 0, new: 0)
    var captures = (copied: 0, new: 0)
    var bytes: Int64 = 0
    var audit = (copied: 0, new: 0)
    /// Legal holds active at the copy (ended ones are in the audit log).
    var holds = (copied: 0, new: 0)
    /// Dashboard accounts (their sessions are never copied).
    var admins = (copied: 0, new: 0)
    var verifiedBlobs = 0
    /// Each difference found (a count, a row, a blob), in words.
    var problems: [String] = []

    var summary: String {
        "\(counted(agents.copied, "agent")) (\(agents.new) new), \(counted(keks.copied, "KEK row")) (\(keks.new) new), "
            + "\(counted(deks.copied, "DEK record")) (\(deks.new) new), \(counted(captures.copied, "capture")) (\(captures.new) new, "
            + "\(bytes) bytes sealed), \(counted(audit.copied, "audit entry", plural: "audit entries")) (\(audit.new) new), "
            + "\(counted(holds.copied, "active legal hold")) (\(holds.new) new), "
            + "\(counted(admins.copied, "dashboard account")) (\(admins.new) new; sessions not copied) copied; "
            + "\(verifiedBlobs) blobs compared byte for byte; \(problems.isEmpty ? "verified" : "NOT verified")"
    }
}

/// Copies one collector storage into another through the seam, and verifies the copy.
///
/// Order: agents (token hashes), KEK rows, dashboard accounts (as stored: bcrypt hash, TOTP
/// secret and last accepted step, failed-login state; never their sessions, so every reviewer
/// logs in again on the copy), DEK records, captures (a page of 200 at a time, each with its blob
/// bytes, ingested grouped by their original receive time), the audit log, active legal holds,
/// then a `db.migrate` audit entry in the target. Every step is idempotent (``TransferStore``, ingest by
/// id), so running it again resumes; a target holding other rows under the same ids fails
/// (`.alreadyExists`, or ingest's `conflict`/`otherAgent`, reported as problems).
///
/// Verification: the agents, KEK rows, DEK records (all, byte for byte) and the capture count
/// must be equal on both sides, every source dashboard account must be in the target with the
/// same credentials, and `verifySample` captures spread evenly over the copy are
/// compared row and bytes. Memory: one page of blobs at a time (200 blobs).
struct StorageMigration {
    let source: any CollectorStorage
    let target: any CollectorStorage
    /// The source as shown in messages and the audit entry (never a password).
    let sourceName: String
    let verifySample: Int
    let actor: String
    let log: @Sendable (String) -> Void

    static let pageSize = 200

    /// - Throws: `AdminError` (exit 2) when a storage call fails, when source and target are
    ///   one database, or when the target holds data that is not an earlier copy of this source
    ///   (``preflight()``: checked before anything is written); differences are in the report.
    func run() async throws -> MigrationReport {
        var report = MigrationReport()
        let (sourceID, earlierCopy) = try await preflight()
        // The marker naming the source goes in before any row: a copy interrupted from here on
        // is an earlier copy of this source, and running it again resumes (docs/STORAGE.md).
        // The entry after the verification marks the copy complete.
        if !earlierCopy {
            _ = try await storageCall { () throws(StorageError) in
                try await target.appendAudit(actor: actor, action: "db.migrate",
                                             detail: "from=\(sourceName) source-id=\(sourceID) started")
            }
        }

        let agents = try await storageCall { () throws(StorageError) in try await source.agentCredentials() }
        report.agents = (agents.count, try await storageCall { () throws(StorageError) in try await target.importAgents(agents) })
        log("agents: \(agents.count) (\(report.agents.new) new)")

        let keks = try await storageCall { () throws(StorageError) in try await source.keks() }
        report.keks = (keks.count, try await storageCall { () throws(StorageError) in try await target.importKEKs(keks) })
        log("KEK rows: \(keks.count) (\(report.keks.new) new)")

        // Dashboard accounts, as stored; a name the target has already is an earlier copy of it
        // (``preflight()`` refused other credentials under it).
        let accounts = try await storageCall { () throws(StorageError) in try await source.admins() }
        let targetAccounts = Set(try await storageCall { () throws(StorageError) in try await target.admins() }.map(\.name))
        for account in accounts where !targetAccounts.contains(account.name) {
            try await storageCall { () throws(StorageError) in try await target.addAdmin(account) }
            report.admins.new += 1
        }
        report.admins.copied = accounts.count
        log("dashboard accounts: \(accounts.count) (\(report.admins.new) new; their sessions are not copied)")

        // DEK records, a page at a time; all are compared afterwards (they are few and small).
        var after: DEKID?
        var dekIDs: [DEKID] = []
        while true {
            let page = try await storageCall { () throws(StorageError) in
                try await source.dekRecords(agent: nil, after: after, limit: Self.pageSize)
            }
            guard let last = page.last else { break }
            after = last.dekID
            dekIDs += page.map(\.dekID)
            let outcomes = try await storageCall { () throws(StorageError) in
                try await target.ingest(page.map { .dek($0) }, receivedAtMs: Int64(Date().timeIntervalSince1970 * 1000))
            }
            tally(outcomes, ids: page.map(\.dekID.hex), what: "DEK record", into: &report, counter: \.deks)
        }
        log("DEK records: \(report.deks.copied) (\(report.deks.new) new)")

        // Captures, oldest first, with their blob bytes.
        let total = try await storageCall { () throws(StorageError) in try await source.counts() }.captures
        let stride = verifySample > 0 ? max(1, total / verifySample) : Int.max
        var sampled: [CaptureInfo] = []
        var cursor: CaptureCursor?
        var seen = 0
        repeat {
            let page = try await storageCall { () throws(StorageError) in
                try await source.captures(CaptureQuery(), after: cursor, limit: Self.pageSize)
            }
            cursor = page.next
            var groups: [Int64: [IngestItem]] = [:]
            var order: [Int64] = []
            for info in page.items {
                let sample = seen % stride == 0 || seen == total - 1
                seen += 1
                let read: Data?
                do { read = try await source.blob(info.blobID) } catch where error.code == .corrupt {
                    report.problems.append("capture \(info.blobID.hex): its blob bytes cannot be read in the source: \(error.message)")
                    continue
                } catch {
                    throw AdminError.fromStorage(error)
                }
                guard let bytes = read else {
                    report.problems.append("capture \(info.blobID.hex): its blob bytes are missing from the source")
                    continue
                }
                // Only captures whose bytes were read are compared afterwards (the others are problems).
                if sample { sampled.append(info) }
                report.bytes += Int64(bytes.count)
                if groups[info.receivedAtMs] == nil { order.append(info.receivedAtMs) }
                groups[info.receivedAtMs, default: []].append(.blob(StoredBlob(
                    blobID: info.blobID, agentID: info.agentID, kind: info.kind, dekID: info.dekID, kekID: info.kekID,
                    sequence: info.sequence, captureTimeMs: info.captureTimeMs, bytes: bytes, user: info.user,
                    display: info.display)))
            }
            for receivedAt in order {
                let items = groups[receivedAt]!
                let outcomes = try await storageCall { () throws(StorageError) in try await target.ingest(items, receivedAtMs: receivedAt) }
                tally(outcomes, ids: items.map { Data($0.idBytes).map { String(format: "%02x", $0) }.joined() },
                      what: "capture", into: &report, counter: \.captures)
            }
            if !page.items.isEmpty {
                let unreadable = seen - report.captures.copied
                log("captures: \(report.captures.copied) of \(total) copied (\(report.captures.new) new"
                    + (unreadable > 0 ? ", \(unreadable) unreadable in the source)" : ")"))
            }
        } while cursor != nil

        // The audit log, oldest first.
        var entries = try await Self.allAudit(source)
        entries.reverse()
        // Only what the target does not hold yet, by content (its ids may differ: the target's
        // own `db.migrate` records take ids the source uses later).
        let present = Set(try await Self.allAudit(target).map(\.content))
        let missing = entries.filter { !present.contains($0.content) }
        for chunk in Swift.stride(from: 0, to: missing.count, by: 1000).map({ Array(missing[$0..<min($0 + 1000, missing.count)]) }) {
            report.audit.new += try await storageCall { () throws(StorageError) in try await target.importAudit(chunk) }
        }
        report.audit.copied = entries.count
        log("audit entries: \(entries.count) (\(report.audit.new) new)")

        // Legal holds active now: without them the copy's retention could remove held captures.
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        let activeHolds = try await storageCall { () throws(StorageError) in try await source.holds(activeAtMs: nowMs) }
        let targetHolds = try await storageCall { () throws(StorageError) in try await target.holds(activeAtMs: nil) }
        for h in activeHolds where !targetHolds.contains(where: { Self.sameHold($0, h) }) {
            _ = try await storageCall { () throws(StorageError) in
                try await target.addHold(agent: h.agentID, untilMs: h.untilMs, reason: h.reason, createdBy: h.createdBy)
            }
            report.holds.new += 1
        }
        report.holds.copied = activeHolds.count
        log("legal holds active now: \(activeHolds.count) (\(report.holds.new) new)")

        try await verify(dekIDs: dekIDs, sampled: sampled, sourceCaptures: total, into: &report)
        _ = try await storageCall { () throws(StorageError) in
            try await target.appendAudit(actor: actor, action: "db.migrate",
                                         detail: "from=\(sourceName) source-id=\(sourceID) \(report.summary)")
        }
        return report
    }

    /// The same hold: agent, end, reason and who placed it (its id and placing time are the target's).
    static func sameHold(_ a: LegalHold, _ b: LegalHold) -> Bool {
        a.agentID == b.agentID && a.untilMs == b.untilMs && a.reason == b.reason && a.createdBy == b.createdBy
    }

    /// Every audit entry of `storage`, newest first.
    static func allAudit(_ storage: any CollectorStorage) async throws -> [AuditEntry] {
        var entries: [AuditEntry] = []
        var before: Int64?
        while true {
            let page = try await storageCall { () throws(StorageError) in try await storage.auditEntries(before: before, limit: 1000) }
            guard let last = page.last else { break }
            entries += page
            before = last.id
        }
        return entries
    }

    /// Checks, before anything is written, that source and target are two databases and that
    /// the target is empty or an earlier copy of this source (it holds a `db.migrate` record
    /// naming the source's identity, and only agents and KEK rows the source has, the same).
    /// A copy that began writes its `db.migrate` record first (``run()``), so an interrupted one
    /// is recognised too.
    /// - Returns: the source's identity (``TransferStore/identity()``), and whether the target
    ///   already holds a `db.migrate` record naming it.
    /// - Throws: `AdminError(.usage)` naming what the target holds.
    func preflight() async throws -> (sourceID: String, earlierCopy: Bool) {
        let sourceID = try await storageCall { () throws(StorageError) in try await source.identity() }
        let targetID = try await storageCall { () throws(StorageError) in try await target.identity() }
        guard sourceID != targetID else {
            throw AdminError(.usage, "--from and --to are the same database (\(sourceName), \(sourceID)): nothing to copy")
        }
        let counts = try await storageCall { () throws(StorageError) in try await target.counts() }
        let agents = try await storageCall { () throws(StorageError) in try await target.agentCredentials() }
        let keks = try await storageCall { () throws(StorageError) in try await target.keks() }
        let audit = try await Self.allAudit(target)
        let accounts = try await storageCall { () throws(StorageError) in try await target.admins() }
        let isEmpty = counts == (0, 0) && agents.isEmpty && keks.isEmpty && audit.isEmpty && accounts.isEmpty
        let earlierCopy = audit.contains { $0.action == "db.migrate" && $0.detail.contains("source-id=\(sourceID) ") }
        guard isEmpty || earlierCopy else {
            throw AdminError(.usage, "the target is not empty and is not an earlier copy of \(sourceName): it holds "
                             + "\(counted(counts.captures, "capture")), \(counted(agents.count, "agent")), \(counted(keks.count, "KEK row")), "
                             + "\(counted(accounts.count, "dashboard account")) and "
                             + "\(counted(audit.count, "audit entry", plural: "audit entries")); copy into an empty database")
        }
        // An earlier copy may have gained rows of its own since (agents added on the new
        // collector): those must not clash with the source's.
        let sourceAgents = try await storageCall { () throws(StorageError) in try await source.agentCredentials() }
        for a in agents {
            if let s = sourceAgents.first(where: { $0.id == a.id }), s.tokenHash != a.tokenHash {
                throw AdminError(.usage, "agent \(a.id) has another token in the target than in \(sourceName); nothing was copied")
            }
        }
        let sourceKEKs = try await storageCall { () throws(StorageError) in try await source.keks() }
        do { _ = try KEKRow.rowsToImport(sourceKEKs, existing: keks, context: "the target") } catch {
            throw AdminError(.usage, "\(error.message); nothing was copied")
        }
        // Nor may a dashboard account: credentials are never overwritten either way.
        let sourceAccounts = try await storageCall { () throws(StorageError) in try await source.admins() }
        for a in accounts {
            if let s = sourceAccounts.first(where: { $0.name == a.name }), !s.sameCredentials(as: a) {
                throw AdminError(.usage, "dashboard account \(a.name) has another role, password or TOTP secret in the target than in \(sourceName); nothing was copied")
            }
        }
        return (sourceID, earlierCopy)
    }

    /// Counts what ingest did; `conflict`, `otherAgent` and `unknownDEK` are problems.
    private func tally(_ outcomes: [IngestOutcome], ids: [String], what: String, into report: inout MigrationReport,
                       counter: WritableKeyPath<MigrationReport, (copied: Int, new: Int)>) {
        for (outcome, id) in zip(outcomes, ids) {
            report[keyPath: counter].copied += 1
            switch outcome {
            case .stored: report[keyPath: counter].new += 1
            case .duplicate: break
            case .conflict: report.problems.append("\(what) \(id): the target holds other bytes under this id")
            case .otherAgent: report.problems.append("\(what) \(id): the target holds this id for another agent")
            case .unknownDEK: report.problems.append("\(what) \(id): its DEK record is in neither database")
            }
        }
    }

    private func verify(dekIDs: [DEKID], sampled: [CaptureInfo], sourceCaptures: Int, into report: inout MigrationReport) async throws {
        func same<T: Equatable & Sendable>(_ what: String, _ read: (any CollectorStorage) async throws(StorageError) -> T) async throws {
            let a = try await storageCall { () throws(StorageError) in try await read(source) }
            let b = try await storageCall { () throws(StorageError) in try await read(target) }
            if a != b { report.problems.append("\(what) differ") }
        }
        try await same("the agents (ids and token hashes)") { s throws(StorageError) in try await s.agentCredentials() }
        let sourceKEKs = try await storageCall { () throws(StorageError) in try await source.keks() }
        let targetKEKs = try await storageCall { () throws(StorageError) in try await target.keks() }
        if sourceKEKs.count != targetKEKs.count || !zip(sourceKEKs, targetKEKs).allSatisfy({ $0.sameEntry(as: $1) }) {
            report.problems.append("the KEK rows differ (\(sourceKEKs.count) in the source, \(targetKEKs.count) in the target)")
        }
        let counts = try await storageCall { () throws(StorageError) in try await target.counts() }
        // The source counted again: a collector still writing to it makes it grow meanwhile.
        let now = try await storageCall { () throws(StorageError) in try await source.counts() }
        if now.captures > sourceCaptures && counts.captures < now.captures {
            report.problems.append("the source grew during the copy (\(sourceCaptures) captures at the start, \(now.captures) now, "
                                   + "\(counts.captures) copied): stop the collector writing to it, and run the copy again")
        } else if counts.captures != now.captures {
            report.problems.append("captures: \(now.captures) in the source, \(counts.captures) in the target")
        }
        if counts.deks != now.deks {
            report.problems.append("DEK records: \(now.deks) in the source, \(counts.deks) in the target")
        }
        let sourceAccounts = try await storageCall { () throws(StorageError) in try await source.admins() }
        let targetAccounts = try await storageCall { () throws(StorageError) in try await target.admins() }
        for a in sourceAccounts {
            guard let copy = targetAccounts.first(where: { $0.name == a.name }) else {
                report.problems.append("dashboard account \(a.name) is not in the target")
                continue
            }
            if !copy.sameCredentials(as: a) { report.problems.append("dashboard account \(a.name): its role, password or TOTP secret differ") }
        }
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        let sourceHolds = try await storageCall { () throws(StorageError) in try await source.holds(activeAtMs: nowMs) }
        let targetHolds = try await storageCall { () throws(StorageError) in try await target.holds(activeAtMs: nowMs) }
        for h in sourceHolds where !targetHolds.contains(where: { Self.sameHold($0, h) }) {
            report.problems.append("the legal hold on agent \(h.agentID) until \(OutputNaming.iso(h.untilMs)) is not in the target")
        }
        for id in dekIDs {
            let a = try await storageCall { () throws(StorageError) in try await source.dekRecord(id) }
            let b = try await storageCall { () throws(StorageError) in try await target.dekRecord(id) }
            if a != b { report.problems.append("DEK record \(id.hex): its bytes differ") }
        }
        for info in sampled {
            let copy = try await storageCall { () throws(StorageError) in try await target.capture(info.blobID) }
            if copy != info { report.problems.append("capture \(info.blobID.hex): its row differs") }
            let a: Data?
            do { a = try await source.blob(info.blobID) } catch where error.code == .corrupt {
                report.problems.append("capture \(info.blobID.hex): its blob bytes cannot be read in the source: \(error.message)")
                report.verifiedBlobs += 1
                continue
            } catch {
                throw AdminError.fromStorage(error)
            }
            let b = try await storageCall { () throws(StorageError) in try await target.blob(info.blobID) }
            if a == nil || a != b { report.problems.append("capture \(info.blobID.hex): its blob bytes differ") }
            report.verifiedBlobs += 1
        }
        log("verified: counts, \(counted(sourceAccounts.count, "dashboard account")), \(counted(dekIDs.count, "DEK record")) and \(counted(sampled.count, "sampled capture")) "
            + (report.problems.isEmpty ? "match" : "DO NOT match"))
    }
}
