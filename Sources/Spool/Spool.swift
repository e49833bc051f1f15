import CustosBase
import Foundation
import GRDB
import Logging
import Synchronization

/// A durable, bounded SQLite queue of opaque sealed records (docs/SPOOL.md).
///
/// - Storage: `<directory>/spool.db` with its `-wal` and `-shm`, directory 0700, files 0600,
///   WAL journal, `synchronous=FULL` (an `enqueue` that returned survives a process kill
///   and a power cut), `auto_vacuum=INCREMENTAL`, GRDB on the system SQLite.
/// - Cap: database + WAL stay under `maxBytes` (and under what the filesystem can still
///   hold). When full, the oldest screen frames are evicted first, then generic records,
///   then keystroke chunks; DEK records are never evicted. A record of a group of pictures
///   (``SpoolEntry/group``) is evicted with its whole group, so what remains always decodes.
///   Evictions are counted by kind in the database and logged once per burst.
/// - One writer: a read-write `Spool` holds an exclusive `flock(2)` on `spool.lock`, so
///   leases left behind by a dead process are reclaimed when the next one opens.
///
/// Thread-safe: every method may be called from any thread; database work is serialised
/// by one GRDB `DatabaseQueue`. Methods block the calling thread (at most the busy timeout
/// while another process holds a lock).
public final class Spool: Sendable {
    /// The directory holding `spool.db`.
    public let directory: String
    /// The configured byte cap for database + WAL (bytes).
    public let maxBytes: Int64
    /// Whether this spool was opened with `openReadOnly`.
    public let isReadOnly: Bool

    let files: SpoolFiles
    let logger: Logger
    let dbQueue: DatabaseQueue
    let busyTimeoutMs: Int
    let owner: String
    let pageSize: Int64
    let mutable: Mutex<MutableState>

    struct MutableState: Sendable {
        var lockFD: Int32
        var closed = false
        /// Rejections and drops not yet written to the counter table (written with the next write).
        var pending = PendingCounters()
        var evictionBurst: Burst?
        var rejectionBurst: Burst?
        var diskFullBurst: Burst?
        var brokenGroupBurst: Burst?
        /// Groups of pictures that lost a record. Checked inside the enqueue transaction and
        /// added to by evictions under the database queue, so a check and the insert it guards
        /// cannot interleave with another thread's eviction.
        var brokenGroups = BrokenGroups()
    }

    /// Evictions (or refusals, or disk-full errors) less than this apart form one burst,
    /// which is logged once when it starts and summarised when the next one starts or at close.
    static let burstGap: Duration = .seconds(60)

    struct Burst: Sendable {
        var count = 0
        var bytes: Int64 = 0
        var last: ContinuousClock.Instant

        /// Adds to `burst`; returns whether this starts a new burst and the totals of the burst it replaces.
        static func note(_ burst: inout Burst?, count: Int, bytes: Int64) -> (starts: Bool, previous: Burst?) {
            let now = ContinuousClock.now
            if var current = burst, now - current.last < Spool.burstGap {
                current.count += count
                current.bytes += bytes
                current.last = now
                burst = current
                return (false, nil)
            }
            let previous = burst
            burst = Burst(count: count, bytes: bytes, last: now)
            return (true, previous)
        }
    }

    /// The smallest cap accepted (bytes): room for the schema, a WAL and a few records.
    public static let minimumMaxBytes: Int64 = 512 * 1024
    /// Free space left on the filesystem for others (bytes).
    static let diskReserve: Int64 = 64 * 1024

    // MARK: - Opening

    /// Opens (creating if needed) the spool in `directory` for reading and writing.
    ///
    /// Creates the directory with mode 0700 and the database file with mode 0600, runs
    /// `PRAGMA quick_check`, and moves a corrupt database, a foreign SQLite file or a
    /// database from a newer release aside (`spool.db.<reason>-<UTC time>`, kept for
    /// forensics, logged at error level) before creating a fresh one. Leases held by a
    /// previous (dead) process are released.
    ///
    /// - Parameters:
    ///   - directory: the spool directory (config `spool-dir`).
    ///   - maxBytes: cap in bytes for database + WAL (config `spool-max-mb` × 1,048,576), at least `minimumMaxBytes`.
    ///   - logger: where evictions, corruption and disk-full are reported (never payload bytes).
    ///   - busyTimeout: how long a write waits for another process's lock before failing with `.busy`.
    /// - Throws: `SpoolError` `.alreadyOpen` (another writer holds the directory), `.io`
    ///   (directory/permissions), `.busy`, `.corrupt` (a fresh database could not be made), `.sqlite`.
    public init(directory: String, maxBytes: Int64, logger: Logger, busyTimeout: Duration = .seconds(5)) throws {
        guard maxBytes >= Self.minimumMaxBytes else {
            throw SpoolError(.invalidEntry, "spool cap \(maxBytes) bytes is below the minimum \(Self.minimumMaxBytes) bytes")
        }
        let files = SpoolFiles(directory: directory)
        try files.createDirectory()
        let lockFD = try files.lockWriter()
        var logger = logger
        logger[metadataKey: "spool.dir"] = "\(directory)"
        let busyMs = Int(Self.ms(busyTimeout))
        do {
            try files.prepareFiles()
            let queue = try Self.openValidated(files: files, maxBytes: maxBytes, busyTimeoutMs: busyMs, logger: logger)
            self.dbQueue = queue
            self.pageSize = try queue.read { db in try Int64.fetchOne(db, sql: "PRAGMA page_size") ?? 4096 }
        } catch {
            Glibc.close(lockFD)
            throw error
        }
        self.directory = directory
        self.maxBytes = maxBytes
        self.isReadOnly = false
        self.files = files
        self.logger = logger
        self.busyTimeoutMs = busyMs
        self.owner = UUID().uuidString
        self.mutable = Mutex(MutableState(lockFD: lockFD))
        do {
            try startUp()
        } catch {
            try? dbQueue.close()
            Glibc.close(lockFD)
            throw error
        }
    }

    /// Opens an existing spool read-only (for `custos-agent status` from another process):
    /// only `stats()` and `state(_:)` work; writes throw `.readOnly`. Takes no lock and
    /// changes nothing on disk.
    /// - Throws: `SpoolError` `.notFound`, `.corrupt` (not a Custos spool), `.busy`, `.sqlite`.
    public static func openReadOnly(directory: String) throws -> Spool {
        try Spool(readOnlyDirectory: directory)
    }

    private init(readOnlyDirectory directory: String) throws {
        let files = SpoolFiles(directory: directory)
        guard FileManager.default.fileExists(atPath: files.databasePath) else {
            throw SpoolError(.notFound, "no spool database at \(files.databasePath)")
        }
        var config = Configuration()
        config.readonly = true
        config.busyMode = .timeout(5)
        config.label = "custos.spool.readonly"
        let queue = try Self.mapErrors(files) { try DatabaseQueue(path: files.databasePath, configuration: config) }
        let (appID, maxBytes, pageSize) = try Self.mapErrors(files) {
            try queue.read { db in
                (try Int32.fetchOne(db, sql: "PRAGMA application_id") ?? 0,
                 try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'max-bytes'").flatMap { Int64($0) } ?? 0,
                 try Int64.fetchOne(db, sql: "PRAGMA page_size") ?? 4096)
            }
        }
        guard appID == SpoolSchema.applicationID else {
            throw SpoolError(.corrupt, "\(files.databasePath) is not a Custos spool (application_id \(appID))")
        }
        self.directory = directory
        self.maxBytes = maxBytes
        self.isReadOnly = true
        self.files = files
        self.logger = Logger(label: "custos.spool.readonly", factory: { _ in SwiftLogNoOpLogHandler() })
        self.dbQueue = queue
        self.busyTimeoutMs = 5000
        self.owner = ""
        self.pageSize = pageSize
        self.mutable = Mutex(MutableState(lockFD: -1))
    }

