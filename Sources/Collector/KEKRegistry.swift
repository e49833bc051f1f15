import CustosBase
import Envelope
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The set of active KEK ids, learnt from the `encryption_kek` rows: the collector reads each
/// active row's `pub_datafile` (a PEM public key) and computes its KEK id (SHA-256 of the SPKI
/// DER, docs/FORMAT.md). New rows are picked up by ``KEKRefresher`` (poll and SIGHUP) and, at
/// most once per ``onDemandInterval``, when an upload names a KEK id not (yet) known.
///
/// A failed read keeps the last known good state (docs/API.md, "KEKs"):
/// - the table cannot be read (a database error, e.g. `EMFILE` opening a connection): every KEK
///   known so far stays active, and nothing is added;
/// - a row's `pub_datafile` cannot be read for any reason but its absence (`open`/`read` fail
///   with `EMFILE`, `ENFILE`, `EACCES`, `EIO`, `EISDIR`, …): that row keeps the KEK id it had at
///   the last good read, or, when none was made since start, the `kek_id` the row records
///   (written by the collector at an earlier read, or by `custos keys register`);
/// - what the registry says for sure is honoured at once: a row that is gone or `active=0`,
///   a `pub_datafile` that does not exist (`ENOENT`, `ENOTDIR`), and one that was read but does
///   not hold an RSA public key (its row then gives no KEK).
///
/// Each failure is logged once (per row for files) and its recovery once (``RepeatedErrorLog``).
public final class KEKRegistry: Sendable {
    private struct State {
        /// Row id -> KEK id (lowercase hex) of every active row, as last read well.
        var byRow: [Int64: String] = [:]
        var lastRefresh: ContinuousClock.Instant?
        /// Row id -> the failures of its pub_datafile (logged once, recovery once).
        var fileErrors: [Int64: RepeatedErrorLog] = [:]
    }

    let store: any CollectorStore
    let logger: Logger
    /// Minimum time between refreshes triggered by unknown KEK ids (default 1 s).
    public let onDemandInterval: Duration
    private let state = Mutex(State())
    /// Failures to read the `encryption_kek` table or record a `kek_id`.
    private let databaseErrors = RepeatedErrorLog()

    public init(store: any CollectorStore, logger: Logger, onDemandInterval: Duration = .seconds(1)) {
        self.store = store
        self.logger = logger
        self.onDemandInterval = onDemandInterval
    }

    /// KEK ids (lowercase hex) currently active.
    public var activeIDs: Set<String> { state.withLock { Set($0.byRow.values) } }

    /// Largest `pub_datafile` read (a PEM RSA public key is under 2 KiB even at 8192 bits).
    static let maxKeyFileBytes = 1 << 20

    /// What reading one row's `pub_datafile` gave.
    enum FileRead {
        /// The KEK id (lowercase hex).
        case key(String)
        /// The file is not there (`ENOENT`, `ENOTDIR`) or holds no RSA public key: the row gives no KEK.
        case definitive(String)
        /// An I/O error (`EMFILE`, `EACCES`, `EIO`, …): the row keeps its last known KEK id.
        case transient(String)
    }

    /// Reads `path` and computes its KEK id. Never throws: see ``FileRead``.
    static func readKeyFile(_ path: String) -> FileRead {
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
            return .key(try KEKPublicKey(pemRepresentation: text, source: path).id.hex)
        } catch {
            return .definitive(SafeText.escaped("\(error)"))
        }
    }

    /// Re-reads the active rows and their public key files. Never throws: a failed read keeps
    /// the last known good state (see the type's comment) and is logged once.
    public func refresh() async {
        let rows: [KEKRow]
        do {
            rows = try await store.activeKEKs()
        } catch {
            let kept = activeIDs.count
            databaseErrors.failure("cannot read encryption_kek; the \(kept) KEKs known so far stay active",
                                   metadata: ["collector.error": .safe(error)], logger: logger)
            return
        }
        var byRow: [Int64: String] = [:]
        var reads: [(KEKRow, FileRead)] = []
        let previous = state.withLock { $0.byRow }
        var learnt: [(Int64, String)] = []
        for row in rows {
            let read = Self.readKeyFile(row.pubDatafile)
            reads.append((row, read))
            switch read {
            case .key(let id):
                byRow[row.rowID] = id
                if row.kekID != id { learnt.append((row.rowID, id)) }
            case .transient:
                if let id = previous[row.rowID] ?? row.kekID.flatMap(Self.validHex) { byRow[row.rowID] = id }
            case .definitive:
                break
            }
        }
        var recordFailed = false
        for (row, id) in learnt {
            do { try store.setKEKID(rowID: row, kekID: id) } catch {
                recordFailed = true
                databaseErrors.failure("cannot record kek_id of encryption_kek row \(row)", level: .warning,
                                       metadata: ["collector.error": .safe(error)], logger: logger)
            }
        }
        if !recordFailed { databaseErrors.success("encryption_kek can be read again", logger: logger) }
        let (before, logs) = state.withLock { s -> ([Int64: String], [Int64: RepeatedErrorLog]) in
            let before = s.byRow
            s.byRow = byRow
            s.lastRefresh = .now
            // One log per row still active; a row gone (or active=0) takes its log with it.
            var logs: [Int64: RepeatedErrorLog] = [:]
            for (row, _) in reads { logs[row.rowID] = s.fileErrors[row.rowID] ?? RepeatedErrorLog() }
            s.fileErrors = logs
            return (before, logs)
        }
        for (row, read) in reads {
            let log = logs[row.rowID]!
            let meta: Logger.Metadata = ["collector.kek_row": "\(row.rowID)", "collector.pub_datafile": .safe(row.pubDatafile)]
            switch read {
            case .key:
                log.success("encryption_kek row \(row.rowID): pub_datafile read again", metadata: meta, logger: logger)
            case .transient(let message):
                let kept = byRow[row.rowID].map { "keeping its KEK \($0) active" } ?? "no KEK known for it yet"
                log.failure("encryption_kek row \(row.rowID): cannot read its pub_datafile (\(message)); \(kept)",
                            metadata: meta, logger: logger)
            case .definitive(let message):
                log.failure("encryption_kek row \(row.rowID) ignored: \(message)", metadata: meta, logger: logger)
            }
        }
        let now = Set(byRow.values), was = Set(before.values)
        for id in now.subtracting(was).sorted() { logger.info("KEK active", metadata: ["collector.kek_id": "\(id)"]) }
        for id in was.subtracting(now).sorted() { logger.info("KEK no longer active", metadata: ["collector.kek_id": "\(id)"]) }
    }

    /// `text` when it is a KEK id (64 lowercase hex digits), else nil (a hand-edited `kek_id`).
    static func validHex(_ text: String) -> String? {
        text.utf8.count == 64 && text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) } ? text : nil
    }

    /// Whether `kekID` (lowercase hex) is active; an unknown id triggers a refresh when the last
    /// one is older than ``onDemandInterval``.
    public func isActive(_ kekID: String) async -> Bool {
        let (known, stale) = state.withLock { s in
            (s.byRow.values.contains(kekID), s.lastRefresh.map { $0.duration(to: .now) >= onDemandInterval } ?? true)
        }
        if known { return true }
        guard stale else { return false }
        await refresh()
        return state.withLock { $0.byRow.values.contains(kekID) }
    }
}

/// Keeps a ``KEKRegistry`` current: refreshes every `interval` and, when `trapSIGHUP`, on SIGHUP.
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
