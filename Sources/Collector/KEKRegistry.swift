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
public final class KEKRegistry: Sendable {
    private struct State {
        var active: Set<String> = []
        var lastRefresh: ContinuousClock.Instant?
        /// Row id -> last error logged for it (logged once until it changes).
        var reported: [Int64: String] = [:]
    }

    let store: any CollectorStore
    let logger: Logger
    /// Minimum time between refreshes triggered by unknown KEK ids (default 1 s).
    public let onDemandInterval: Duration
    private let state = Mutex(State())

    public init(store: any CollectorStore, logger: Logger, onDemandInterval: Duration = .seconds(1)) {
        self.store = store
        self.logger = logger
        self.onDemandInterval = onDemandInterval
    }

    /// KEK ids (lowercase hex) currently active.
    public var activeIDs: Set<String> { state.withLock { $0.active } }

    /// Re-reads the active rows and their public key files. Never throws: a row whose file cannot
    /// be read is logged (once) and left out.
    public func refresh() async {
        let rows: [KEKRow]
        do {
            rows = try await store.activeKEKs()
        } catch {
            logger.error("cannot read encryption_kek", metadata: ["collector.error": "\(error)"])
            return
        }
        var ids = Set<String>()
        var errors: [Int64: String] = [:]
        var learnt: [(Int64, String)] = []
        for row in rows {
            do {
                let id = try KEKPublicKey(pemFile: row.pubDatafile).id.hex
                ids.insert(id)
                if row.kekID != id { learnt.append((row.rowID, id)) }
            } catch {
                errors[row.rowID] = "\(error)"
            }
        }
        for (row, id) in learnt {
            do { try store.setKEKID(rowID: row, kekID: id) } catch {
                logger.warning("cannot record kek_id", metadata: ["collector.kek_row": "\(row)", "collector.error": "\(error)"])
            }
        }
        let (added, removed, newErrors) = state.withLock { s -> (Set<String>, Set<String>, [Int64: String]) in
            let added = ids.subtracting(s.active), removed = s.active.subtracting(ids)
            let fresh = errors.filter { s.reported[$0.key] != $0.value }
            s.active = ids
            s.reported = errors
            s.lastRefresh = .now
            return (added, removed, fresh)
        }
        for id in added.sorted() { logger.info("KEK active", metadata: ["collector.kek_id": "\(id)"]) }
        for id in removed.sorted() { logger.info("KEK no longer active", metadata: ["collector.kek_id": "\(id)"]) }
        for (row, message) in newErrors.sorted(by: { $0.key < $1.key }) {
            logger.error("encryption_kek row ignored: cannot read its pub_datafile",
                         metadata: ["collector.kek_row": "\(row)", "collector.error": "\(message)"])
        }
    }

    /// Whether `kekID` (lowercase hex) is active; an unknown id triggers a refresh when the last
    /// one is older than ``onDemandInterval``.
    public func isActive(_ kekID: String) async -> Bool {
        let (known, stale) = state.withLock { s in
            (s.active.contains(kekID), s.lastRefresh.map { $0.duration(to: .now) >= onDemandInterval } ?? true)
        }
        if known { return true }
        guard stale else { return false }
        await refresh()
        return state.withLock { $0.active.contains(kekID) }
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