    /// Opens the database, checks it is a healthy Custos spool, migrates it; on a corrupt,
    /// foreign or newer database, moves it aside once and starts a fresh one.
    private static func openValidated(files: SpoolFiles, maxBytes: Int64, busyTimeoutMs: Int,
                                      logger: Logger) throws -> DatabaseQueue {
        var attempt = 0
        while true {
            attempt += 1
            let problem: String
            do {
                // Check through a read-only connection first, so a file that is moved aside
                // is kept exactly as it was (the spool's pragmas would rewrite its header).
                var reason: String?
                if SpoolFiles.size(files.databasePath) > 0 {
                    var config = Configuration()
                    config.readonly = true
                    config.busyMode = .timeout(TimeInterval(busyTimeoutMs) / 1000)
                    let probe = try DatabaseQueue(path: files.databasePath, configuration: config)
                    reason = try validate(probe)
                    try probe.close()
                }
                if let reason {
                    problem = reason
                } else {
                    let queue = try openQueue(files: files, maxBytes: maxBytes, busyTimeoutMs: busyTimeoutMs)
                    try SpoolSchema.migrator.migrate(queue)
                    return queue
                }
            } catch let error as DatabaseError
                        where [.SQLITE_CORRUPT, .SQLITE_NOTADB, .SQLITE_FORMAT].contains(error.resultCode) {
                problem = "corrupt"
                logger.debug("spool database failed to open", metadata: ["spool.sqlite_code": "\(error.resultCode.rawValue)"])
            } catch let error as DatabaseError {
                throw mapError(error, files: files)
            }
            guard attempt == 1 else {
                throw SpoolError(.corrupt, "fresh spool database \(files.databasePath) is still unusable (\(problem))")
            }
            let aside = try files.moveAside(reason: problem)
            logger.error("spool database was \(problem); moved aside and starting a new one",
                         metadata: ["spool.db": "\(files.databasePath)", "spool.moved_to": "\(aside)"])
            try files.prepareFiles()
        }
    }

    /// Opens the connection with the spool's settings (docs/SPOOL.md "Pragmas"): WAL,
    /// `synchronous=FULL`, incremental auto-vacuum, an automatic (passive) checkpoint every
    /// quarter of the WAL share, and `journal_size_limit` at that quarter so the WAL file is
    /// reused (not regrown) between checkpoints.
    private static func openQueue(files: SpoolFiles, maxBytes: Int64, busyTimeoutMs: Int) throws -> DatabaseQueue {
        var config = Configuration()
        config.busyMode = .timeout(TimeInterval(busyTimeoutMs) / 1000)
        config.label = "custos.spool"
        let walQuarter = walShare(of: maxBytes) / 4
        config.prepareDatabase { db in
            // auto_vacuum only takes effect on a database without tables (a new spool).
            try db.execute(sql: """
                PRAGMA auto_vacuum = INCREMENTAL;
                PRAGMA journal_mode = WAL;
                PRAGMA synchronous = FULL;
                PRAGMA journal_size_limit = \(walQuarter);
                """)
            let pageSize = try Int64.fetchOne(db, sql: "PRAGMA page_size") ?? 4096
            try db.execute(sql: "PRAGMA wal_autocheckpoint = \(max(16, walQuarter / pageSize))")
        }
        return try DatabaseQueue(path: files.databasePath, configuration: config)
    }

    /// Returns why the database must be moved aside, or nil when it is a healthy Custos spool
    /// (or a new, empty database).
    private static func validate(_ queue: DatabaseQueue) throws -> String? {
        try queue.read { db -> String? in
            let check = try String.fetchAll(db, sql: "PRAGMA quick_check")
            guard check == ["ok"] else { return "corrupt" }
            let appID = try Int32.fetchOne(db, sql: "PRAGMA application_id") ?? 0
            let tables = try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_master") ?? 0
            if appID == 0 && tables == 0 { return nil }  // new database
            guard appID == SpoolSchema.applicationID else { return "foreign" }
            if try SpoolSchema.migrator.hasBeenSuperseded(db) { return "newer" }
            return nil
        }
    }

    /// After opening: records the cap, reclaims leases of dead processes, enforces the cap
    /// (it may have been lowered), and truncates the WAL.
    private func startUp() throws {
        let budget = self.budget()
        let reclaimed = try writeTransaction { db -> Int in
            try db.execute(sql: "INSERT INTO meta(key, value) VALUES ('max-bytes', ?) "
                           + "ON CONFLICT(key) DO UPDATE SET value = excluded.value", arguments: ["\(maxBytes)"])
            try db.execute(sql: "UPDATE record SET lease_owner = NULL, lease_until_ms = 0 WHERE lease_owner IS NOT NULL")
            let reclaimed = db.changesCount
            var evicted: [SpoolKind: SpoolCount] = [:]
            var groups = Set<Int64>()
            _ = try evict(db, kinds: SpoolKind.dekRecord.evictable, sparing: nil, needPages: 0,
                          budgetPages: budget.dataPages, evicted: &evicted, groups: &groups)
            try addCounters(db, evicted: evicted, rejected: PendingCounters())
            markBroken(groups)
            logEvictions(evicted)
            let pages = try Int64.fetchOne(db, sql: "PRAGMA page_count") ?? 0
            if pages > budget.dataPages {
                try db.execute(sql: "PRAGMA incremental_vacuum(\(pages - budget.dataPages))")
            }
            return reclaimed
        }
        if reclaimed > 0 {
            logger.notice("spool reclaimed leases left by a previous process", metadata: ["spool.leases": "\(reclaimed)"])
        }
        checkpoint()
    }

    // MARK: - Budget

    struct Budget {
        /// Effective cap for database + WAL (bytes): `maxBytes`, or less when the disk is fuller.
        var total: Int64
        /// Part of `total` for the WAL (bytes).
        var wal: Int64
        /// Database pages allowed (`(total - wal) / page_size`).
        var dataPages: Int64
    }

    static func walShare(of total: Int64) -> Int64 {
        min(max(total / 4, 128 * 1024), 16 * 1024 * 1024, total / 2)
    }

    /// The budget under `maxBytes` and under what the filesystem can hold (the files we
    /// already own plus the free space, minus a reserve).
    func budget() -> Budget {
        var total = maxBytes
        if let available = files.availableBytes {
            let ownable = available + files.databaseBytes + files.walBytes - Self.diskReserve
            total = min(total, max(0, ownable))
        }
        let wal = Self.walShare(of: total)
        return Budget(total: total, wal: wal, dataPages: max(0, total - wal) / pageSize)
    }

