import CollectorStorage
import CustosBase
import Envelope
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The set of active KEK ids, learnt from the `encryption_kek` rows: for each active row the
/// collector takes its public key — the PEM stored in the row (`pub_pem`, what `custos keys
/// register` writes) when there is one, else the file at `pub_datafile` (the seed's path-only
/// row) — and computes its KEK id (SHA-256 of the SPKI DER, docs/FORMAT.md).
///
/// New rows are seen at once: the registry re-reads the table when the storage signals a
/// change (``KEKRefresher`` consumes `kekChanges()`: PostgreSQL `NOTIFY`), when an upload names
/// a KEK id it does not know (``isActive(_:askedAt:)``: one re-read that starts after the upload
/// arrived, shared by every upload waiting for it, at most one per ``onDemandInterval``), on
/// SIGHUP, and every `kek-poll-seconds`.
///
/// A failed read keeps the last known good state (docs/API.md, "KEKs"):
/// - the table cannot be read (a storage error, e.g. `EMFILE` opening a connection, or a row
///   the backend reports corrupt): every KEK known so far stays active, and nothing is added;
/// - a row's `pub_datafile` cannot be read for any reason but its absence (`open`/`read` fail
///   with `EMFILE`, `ENFILE`, `EACCES`, `EIO`, `EISDIR`, …): that row keeps the KEK id it had at
///   the last good read, or, when none was made since start, the `kek_id` the row records
///   (written by the collector at an earlier read, or by `custos keys register`);
/// - what the registry says for sure is honoured at once: a row that is gone or `active=0`,
///   a `pub_datafile` that does not exist (`ENOENT`, `ENOTDIR`), and a `pub_pem` or file that
///   does not hold an RSA public key (its row then gives no KEK).
///
/// Each failure is logged once (per row for keys) and its recovery once (``RepeatedErrorLog``).
public final class KEKRegistry: Sendable {
    private struct State {
        /// Row id -> KEK id of every active row, as last read well.
        var byRow: [Int64: KEKID] = [:]
        /// Row id -> the failures of its public key (logged once, recovery once).
        var keyErrors: [Int64: RepeatedErrorLog] = [:]
        /// Reads are numbered as they start; a read applies its rows only when no later one
        /// has applied its own (a slow poll never overwrites a newer on-demand read).
        var readsStarted = 0
        var lastApplied = 0
        /// The newest re-read asked for by an unknown KEK id: when it starts, and its task.
        var onDemand: (start: ContinuousClock.Instant, task: Task<Void, Never>)?
    }

    let storage: any CollectorStorage
    let logger: Logger
    /// Minimum time between re-reads started by unknown KEK ids (default 1 s).
    public let onDemandInterval: Duration
    private let state = Mutex(State())
    /// Failures to read the `encryption_kek` table or record a `kek_id`.
    private let databaseErrors = RepeatedErrorLog()

    public init(storage: any CollectorStorage, logger: Logger, onDemandInterval: Duration = .seconds(1)) {
        self.storage = storage
        self.logger = logger
        self.onDemandInterval = onDemandInterval
    }

    /// KEK ids currently active.
    public var activeIDs: Set<KEKID> { state.withLock { Set($0.byRow.values) } }

    /// Largest `pub_datafile` read (a PEM RSA public key is under 2 KiB even at 8192 bits).
    static let maxKeyFileBytes = 1 << 20

    /// What reading one row's public key gave.
    enum KeyRead {
        /// The KEK id.
        case key(KEKID)
        /// The file is not there (`ENOENT`, `ENOTDIR`), or the PEM or file holds no RSA public
        /// key: the row gives no KEK.
        case definitive(String)
        /// An I/O error (`EMFILE`, `EACCES`, `EIO`, …): the row keeps its last known KEK id.
        case transient(String)
    }

