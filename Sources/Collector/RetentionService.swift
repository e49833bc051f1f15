import CollectorStorage
import CustosBase
import Foundation
import Logging
import ServiceLifecycle

/// Expiry of captures under the collector's ``RetentionPolicy``, as a service of its
/// `ServiceGroup` (docs/STORAGE.md "Retention"): once at start, then every
/// `retention-interval-minutes`, until a graceful shutdown.
///
/// One run: take the database's lease ``leaseName`` (so of N collectors on one database, or
/// two processes on one SQLite file, one runs it; the others skip this run), then expire
/// batches of ``batchSize`` captures, renewing the lease before each batch (a run that lost
/// it stops), then release it. Each batch also erases the expired blobs' bytes from blob files
/// (``ExpiryOutcome/released``: ranges, bytes, files deleted). A run that removed or erased
/// something logs once, at info, what it removed by kind (captures, bytes), the bytes erased
/// from blob files and the policy, and appends an audit record `retention.expire` (actor
/// `collector`) with the counts. Ranges that could not be erased are logged once at warning
/// (with why) and wait for the next run. A failing run is logged once
/// (``RepeatedErrorLog``: repeats at debug, the recovery at notice) and retried at the next
/// interval. The collector adds this service only when the policy expires something.
public struct RetentionService: Service {
    public let storage: any CollectorStorage
    public let policy: RetentionPolicy
    /// Time between runs.
    public let interval: Duration
    let logger: Logger
    /// This instance's lease holder: `HOST:PID:RANDOM`.
    public let holder: String
    let errors = RepeatedErrorLog()
    /// Blob bytes that could not be erased (logged once, then the recovery once).
    let releaseErrors = RepeatedErrorLog()

    /// The lease's name in `maintenance_lease`.
    public static let leaseName = "retention"
    /// The lease lasts this long past each renewal (ms): far above one batch's time, so only
    /// a holder that died leaves it to expire.
    public static let leaseTTLMs: Int64 = 120_000
    /// Captures deleted per batch (one short transaction per rule).
    public static let batchSize = 1000

    public init(storage: any CollectorStorage, policy: RetentionPolicy, interval: Duration, logger: Logger) {
        self.storage = storage
        self.policy = policy
        self.interval = interval
        self.logger = logger
        holder = "\(Self.hostName()):\(getpid()):\(String(UInt32.random(in: .min ... .max), radix: 16))"
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            await runOnce()
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch { return }
        }
    }

    /// `gethostname(2)` (no name lookup, unlike `ProcessInfo.hostName`), escaped; `host` when it fails.
    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "host" }
        return SafeText.escaped(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// Unix ms now.
    static func nowMs() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    /// One run (see the type's comment). Returns what it removed, or nil when another instance
    /// holds the lease or the run failed (logged).
    @discardableResult
    public func runOnce() async -> ExpiryOutcome? {
        var outcome = ExpiryOutcome()
        var failure: StorageError?
        var leased = false
        do {
            repeat {
                guard try await storage.acquireLease(Self.leaseName, holder: holder, ttlMs: Self.leaseTTLMs, nowMs: Self.nowMs()) else {
                    if !leased { logger.debug("retention: another collector holds the lease; skipping this run") }
                    else { logger.warning("retention: lost the lease mid-run; stopping", metadata: ["retention.removed": .safe(outcome)]) }
                    break
                }
                leased = true
                outcome.merge(try await storage.expire(policy: policy, nowMs: Self.nowMs(), limit: Self.batchSize))
            } while outcome.more && !Task.isCancelled && !Task.isShuttingDownGracefully
        } catch {
            failure = error
        }
        if leased { try? await storage.releaseLease(Self.leaseName, holder: holder) }
        if let problem = outcome.released.problem {
            releaseErrors.failure("retention: expired blob bytes wait to be erased from blob files; retrying at the next run: \(problem)",
                                  key: "retention.release", level: .warning, logger: logger)
        } else if leased {
            releaseErrors.success("retention: the waiting blob bytes are erased", logger: logger)
        }
        if outcome.didSomething {
            logger.info("retention: expired captures", metadata: [
                "retention.removed": .safe(outcome), "retention.captures": "\(outcome.captures)",
                "retention.bytes": "\(outcome.bytes)", "retention.released_bytes": "\(outcome.released.bytes)",
                "retention.released_ranges": "\(outcome.released.ranges)",
                "retention.files_deleted": "\(outcome.released.filesDeleted)", "retention.policy": .safe(policy)])
            do {
                try await storage.appendAudit(actor: "collector", action: "retention.expire",
                                              detail: "\(outcome); policy \(policy)")
            } catch {
                failure = failure ?? error
            }
        }
        if let failure {
            errors.failure("retention: expiry failed; retrying at the next run: \(failure.description)", key: "retention",
                           logger: logger)
            return nil
        }
        errors.success("retention: expiry works again", logger: logger)
        return leased ? outcome : nil
    }
}