    /// Database pages a record with `payloadBytes` of payload may take: the row and its
    /// overflow chain, plus index and b-tree splits.
    func pagesNeeded(_ payloadBytes: Int) -> Int64 {
        (Int64(payloadBytes) + 160) / (pageSize - 8) + 4
    }

    /// The largest payload (bytes) a spool capped at `maxBytes` accepts: one record may take at
    /// most half the data budget and half the WAL share; a larger one is refused `.tooLarge`
    /// (and counted as dropped). `pageSize` is SQLite's page size (4096 by default).
    public static func largestRecord(maxBytes: Int64, pageSize: Int64 = 4096) -> Int {
        let capWal = walShare(of: maxBytes)
        let byWal = (capWal / 2 - 32) / (pageSize + 24) - 12
        let byData = (maxBytes - capWal) / pageSize / 2
        let pages = min(byWal, byData)
        return max(0, Int((pages - 3) * (pageSize - 8) - 161))
    }

    /// WAL bytes one write transaction of `pages` new pages may append (frames are a page
    /// plus a 24-byte header; a few more pages for b-tree, freelist and pointer-map updates).
    func walBytesFor(pages: Int64) -> Int64 {
        (pages + 12) * (pageSize + 24) + 32
    }

    // MARK: - Enqueue

    private struct Rejected: Error {
        var reason: String
    }

    /// Thrown inside the enqueue transaction when the record's group is broken.
    private struct GroupBroken: Error {}

    /// Stores `entry`; returns only once it is durable (committed with `synchronous=FULL`).
    ///
    /// Enqueueing an id that is already spooled is a no-op. When the cap (or the disk) is
    /// reached, older records are evicted per the policy; if nothing may be evicted for
    /// this kind, the entry is refused.
    ///
    /// Groups of pictures (``SpoolEntry/group``, docs/SPOOL.md): a record evicted takes every
    /// record of its group still spooled with it (leased ones too); the groups so evicted are
    /// returned. A record never evicts its own group: when only its own group stands in the way
    /// it is refused `.full`. A record of a group that already lost a record during this spool's
    /// life (evicted, quarantined, or an earlier enqueue of the group threw, whatever the error)
    /// is refused `.groupBroken` and counted as dropped (`group-broken`). Whenever this call
    /// throws, the record's group is broken from then on.
    /// - Returns: the groups evicted by this call (usually none); callers that store no video
    ///   packets may ignore it.
    /// - Throws: `SpoolError` `.invalidEntry` (id or DEK id not 16 bytes, empty payload, a DEK
    ///   record with a group, a kind other than that of the group's spooled records), `.tooLarge`,
    ///   `.full` (nothing evictable, or a reader pins the WAL), `.diskFull` (ENOSPC even after
    ///   eviction), `.groupBroken`, `.busy` (another process held the lock past the busy
    ///   timeout), `.readOnly`, `.closed`, `.sqlite`.
    @discardableResult
    public func enqueue(_ entry: SpoolEntry) throws -> SpoolEnqueueResult {
        try checkWritable()
        do {
            return try store(entry)
        } catch {
            if let group = entry.group {
                // The stream lacks this packet now: what follows it in its group cannot decode.
                mutable.withLock { $0.brokenGroups.insert(group) }
            }
            throw error
        }
    }

    private func store(_ entry: SpoolEntry) throws -> SpoolEnqueueResult {
        guard entry.id.count == 16 else {
            throw SpoolError(.invalidEntry, "record id must be 16 bytes, got \(entry.id.count)")
        }
        guard entry.dekID.count == 16 else {
            throw SpoolError(.invalidEntry, "DEK id of record \(entry.id.spoolHex) must be 16 bytes, got \(entry.dekID.count)")
        }
        guard !entry.payload.isEmpty else {
            throw SpoolError(.invalidEntry, "record \(entry.id.spoolHex) has an empty payload")
        }
        if let group = entry.group, entry.kind == .dekRecord {
            throw SpoolError(.invalidEntry, "DEK record \(entry.id.spoolHex) has a group of pictures (\(group.groupHex)); "
                             + "only video packets belong to one")
        }
        let need = pagesNeeded(entry.payload.count)
        if entry.payload.count > Self.largestRecord(maxBytes: maxBytes, pageSize: pageSize) {
            countDropped(.tooLarge, bytes: Int64(entry.payload.count))
            throw SpoolError(.tooLarge, "record \(entry.id.spoolHex) of \(entry.payload.count) bytes cannot fit "
                             + "in a spool capped at \(maxBytes) bytes (largest record: \(Self.largestRecord(maxBytes: maxBytes)) bytes)")
        }
        do {
            return try enqueueOnce(entry, need: need)
        } catch let error as DatabaseError where error.resultCode == .SQLITE_FULL {
            // The filesystem filled up under us: SQLite rolled the transaction back.
            // Free the WAL's blocks, then try once more with a budget that sees the full disk.
            logger.debug("SQLite reported SQLITE_FULL; retrying once", metadata: ["spool.id": "\(entry.id.spoolHex)"])
            logDiskFull()
            checkpoint()
            do {
                return try enqueueOnce(entry, need: need)
            } catch let error as DatabaseError {
                throw Self.mapError(error, files: files, id: entry.id)
            }
        } catch let error as DatabaseError {
            throw Self.mapError(error, files: files, id: entry.id)
        }
    }