    /// The public key of `row`: its `pub_pem` when present, else the file at `pub_datafile`.
    /// Never throws: see ``KeyRead``.
    static func readKey(_ row: KEKRow) -> KeyRead {
        if let pem = row.publicKeyPEM {
            do {
                return .key(try KEKPublicKey(pemRepresentation: pem, source: "encryption_kek row \(row.rowID) pub_pem").id)
            } catch {
                return .definitive(SafeText.escaped("\(error)"))
            }
        }
        guard let path = row.pubDatafile else { return .definitive("neither pub_pem nor pub_datafile is set") }
        return readKeyFile(path)
    }

    /// Reads `path` and computes its KEK id. Never throws: see ``KeyRead``.
    static func readKeyFile(_ path: String) -> KeyRead {
        let bytes: [UInt8]
        do throws(SystemCallError) {
            let fd = FileDescriptor(takingOwnership: try syscall("open", path) { open(path, O_RDONLY | O_CLOEXEC) })
            var out: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 16 << 10)
            while true {
                let n = try syscall("read", path) { chunk.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress, $0.count) } }
                if n == 0 { break }
                out.append(contentsOf: chunk[..<n])
                guard out.count <= maxKeyFileBytes else {
                    return .definitive("\(SafeText.quoted(path)): larger than \(maxKeyFileBytes) bytes, not a PEM public key")
                }
            }
            bytes = out
        } catch {
            let missing = error.errno == ENOENT || error.errno == ENOTDIR
            return missing ? .definitive("\(error.description): the file does not exist") : .transient(error.description)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            return .definitive("\(SafeText.quoted(path)): not text (expected a PEM public key)")
        }
        do {
            return .key(try KEKPublicKey(pemRepresentation: text, source: path).id)
        } catch {
            return .definitive(SafeText.escaped("\(error)"))
        }
    }

    /// Re-reads the active rows and their public keys now. Never throws: a failed read keeps
    /// the last known good state (see the type's comment) and is logged once.
    public func refresh() async {
        let number = state.withLock { s in
            s.readsStarted += 1
            return s.readsStarted
        }
        let rows: [KEKRow]
        do {
            rows = try await storage.keks().filter(\.active)
        } catch {
            let kept = activeIDs.count
            databaseErrors.failure("cannot read encryption_kek; the \(kept) KEKs known so far stay active",
                                   metadata: ["collector.error": .safe(error)], logger: logger)
            return
        }
        var byRow: [Int64: KEKID] = [:]
        var reads: [(KEKRow, KeyRead)] = []
        let previous = state.withLock { $0.byRow }
        var learnt: [(Int64, KEKID)] = []
        for row in rows {
            let read = Self.readKey(row)
            reads.append((row, read))
            switch read {
            case .key(let id):
                byRow[row.rowID] = id
                if row.kekID != id { learnt.append((row.rowID, id)) }
            case .transient:
                if let id = previous[row.rowID] ?? row.kekID { byRow[row.rowID] = id }
            case .definitive:
                break
            }
        }
        var recordFailed = false
        for (row, id) in learnt {
            do { try await storage.setKEKID(rowID: row, kekID: id) } catch {
                recordFailed = true
                databaseErrors.failure("cannot record kek_id of encryption_kek row \(row)", level: .warning,
                                       metadata: ["collector.error": .safe(error)], logger: logger)
            }
        }
        if !recordFailed { databaseErrors.success("encryption_kek can be read again", logger: logger) }
        let applied = state.withLock { s -> (before: [Int64: KEKID], logs: [Int64: RepeatedErrorLog])? in
            guard number > s.lastApplied else { return nil }
            s.lastApplied = number
            let before = s.byRow
            s.byRow = byRow
            // One log per row still active; a row gone (or active=0) takes its log with it.
            var logs: [Int64: RepeatedErrorLog] = [:]
            for (row, _) in reads { logs[row.rowID] = s.keyErrors[row.rowID] ?? RepeatedErrorLog() }
            s.keyErrors = logs
            return (before, logs)
        }
        guard let (before, logs) = applied else { return }  // a later read has applied newer rows
        for (row, read) in reads {
            let log = logs[row.rowID]!
            let source = row.publicKeyPEM != nil ? "pub_pem" : "pub_datafile"
            var meta: Logger.Metadata = ["collector.kek_row": "\(row.rowID)"]
            if let path = row.pubDatafile { meta["collector.pub_datafile"] = .safe(path) }
            switch read {
            case .key:
                log.success("encryption_kek row \(row.rowID): \(source) read again", metadata: meta, logger: logger)
            case .transient(let message):
                let kept = byRow[row.rowID].map { "keeping its KEK \($0) active" } ?? "no KEK known for it yet"
                log.failure("encryption_kek row \(row.rowID): cannot read its \(source) (\(message)); \(kept)",
                            metadata: meta, logger: logger)
            case .definitive(let message):
                log.failure("encryption_kek row \(row.rowID) ignored: \(message)", metadata: meta, logger: logger)
            }
        }
        let now = Set(byRow.values), was = Set(before.values)
        for id in now.subtracting(was).map(\.hex).sorted() { logger.info("KEK active", metadata: ["collector.kek_id": "\(id)"]) }
        for id in was.subtracting(now).map(\.hex).sorted() { logger.info("KEK no longer active", metadata: ["collector.kek_id": "\(id)"]) }
    }

    /// Whether `kekID` is active. An id not known is looked up again before the answer: the
    /// caller waits for a re-read of `encryption_kek` that starts at or after `askedAt` (when the
    /// upload arrived: so it sees a row inserted just before), shared with every other caller
    /// waiting at that moment; re-reads start at most once per ``onDemandInterval``, so a
    /// stream of unknown ids costs one read a second, and a caller waits at most that long plus
    /// the read.
    public func isActive(_ kekID: KEKID, askedAt: ContinuousClock.Instant = .now) async -> Bool {
        if state.withLock({ $0.byRow.values.contains(kekID) }) { return true }
        await reread(after: askedAt)
        return state.withLock { $0.byRow.values.contains(kekID) }
    }

    /// Reads of `encryption_kek` started since this registry was made (poll, SIGHUP, storage
    /// signal, on demand): for diagnostics and tests.
    public var tableReads: Int { state.withLock { $0.readsStarted } }

    /// Waits for an on-demand re-read that starts at or after `asked`: the pending one when it
    /// does, else a new one, scheduled ``onDemandInterval`` after the previous one started.
    func reread(after asked: ContinuousClock.Instant) async {
        let task = state.withLock { s -> Task<Void, Never> in
            if let pending = s.onDemand, pending.start >= asked { return pending.task }
            let earliest = s.onDemand.map { $0.start + onDemandInterval } ?? asked
            let start = max(asked, earliest)
            let task = Task { [self] in
                try? await Task.sleep(until: start, clock: .continuous)
                await refresh()
            }
            s.onDemand = (start, task)
            return task
        }
        await task.value
    }
}

/// Keeps a ``KEKRegistry`` current: refreshes every `interval`, on each storage `kekChanges()`
/// signal and, when `trapSIGHUP`, on SIGHUP.
/// A swift-service-lifecycle `Service`; ends on cancellation or graceful shutdown.
public struct KEKRefresher: Service {
    let registry: KEKRegistry
    let interval: Duration
    let trapSIGHUP: Bool

    public init(registry: KEKRegistry, interval: Duration = .seconds(3), trapSIGHUP: Bool) {
        self.registry = registry
        self.interval = interval
        self.trapSIGHUP = trapSIGHUP
    }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            if trapSIGHUP {
                group.addTask {
                    let signals = await UnixSignalsSequence(trapping: [.sighup])
                    for await _ in signals.cancelOnGracefulShutdown() {
                        registry.logger.info("SIGHUP: re-reading encryption_kek")
                        await registry.refresh()
                    }
                }
            }
            // A change signalled by the storage (PostgreSQL NOTIFY on encryption_kek; SQLite
            // signals nothing and relies on the on-demand re-read).
            group.addTask {
                for await _ in registry.storage.kekChanges().cancelOnGracefulShutdown() {
                    await registry.refresh()
                }
            }
            group.addTask {
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    await registry.refresh()
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
                }
            }
            await group.waitForAll()
        }
    }
}