    private func enqueueOnce(_ entry: SpoolEntry, need: Int64) throws -> SpoolEnqueueResult {
        let budget = self.budget()
        let walNeed = walBytesFor(pages: need)
        if files.walBytes + walNeed > budget.wal {
            checkpoint()
            let wal = files.walBytes
            if wal + walNeed > budget.wal {
                if budget.total < maxBytes {
                    let reason = "the filesystem holding \(files.directory) has \(files.availableBytes ?? 0) bytes free; "
                        + "the WAL (\(wal) bytes) cannot take \(walNeed) more bytes"
                    logDiskFull()
                    recordRejection(entry, reason: reason, code: .diskFull)
                    throw SpoolError(.diskFull, "record \(entry.id.spoolHex) (\(entry.kind.rawValue)) refused: \(reason)")
                }
                let reason = "WAL \(files.walPath) is \(wal) bytes and cannot be checkpointed (a reader holds a "
                    + "transaction open); adding \(walNeed) bytes would pass its share of \(budget.wal) bytes"
                recordRejection(entry, reason: reason, code: .full)
                throw SpoolError(.full, "record \(entry.id.spoolHex) (\(entry.kind.rawValue)) refused: \(reason)")
            }
        }
        let pending = mutable.withLock { state in
            let p = state.pending
            state.pending = PendingCounters()
            return p
        }
        var evicted: [SpoolKind: SpoolCount] = [:]
        let evictedGroups: Set<Int64>
        do {
            evictedGroups = try writeTransaction({ db -> Set<Int64> in
                evicted = [:]
                var groups = Set<Int64>()
                if let group = entry.group {
                    // Checked under the database queue, so no other enqueue's eviction can come in between.
                    if mutable.withLock({ $0.brokenGroups.contains(group) }) { throw GroupBroken() }
                    if let kind = try String.fetchOne(db.cachedStatement(sql: "SELECT kind FROM record WHERE grp = ? LIMIT 1"),
                                                      arguments: [group]), kind != entry.kind.rawValue {
                        throw SpoolError(.invalidEntry, "record \(entry.id.spoolHex) (\(entry.kind.rawValue)) of group "
                                         + "\(group.groupHex) refused: the group's spooled records are of kind "
                                         + "\(SafeText.quoted(kind)); every record of a group must have the same kind")
                    }
                }
                let pages = try Int64.fetchOne(db.cachedStatement(sql: "PRAGMA page_count")) ?? 0
                let free = try Int64.fetchOne(db.cachedStatement(sql: "PRAGMA freelist_count")) ?? 0
                if pages - free + need > budget.dataPages,
                   try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM record WHERE id = ?"),
                                     arguments: [entry.id]) == true {
                    return []  // already spooled: nothing to evict for it
                }
                guard try evict(db, kinds: entry.kind.evictable, sparing: entry.group, needPages: need,
                                budgetPages: budget.dataPages, evicted: &evicted, groups: &groups) else {
                    let own = entry.group.map { " (records of its own group \($0.groupHex) are not evicted for it)" } ?? ""
                    throw Rejected(reason: "the spool holds \(budget.dataPages) pages of data under its cap of "
                                   + "\(budget.total) bytes and no \(entry.kind.evictable.map(\.rawValue)) record "
                                   + "is left to evict" + own)
                }
                try db.cachedStatement(sql: """
                    INSERT INTO record(id, kind, priority, dek_id, capture_ms, size, payload, grp)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING
                    """).execute(arguments: [entry.id, entry.kind.rawValue, entry.kind.priority, entry.dekID,
                                             entry.captureTimeMs, entry.payload.count, entry.payload, entry.group])
                try addCounters(db, evicted: evicted, rejected: pending)
                return groups
            }, committed: markBroken)
        } catch is GroupBroken {
            restorePending(pending)
            let group = entry.group ?? 0
            let reason = "an earlier record of group \(group.groupHex) was evicted or could not be stored, so this one "
                + "could not be decoded; start a new group with a keyframe"
            recordRejection(entry, reason: reason, code: .groupBroken)
            throw SpoolError(.groupBroken, "record \(entry.id.spoolHex) (\(entry.kind.rawValue)) refused: \(reason)")
        } catch let rejected as Rejected {
            restorePending(pending)
            if budget.total < maxBytes {
                // The filesystem, not the cap, is the limit.
                let reason = "the filesystem holding \(files.directory) has \(files.availableBytes ?? 0) bytes free "
                    + "and the spool's files use \(files.databaseBytes + files.walBytes) bytes; no "
                    + "\(entry.kind.evictable.map(\.rawValue)) record is left to evict"
                logDiskFull()
                recordRejection(entry, reason: reason, code: .diskFull)
                throw SpoolError(.diskFull, "record \(entry.id.spoolHex) (\(entry.kind.rawValue)) refused: \(reason)")
            }
            recordRejection(entry, reason: rejected.reason, code: .full)
            throw SpoolError(.full, "record \(entry.id.spoolHex) (\(entry.kind.rawValue)) refused: \(rejected.reason)")
        } catch {
            restorePending(pending)
            throw error
        }
        logEvictions(evicted)
        endRefusals()
        maybeCheckpoint()
        return SpoolEnqueueResult(evictedGroups: evictedGroups)
    }

    /// Remembers groups that lost records (call under the database queue: inside a write
    /// transaction, or after its commit).
    private func markBroken(_ groups: Set<Int64>) {
        guard !groups.isEmpty else { return }
        mutable.withLock { state in
            for group in groups { state.brokenGroups.insert(group) }
        }
    }

    /// Evicts oldest records of `kinds` (in that order) until `needPages` more pages fit in
    /// `budgetPages`. Never touches DEK records. A victim with a group takes every record of its
    /// group with it (added to `groups`); records of group `sparing` are never victims. Adds
    /// what it deleted to `evicted`. Returns whether the pages fit.
    private func evict(_ db: Database, kinds: [SpoolKind], sparing: Int64?, needPages: Int64, budgetPages: Int64,
                       evicted: inout [SpoolKind: SpoolCount], groups: inout Set<Int64>) throws -> Bool {
        func usedPages() throws -> Int64 {
            let pages = try Int64.fetchOne(db.cachedStatement(sql: "PRAGMA page_count")) ?? 0
            let free = try Int64.fetchOne(db.cachedStatement(sql: "PRAGMA freelist_count")) ?? 0
            return pages - free
        }
        var deficit = try usedPages() + needPages - budgetPages
        if deficit <= 0 { return true }
        for kind in kinds where kind != .dekRecord {
            while deficit > 0 {
                var freed: Int64 = 0
                var deleted = false
                // `grp IS NOT NULL` when nothing is spared: every row qualifies.
                let rows = try Row.fetchAll(db.cachedStatement(sql: """
                    SELECT seq, size, grp FROM record WHERE priority = ? AND (grp IS NULL OR grp IS NOT ?)
                    ORDER BY capture_ms, seq LIMIT 64
                    """), arguments: [kind.priority, sparing])
                for row in rows where freed < deficit {
                    if let group = Int64.fromDatabaseValue(row["grp"] as DatabaseValue) {
                        guard groups.insert(group).inserted else { continue }  // went with its group already
                        freed += try evictGroup(db, group, after: nil, fallbackKind: kind, evicted: &evicted)
                    } else {
                        let size = Int64.fromDatabaseValue(row["size"] as DatabaseValue) ?? 0
                        try db.cachedStatement(sql: "DELETE FROM record WHERE seq = ?").execute(arguments: [row["seq"] as Int64])
                        evicted[kind, default: SpoolCount()].count += 1
                        evicted[kind, default: SpoolCount()].bytes += size
                        freed += pagesNeeded(Int(clamping: size)) - 3
                    }
                    deleted = true
                }
                if !deleted { break }
                deficit = try usedPages() + needPages - budgetPages
            }
            if deficit <= 0 { return true }
        }
        return deficit <= 0
    }

    /// Deletes the records of `group` (only those enqueued after row `after` when given),
    /// never a DEK record, adding them to `evicted` by kind. Returns the pages that frees (an estimate).
    private func evictGroup(_ db: Database, _ group: Int64, after: Int64?, fallbackKind: SpoolKind,
                            evicted: inout [SpoolKind: SpoolCount]) throws -> Int64 {
        let from = after ?? Int64.min
        let members = try Row.fetchAll(db.cachedStatement(sql: """
            SELECT kind, size FROM record WHERE grp = ? AND seq > ? AND priority > 0
            """), arguments: [group, from])
        try db.cachedStatement(sql: "DELETE FROM record WHERE grp = ? AND seq > ? AND priority > 0")
            .execute(arguments: [group, from])
        var freed: Int64 = 0
        for member in members {
            let kind = String.fromDatabaseValue(member["kind"] as DatabaseValue).flatMap(SpoolKind.init(rawValue:)) ?? fallbackKind
            let size = Int64.fromDatabaseValue(member["size"] as DatabaseValue) ?? 0
            evicted[kind, default: SpoolCount()].count += 1
            evicted[kind, default: SpoolCount()].bytes += size
            freed += pagesNeeded(Int(clamping: size)) - 3
        }
        return freed
    }

    // MARK: - Upload side

    /// Leases up to `maxItems` records (and about `maxBytes` payload bytes; the first record
    /// is always included, however large) for upload.
    ///
    /// Order: by kind priority (DEK records, keystrokes, activity, generic, screen), then oldest
    /// capture time first. Only records whose next attempt time has come and that are not
    /// leased (or whose lease expired) are returned. A blob whose DEK record is still spooled
    /// is returned only in the same batch as (and after) that DEK record. Rows that fail to
    /// parse are moved to the quarantine table and counted.
    /// - Parameters:
    ///   - leaseDuration: after this the records may be leased again if not acked or released.
    ///   - now: the clock (injectable for tests).
    /// - Throws: `SpoolError` `.full` (the WAL is at its share and a reader pins it),
    ///   `.busy`, `.readOnly`, `.closed`, `.sqlite`.
    public func lease(maxItems: Int, maxBytes: Int, leaseDuration: Duration = .seconds(60),
                      now: Date = Date()) throws -> [SpoolEntry] {
        try checkWritable()
        guard maxItems > 0 else { return [] }
        // Marking a record leased rewrites its row, overflow pages included (the row changes
        // size), so a lease appends about its payload bytes to the WAL. Keep one lease within
        // half the WAL share (the first record always fits: enqueue refuses larger ones).
        let share = budget().wal
        let maxBytes = min(maxBytes, Int(share / 2))
        try checkWALRoom("lease of up to \(maxItems) records (\(maxBytes) bytes)",
                         pages: rowPages(payloadBytes: Int64(maxBytes), rows: maxItems), share: share)
        let nowMs = Self.ms(now)
        let untilMs = nowMs + Self.ms(leaseDuration)
        var quarantined: [(seq: Int64, reason: String, group: Int64?)] = []
        var evicted: [SpoolKind: SpoolCount] = [:]
        let (entries, _) = try mapped {
            try writeTransaction({ db -> ([SpoolEntry], Set<Int64>) in
                quarantined = []
                evicted = [:]
                let spooledDEKs = try Set(Data.fetchAll(db, sql: "SELECT id FROM record WHERE priority = 0"))
                var batchDEKs = Set<Data>()
                var chosen: [(seq: Int64, entry: SpoolEntry)] = []
                var bytes = 0
                let cursor = try Row.fetchCursor(db, sql: """
                    SELECT seq, id, CASE typeof(kind) WHEN 'text' THEN kind END AS kind, dek_id, capture_ms,
                           attempts, size, CASE typeof(grp) WHEN 'integer' THEN grp END AS grp,
                           typeof(id) = 'blob' AND typeof(dek_id) = 'blob' AND typeof(payload) = 'blob'
                               AND typeof(size) = 'integer' AND typeof(capture_ms) = 'integer'
                               AND typeof(attempts) = 'integer' AND length(payload) = size
                               AND typeof(grp) IN ('integer', 'null') AS well_formed
                    FROM record
                    WHERE next_attempt_ms <= ? AND lease_until_ms <= ?
                    ORDER BY priority, capture_ms, seq
                    """, arguments: [nowMs, nowMs])
                while chosen.count < maxItems, let row = try cursor.next() {
                    let seq: Int64 = row["seq"]
                    let kindText = String.fromDatabaseValue(row["kind"] as DatabaseValue)
                    let wellFormed: Bool = row["well_formed"] ?? false
                    let id: Data? = wellFormed ? row["id"] : nil
                    let dekID: Data? = wellFormed ? row["dek_id"] : nil
                    let group: Int64? = row["grp"]
                    guard wellFormed, let kind = kindText.flatMap(SpoolKind.init(rawValue:)),
                          let id, id.count == 16, let dekID, dekID.count == 16 else {
                        quarantined.append((seq, Self.malformedReason(row), group))
                        continue
                    }
                    let size: Int = row["size"]
                    if kind != .dekRecord && spooledDEKs.contains(dekID) && !batchDEKs.contains(dekID) {
                        continue  // its DEK record must go first
                    }
                    if !chosen.isEmpty && bytes + size > maxBytes { break }
                    var entry = SpoolEntry(id: id, kind: kind, dekID: dekID, captureTimeMs: row["capture_ms"],
                                           payload: Data(), group: group)
                    entry.attempts = row["attempts"]
                    chosen.append((seq, entry))
                    bytes += size
                    if kind == .dekRecord { batchDEKs.insert(id) }
                }
                // A quarantined packet breaks its group: the group's records enqueued after it could
                // not be decoded, so they are evicted (the ones before it still decode and stay).
                var cuts: [Int64: Int64] = [:]  // group -> seq of its first quarantined record
                for q in quarantined {
                    if let group = q.group { cuts[group] = min(cuts[group] ?? q.seq, q.seq) }
                }
                chosen.removeAll { c in c.entry.group.flatMap { cuts[$0] }.map { c.seq > $0 } ?? false }
                for (seq, reason, _) in quarantined {
                    try db.execute(sql: """
                        INSERT INTO quarantine(id, kind, size, reason, quarantined_ms)
                        SELECT CASE typeof(id) WHEN 'blob' THEN id ELSE NULL END,
                               CAST(kind AS TEXT), length(payload), ?, ? FROM record WHERE seq = ?
                        """, arguments: [reason, nowMs, seq])
                    try db.execute(sql: "DELETE FROM record WHERE seq = ?", arguments: [seq])
                }
                if !quarantined.isEmpty {
                    try bump(db, SpoolSchema.quarantined, by: Int64(quarantined.count))
                    try db.execute(sql: "DELETE FROM quarantine WHERE seq <= (SELECT max(seq) - 1000 FROM quarantine)")
                }
                for (group, seq) in cuts {
                    _ = try evictGroup(db, group, after: seq, fallbackKind: .screen, evicted: &evicted)
                }
                try addCounters(db, evicted: evicted, rejected: PendingCounters())
                var result: [SpoolEntry] = []
                for (seq, var entry) in chosen {
                    entry.payload = try Data.fetchOne(db.cachedStatement(sql: "SELECT payload FROM record WHERE seq = ?"),
                                                      arguments: [seq]) ?? Data()
                    try db.cachedStatement(sql: "UPDATE record SET lease_owner = ?, lease_until_ms = ? WHERE seq = ?")
                        .execute(arguments: [owner, untilMs, seq])
                    result.append(entry)
                }
                return (result, Set(cuts.keys))
            }, committed: { markBroken($0.1) })
        }
        if !quarantined.isEmpty {
            logger.error("spool quarantined rows that failed to parse",
                         metadata: ["spool.rows": "\(quarantined.count)",
                                    "spool.reason": "\(quarantined[0].reason)"])
        }
        logEvictions(evicted)
        maybeCheckpoint()
        return entries
    }

    private static func malformedReason(_ row: Row) -> String {
        let kind = String.fromDatabaseValue(row["kind"] as DatabaseValue)
        if kind.flatMap(SpoolKind.init(rawValue:)) == nil { return "unknown kind" }
        if (row["well_formed"] as Bool?) != true { return "column types or payload length do not match the schema" }
        return "id or DEK id is not 16 bytes"
    }

    /// Deletes the records with these ids (the collector has stored them). Unknown ids are
    /// ignored (already acked or evicted). Refused (nothing deleted) while the WAL is at its
    /// share and a reader pins it: the records stay leased, and once the lease expires they
    /// are uploaded again, which the collector acknowledges without storing them twice.
    /// - Throws: `SpoolError` `.full` (WAL pinned), `.busy`, `.readOnly`, `.closed`, `.sqlite`.
    public func ack(_ ids: [Data]) throws {
        try checkWritable()
        guard !ids.isEmpty else { return }
        try checkWALRoom("ack of \(ids.count) records", pages: 3 * Int64(ids.count) + 4)
        let pending = mutable.withLock { state in
            let p = state.pending
            state.pending = PendingCounters()
            return p
        }
        do {
            try mapped {
                try writeTransaction { db in
                    let delete = try db.cachedStatement(sql: "DELETE FROM record WHERE id = ?")
                    for id in ids { try delete.execute(arguments: [id]) }
                    try addCounters(db, evicted: [:], rejected: pending)
                }
            }
        } catch {
            restorePending(pending)
            throw error
        }
        maybeCheckpoint()
    }

    /// Base delay of the exponential backoff (doubled per attempt) and its cap.
    public static let backoffBase: Duration = .seconds(1)
    public static let backoffCap: Duration = .seconds(300)
    /// The release backoff: CustosBase's one jittered exponential schedule (jitter ½…1).
    static let backoff = Backoff(initial: backoffBase, cap: backoffCap)

    /// Puts leased records back for a later attempt: `attempts` += 1 and the next attempt at
    /// `now + retryAfter` when given (e.g. the collector's `Retry-After`), else after an
    /// exponential backoff `min(cap, base × 2^(attempts−1))` with jitter in [½, 1] of it.
    /// Refused (the records stay leased until the lease expires) while the WAL is at its
    /// share and a reader pins it.
    /// - Throws: `SpoolError` `.full` (WAL pinned), `.busy`, `.readOnly`, `.closed`, `.sqlite`.
    public func release(_ ids: [Data], retryAfter: Duration? = nil, now: Date = Date()) throws {
        try checkWritable()
        guard !ids.isEmpty else { return }
        // Like a lease, a release rewrites each row with its payload.
        let bytes = try mapped {
            try dbQueue.read { db in
                try Int64.fetchOne(db, sql: "SELECT coalesce(sum(size), 0) FROM record WHERE id IN (\(ids.map { _ in "?" }.joined(separator: ",")))",
                                   arguments: StatementArguments(ids)) ?? 0
            }
        }
        try checkWALRoom("release of \(ids.count) records", pages: rowPages(payloadBytes: bytes, rows: ids.count))
        let nowMs = Self.ms(now)
        try mapped {
            try writeTransaction { db in
                let select = try db.cachedStatement(sql: "SELECT attempts FROM record WHERE id = ?")
                let update = try db.cachedStatement(sql: """
                    UPDATE record SET attempts = ?, next_attempt_ms = ?, lease_owner = NULL, lease_until_ms = 0
                    WHERE id = ?
                    """)
                for id in ids {
                    guard let attempts = try Int.fetchOne(select, arguments: [id]) else { continue }
                    let next = attempts + 1
                    let delayMs = retryAfter.map(Self.ms) ?? Self.backoffMs(attempt: next)
                    try update.execute(arguments: [next, nowMs + delayMs, id])
                }
            }
        }
        maybeCheckpoint()
    }

    /// Backoff delay in ms before attempt number `attempt` (1-based): ``backoff`` after `attempt` failures.
    static func backoffMs(attempt: Int) -> Int64 {
        backoff.delayMs(afterFailures: attempt)
    }

    // MARK: - Statistics and state

    /// Current statistics. Works on read-only spools.
    /// - Throws: `SpoolError` `.busy`, `.closed`, `.sqlite`.
    public func stats() throws -> SpoolStats {
        try checkOpen()
        let pending = mutable.withLock { $0.pending }
        return try mapped {
            try dbQueue.read { db in
                var stats = SpoolStats(spooled: [:], evicted: [:], rejected: [:], quarantined: 0, leased: 0,
                                       oldestCaptureTimeMs: nil, fileBytes: 0, maxBytes: maxBytes)
                stats.dropped = pending.dropped
                for kind in SpoolKind.allCases {
                    stats.spooled[kind] = SpoolCount()
                    stats.evicted[kind] = SpoolCount()
                    stats.rejected[kind] = pending.rejected[kind] ?? SpoolCount()
                }
                let rows = try Row.fetchAll(db, sql: """
                    SELECT kind, count(*) AS n, total(size) AS bytes FROM record GROUP BY kind
                    """)
                for row in rows {
                    guard let kind = (row["kind"] as String?).flatMap(SpoolKind.init(rawValue:)) else { continue }
                    stats.spooled[kind] = SpoolCount(count: row["n"], bytes: Int64(row["bytes"] as Double))
                }
                stats.oldestCaptureTimeMs = try Int64.fetchOne(db, sql: "SELECT min(capture_ms) FROM record")
                stats.leased = try Int.fetchOne(db, sql: "SELECT count(*) FROM record WHERE lease_owner IS NOT NULL") ?? 0
                let counters = try Row.fetchAll(db, sql: "SELECT name, value FROM counter")
                var values: [String: Int64] = [:]
                for row in counters { values[row["name"]] = row["value"] }
                for kind in SpoolKind.allCases {
                    stats.evicted[kind] = SpoolCount(count: Int(values[SpoolSchema.evictedCount(kind)] ?? 0),
                                                     bytes: values[SpoolSchema.evictedBytes(kind)] ?? 0)
                    stats.rejected[kind]!.count += Int(values[SpoolSchema.rejectedCount(kind)] ?? 0)
                    stats.rejected[kind]!.bytes += values[SpoolSchema.rejectedBytes(kind)] ?? 0
                }
                stats.quarantined = Int(values[SpoolSchema.quarantined] ?? 0)
                for (name, value) in values {
                    guard let (reason, isCount) = SpoolSchema.droppedCounter(name) else { continue }
                    if isCount {
                        stats.dropped[reason, default: SpoolCount()].count += Int(value)
                    } else {
                        stats.dropped[reason, default: SpoolCount()].bytes += value
                    }
                }
                stats.fileBytes = files.databaseBytes + files.walBytes
                return stats
            }
        }
    }

    /// Stores a small key/value pair (e.g. `last-upload-ms`), durably.
    /// - Throws: `SpoolError` `.busy`, `.readOnly`, `.closed`, `.sqlite`.
    public func setState(_ key: String, _ value: String) throws {
        try checkWritable()
        try mapped {
            try writeTransaction { db in
                try db.execute(sql: "INSERT INTO state(key, value) VALUES (?, ?) "
                               + "ON CONFLICT(key) DO UPDATE SET value = excluded.value", arguments: [key, value])
            }
        }
    }

    /// The value stored under `key`, or nil. Works on read-only spools.
    public func state(_ key: String) throws -> String? {
        try checkOpen()
        return try mapped {
            try dbQueue.read { db in try String.fetchOne(db, sql: "SELECT value FROM state WHERE key = ?", arguments: [key]) }
        }
    }

    /// The spooled records grouped by the DEK they are sealed under (every record of one DEK
    /// carries the same Envelope header fields but its id), each group with the payload of its
    /// smallest record, so a caller can read the header (e.g. the agent id) without loading the
    /// whole spool: one pass over the rows (sizes and DEK ids only) plus one payload per DEK.
    /// Works on read-only spools.
    /// - Throws: `SpoolError` `.busy`, `.closed`, `.sqlite`.
    public func dekGroups() throws -> [SpoolDEKGroup] {
        try checkOpen()
        return try mapped {
            try dbQueue.read { db in
                let rows = try Row.fetchAll(db, sql: """
                    SELECT dek_id, count(*) AS n, total(size) AS bytes, min(size) AS smallest
                    FROM record GROUP BY dek_id ORDER BY min(capture_ms)
                    """)
                let sample = try db.cachedStatement(sql: "SELECT payload FROM record WHERE dek_id = ? AND size = ? LIMIT 1")
                return try rows.compactMap { row -> SpoolDEKGroup? in
                    let dekID: Data = row["dek_id"]
                    guard let payload = try Data.fetchOne(sample, arguments: [dekID, row["smallest"] as Int64]) else { return nil }
                    return SpoolDEKGroup(dekID: dekID, records: SpoolCount(count: row["n"], bytes: Int64(row["bytes"] as Double)),
                                         samplePayload: payload)
                }
            }
        }
    }

    /// Makes every record sealed under one of `dekIDs` leasable at once (clears the retry delay
    /// a refusal set), e.g. after the configuration changed so the collector will now accept them.
    /// Returns the number of records changed.
    /// - Throws: `SpoolError` `.busy`, `.readOnly`, `.closed`, `.sqlite`.
    @discardableResult
    public func retryNow(dekIDs: [Data]) throws -> Int {
        try checkWritable()
        guard !dekIDs.isEmpty else { return 0 }
        return try mapped {
            try writeTransaction { db in
                try db.execute(sql: "UPDATE record SET next_attempt_ms = 0 WHERE next_attempt_ms > 0 AND dek_id IN ("
                               + dekIDs.map { _ in "?" }.joined(separator: ",") + ")", arguments: StatementArguments(dekIDs))
                return db.changesCount
            }
        }
    }

    /// Writes pending counters, checkpoints and truncates the WAL, closes the database and
    /// releases the writer lock. Later calls throw `.closed`; closing twice is a no-op.
    public func close() throws {
        let (wasClosed, fd, pending) = mutable.withLock { state in
            let r = (state.closed, state.lockFD, state.pending)
            state.closed = true
            state.lockFD = -1
            state.pending = PendingCounters()
            return r
        }
        if wasClosed { return }
        defer { if fd >= 0 { Glibc.close(fd) } }
        logOpenBursts()
        if !isReadOnly {
            if !pending.isEmpty {
                try? writeTransaction { db in try addCounters(db, evicted: [:], rejected: pending) }
            }
            checkpoint()
        }
        try mapped { try dbQueue.close() }
    }

    deinit {
        let fd = mutable.withLock { $0.lockFD }
        if fd >= 0 { Glibc.close(fd) }
    }

    // MARK: - Helpers

    private func checkOpen() throws {
        if mutable.withLock({ $0.closed }) {
            throw SpoolError(.closed, "spool \(directory) is closed")
        }
    }

    private func checkWritable() throws {
        try checkOpen()
        if isReadOnly { throw SpoolError(.readOnly, "spool \(directory) was opened read-only") }
    }

    /// Runs `body` in a `BEGIN IMMEDIATE` transaction (so the busy timeout applies to taking
    /// the write lock), committing when it returns; then `committed` with its result, still
    /// under the database queue (no other transaction of this spool comes in between).
    private func writeTransaction<T>(_ body: (Database) throws -> T, committed: (T) -> Void = { _ in }) throws -> T {
        try dbQueue.writeWithoutTransaction { db in
            var result: T?
            try db.inTransaction(.immediate) {
                result = try body(db)
                return .commit
            }
            committed(result!)
            return result!
        }
    }

    private func mapped<T>(_ body: () throws -> T) throws -> T {
        try Self.mapErrors(files, body)
    }

    private static func mapErrors<T>(_ files: SpoolFiles, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as DatabaseError {
            throw mapError(error, files: files)
        }
    }

    static func mapError(_ error: DatabaseError, files: SpoolFiles, id: Data? = nil) -> SpoolError {
        let subject = id.map { "record \($0.spoolHex) in \(files.databasePath)" } ?? files.databasePath
        let sqlite = "SQLite \(error.extendedResultCode.rawValue): \(error.message ?? "no message")"
        switch error.resultCode {
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return SpoolError(.busy, "\(subject): another process holds a lock on the database past the busy timeout (\(sqlite))")
        case .SQLITE_FULL:
            return SpoolError(.diskFull, "\(subject): the filesystem holding \(files.directory) is full (\(sqlite))")
        case .SQLITE_CORRUPT, .SQLITE_NOTADB, .SQLITE_FORMAT:
            return SpoolError(.corrupt, "\(subject): the database is corrupt or not a Custos spool (\(sqlite))")
        case .SQLITE_READONLY:
            return SpoolError(.readOnly, "\(subject): the database is read-only (\(sqlite))")
        default:
            return SpoolError(.sqlite, "\(subject): \(sqlite)")
        }
    }

    /// Checkpoints the WAL and truncates it to zero bytes, without waiting: a reader that
    /// still uses the WAL makes it return false (the WAL then keeps its frames).
    @discardableResult
    private func checkpointNow(_ db: Database) -> Bool {
        do {
            try db.execute(sql: "PRAGMA busy_timeout = 0")
            defer { try? db.execute(sql: "PRAGMA busy_timeout = \(busyTimeoutMs)") }
            try db.checkpoint(.truncate)
            return true
        } catch {
            return false
        }
    }

    /// Keeps the WAL within its share for writes other than enqueue (lease, ack, release):
    /// when `pages` more WAL pages would pass the share, checkpoint; when a reader pins the
    /// WAL so that it cannot be, refuse the write (nothing changes) rather than grow the WAL.
    /// `pages` is a generous estimate; it counts for at most the whole share, so an empty WAL
    /// always has room.
    /// - Throws: `SpoolError` `.full` naming the WAL, its size and its share.
    private func checkWALRoom(_ operation: String, pages: Int64, share: Int64? = nil) throws {
        let share = share ?? budget().wal
        let walNeed = min(walBytesFor(pages: pages), share)
        guard files.walBytes + walNeed > share else { return }
        checkpoint()
        let wal = files.walBytes
        guard wal + walNeed > share else { return }
        throw SpoolError(.full, "\(operation) refused: WAL \(files.walPath) is \(wal) bytes and cannot be "
                         + "checkpointed (a reader holds a transaction open); \(walNeed) more bytes would pass its "
                         + "share of \(share) bytes. Nothing was changed; it will succeed once the reader lets go")
    }

    /// Pages an update of `rows` rows holding `payloadBytes` of payload in all may write:
    /// the payload's pages plus the rows' b-tree pages and a few more.
    func rowPages(payloadBytes: Int64, rows: Int) -> Int64 {
        payloadBytes / (pageSize - 8) + Int64(rows) / 16 + 8
    }

    /// `checkpointNow` outside any transaction.
    @discardableResult
    private func checkpoint() -> Bool {
        dbQueue.writeWithoutTransaction { db in checkpointNow(db) }
    }

    /// After a write: when the WAL file has grown past three quarters of its share (a reader
    /// held it, or a large transaction passed), try to checkpoint and truncate it.
    private func maybeCheckpoint() {
        if files.walBytes > Self.walShare(of: maxBytes) * 3 / 4 {
            checkpoint()
        }
    }

    private func bump(_ db: Database, _ name: String, by value: Int64) throws {
        try db.cachedStatement(sql: """
            INSERT INTO counter(name, value) VALUES (?, ?)
            ON CONFLICT(name) DO UPDATE SET value = value + excluded.value
            """).execute(arguments: [name, value])
    }

    private func addCounters(_ db: Database, evicted: [SpoolKind: SpoolCount], rejected: PendingCounters) throws {
        for (kind, count) in evicted {
            try bump(db, SpoolSchema.evictedCount(kind), by: Int64(count.count))
            try bump(db, SpoolSchema.evictedBytes(kind), by: count.bytes)
        }
        for (kind, count) in rejected.rejected {
            try bump(db, SpoolSchema.rejectedCount(kind), by: Int64(count.count))
            try bump(db, SpoolSchema.rejectedBytes(kind), by: count.bytes)
        }
        for (reason, count) in rejected.dropped {
            try bump(db, SpoolSchema.droppedCount(reason), by: Int64(count.count))
            try bump(db, SpoolSchema.droppedBytes(reason), by: count.bytes)
        }
    }

    private func restorePending(_ pending: PendingCounters) {
        guard !pending.isEmpty else { return }
        mutable.withLock { state in state.pending.add(pending) }
    }

    /// Counts one capture (or `count` of them, `bytes` in all) that was not kept, under
    /// `reason`, in the persistent counter table that `stats()` (and `custos-agent status`)
    /// reads. The spool counts its own refusals (`.tooLarge`, `.full`, `.diskFull`); the agent
    /// counts the others (no KEK, a failed capture or seal). Written at once; when that write
    /// fails (disk full, busy) the count is kept in memory and written with the next write or
    /// at `close()`. Never throws.
    public func countDropped(_ reason: DropReason, count: Int = 1, bytes: Int64 = 0) {
        guard !isReadOnly, count > 0 else { return }
        let pending = mutable.withLock { state -> PendingCounters? in
            guard !state.closed else { return nil }
            state.pending.dropped[reason, default: SpoolCount()].count += count
            state.pending.dropped[reason, default: SpoolCount()].bytes += bytes
            let p = state.pending
            state.pending = PendingCounters()
            return p
        }
        guard let pending else { return }
        do {
            try mapped { try writeTransaction { db in try addCounters(db, evicted: [:], rejected: pending) } }
        } catch {
            restorePending(pending)
        }
    }

    /// Counts a refused enqueue: `rejected` by kind and `dropped` (`full` or `disk-full`); a
    /// record of a broken group only as dropped `group-broken` (the spool had room for it).
    /// Logged once per burst.
    private func recordRejection(_ entry: SpoolEntry, reason: String, code: SpoolError.Code) {
        if code == .groupBroken {
            let (starts, previous) = mutable.withLock { state in
                state.pending.dropped[.groupBroken, default: SpoolCount()].count += 1
                state.pending.dropped[.groupBroken, default: SpoolCount()].bytes += Int64(entry.payload.count)
                return Burst.note(&state.brokenGroupBurst, count: 1, bytes: Int64(entry.payload.count))
            }
            if let previous { logBurstEnd("refused packets of broken groups", previous) }
            if starts {
                logger.warning("spool refusing packets of a group of pictures that lost packets (evicted or refused)",
                               metadata: ["spool.kind": "\(entry.kind.rawValue)", "spool.reason": "\(reason)"])
            }
            return
        }
        let (starts, previous) = mutable.withLock { state in
            state.pending.rejected[entry.kind, default: SpoolCount()].count += 1
            state.pending.rejected[entry.kind, default: SpoolCount()].bytes += Int64(entry.payload.count)
            let why: DropReason = code == .diskFull ? .diskFull : .full
            state.pending.dropped[why, default: SpoolCount()].count += 1
            state.pending.dropped[why, default: SpoolCount()].bytes += Int64(entry.payload.count)
            return Burst.note(&state.rejectionBurst, count: 1, bytes: Int64(entry.payload.count))
        }
        if let previous { logBurstEnd("refused", previous) }
        if starts {
            logger.error("spool full: refusing new records", metadata: ["spool.kind": "\(entry.kind.rawValue)",
                                                                        "spool.reason": "\(reason)"])
        }
    }

    /// Accounts evictions to the current burst, logging the first of a burst.
    private func logEvictions(_ evicted: [SpoolKind: SpoolCount]) {
        guard !evicted.isEmpty else { return }
        let total = evicted.values.reduce(SpoolCount()) { SpoolCount(count: $0.count + $1.count, bytes: $0.bytes + $1.bytes) }
        let (starts, previous) = mutable.withLock { state in
            Burst.note(&state.evictionBurst, count: total.count, bytes: total.bytes)
        }
        if let previous { logBurstEnd("evicted", previous) }
        if starts {
            logger.warning("spool at its cap: evicting oldest records (screen, then generic, then keystrokes)",
                           metadata: ["spool.max_bytes": "\(maxBytes)",
                                      "spool.evicted": "\(evicted.map { "\($0.key.rawValue)=\($0.value.count)" }.sorted())"])
        }
    }

    private func logDiskFull() {
        let (starts, previous) = mutable.withLock { state in
            Burst.note(&state.diskFullBurst, count: 1, bytes: 0)
        }
        if let previous { logBurstEnd("disk-full errors", previous) }
        if starts {
            logger.error("spool filesystem is full (ENOSPC): evicting and retrying",
                         metadata: ["spool.available_bytes": "\(files.availableBytes ?? -1)"])
        }
    }

    private func logBurstEnd(_ what: String, _ burst: Burst) {
        logger.notice("spool burst ended", metadata: ["spool.what": "\(what)", "spool.records": "\(burst.count)",
                                                      "spool.bytes": "\(burst.bytes)"])
    }

    /// Called after a successful enqueue: a refusal burst ends here (summarised once).
    private func endRefusals() {
        let refused = mutable.withLock { state in
            defer { state.rejectionBurst = nil }
            return state.rejectionBurst
        }
        if let refused {
            logger.notice("spool accepts records again", metadata: ["spool.refused": "\(refused.count)",
                                                                    "spool.refused_bytes": "\(refused.bytes)"])
        }
    }

    /// At close: summarises bursts still open.
    private func logOpenBursts() {
        let (e, r, d, g) = mutable.withLock { state in
            (state.evictionBurst, state.rejectionBurst, state.diskFullBurst, state.brokenGroupBurst)
        }
        if let e { logBurstEnd("evicted", e) }
        if let r { logBurstEnd("refused", r) }
        if let d { logBurstEnd("disk-full errors", d) }
        if let g { logBurstEnd("refused packets of broken groups", g) }
    }

    static func ms(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }
    static func ms(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }
}
