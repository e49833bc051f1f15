import CustosBase
import Foundation
import Logging
import ServiceLifecycle
import Spool
import Synchronization
import Wire

/// Where the uploader takes records from: the agent's `Spool` (see `Spool+UploadQueue.swift`).
/// Entries are leased (hidden from other leases), then either acknowledged (deleted) or released.
public protocol UploadQueue: Sendable {
    /// Leases up to `maxItems` entries totalling at most `maxBytes` payload bytes (at least one
    /// entry when any is available), oldest and most important first.
    func leaseForUpload(maxItems: Int, maxBytes: Int) async throws -> [SpoolEntry]
    /// Deletes entries the collector acknowledged.
    func acknowledge(_ ids: [Data]) async throws
    /// Returns entries to the queue; they are not leased again before `retryAfter` (nil: at once).
    func giveBack(_ ids: [Data], retryAfter: Duration?) async throws
    /// Called after the collector refused records `agent-mismatch`: finds every queued record
    /// sealed under another agent id than `configured` and records the finding for `status`.
    /// Returns it, or nil when the queue cannot tell (the default).
    func noteStranded(configured: AgentID) async throws -> StrandedRecords?
}

extension UploadQueue {
    public func noteStranded(configured: AgentID) async throws -> StrandedRecords? { nil }
}

/// Upload loop settings (defaults in parentheses).
public struct UploaderConfiguration: Sendable {
    /// Records per upload request (512).
    public var maxBatchItems: Int
    /// Payload bytes per upload request (4 MiB; keep below the collector's `max-request-bytes`).
    public var maxBatchBytes: Int
    /// Pause when the spool is empty (1 s).
    public var idleInterval: Duration
    /// First retry delay after a failed upload (1 s; more than zero); doubles per consecutive failure...
    public var initialBackoff: Duration
    /// ...up to this cap (5 min; at least `initialBackoff`). A random jitter takes each delay down to
    /// between 50 % and 100 % (CustosBase `Backoff`).
    public var maxBackoff: Duration
    /// When records refused with a retryable reason (`unknown-kek`, `unknown-dek`, `storage-error`)
    /// may be leased again (30 s).
    public var retryableRefusalDelay: Duration
    /// When records refused for good (`malformed`, `agent-mismatch`, `conflict`) may be tried again (1 h).
    /// They stay spooled: only the collector's acknowledgement deletes a record.
    public var permanentRefusalDelay: Duration
    /// Longest a `Retry-After` from the collector is honoured (1 h).
    public var maxRetryAfter: Duration
    /// Time allowed for the final flush on graceful shutdown (5 s). Keep it below the service
    /// group's graceful period; a cancellation ends the flush at once in any case.
    public var finalFlushTimeout: Duration
    /// Batches in flight at once while a backlog drains, each on its own connection (2): the
    /// collector stores one batch while the next one arrives (docs/API.md "Throughput"). During
    /// an outage only the first lane retries, with the backoff above.
    public var parallelRequests: Int

    public init(maxBatchItems: Int = 512, maxBatchBytes: Int = 4 * 1024 * 1024, idleInterval: Duration = .seconds(1),
                initialBackoff: Duration = .seconds(1), maxBackoff: Duration = .seconds(300),
                retryableRefusalDelay: Duration = .seconds(30), permanentRefusalDelay: Duration = .seconds(3600),
                maxRetryAfter: Duration = .seconds(3600), finalFlushTimeout: Duration = .seconds(5),
                parallelRequests: Int = 2) {
        self.maxBatchItems = maxBatchItems
        self.maxBatchBytes = maxBatchBytes
        self.idleInterval = idleInterval
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.retryableRefusalDelay = retryableRefusalDelay
        self.permanentRefusalDelay = permanentRefusalDelay
        self.maxRetryAfter = maxRetryAfter
        self.finalFlushTimeout = finalFlushTimeout
        self.parallelRequests = parallelRequests
    }
}

/// What one ``Uploader/uploadOnce(timeout:)`` did.
public struct UploadSummary: Sendable, Equatable {
    /// Records leased and sent.
    public var sent: Int = 0
    /// Payload bytes sent.
    public var bytes: Int = 0
    /// Newly stored by the collector (acknowledged, deleted from the spool).
    public var stored: Int = 0
    /// Already stored before (acknowledged, deleted from the spool).
    public var duplicate: Int = 0
    /// Refused records by reason (kept in the spool).
    public var refused: [RefusalReason: Int] = [:]
    /// Records the answer did not mention (kept in the spool).
    public var unanswered: Int = 0

    public init() {}
    /// `stored + duplicate`.
    public var acknowledged: Int { stored + duplicate }
    /// Total refused records.
    public var refusedCount: Int { refused.values.reduce(0, +) }
}

/// A snapshot for the agent's status output.
public struct UploaderStatus: Sendable, Equatable {
    /// Unix ms of the last successful upload request, nil before the first.
    public var lastSuccessMs: Int64?
    /// Failed attempts since the last success.
    public var consecutiveFailures: Int
    /// The last failure, nil after a success.
    public var lastError: String?
    /// The collector uploads go to now (`server-url`; the one that last worked, or the first).
    public var collector: CollectorURL
    /// Totals since start.
    public var totalAcknowledged: Int
    public var totalRefused: Int
}

/// Moves records from the spool to the collector: leases a batch, uploads it as one record stream,
/// acknowledges (deletes) only what the collector acknowledged and releases the rest.
///
/// Failures back off exponentially with jitter up to a cap, honouring `Retry-After`; a repeated
/// error is logged once, and the recovery once. On graceful shutdown, ``run()`` makes a bounded
/// final flush. Use it as a swift-service-lifecycle `Service`.
///
/// **Failover.** With several collectors (`server-url` repeated; one ``CollectorClient`` each,
/// all checked against the same pins), a batch goes to the current one; when it is down
/// (``isFailover(_:)``: no connection, no TLS handshake, a refused certificate, no answer, or a
/// 5xx answer) the same batch is sent to the next one at once, in the configured order, and
/// uploads stick to the first that works until it fails in turn. Only when every collector
/// failed does the attempt count as failed (and back off). A batch sent to two collectors is
/// stored once: the collectors' idempotency by blob id holds across instances on one database.
public final class Uploader: Service, Sendable {
    private struct State {
        var consecutiveFailures = 0
        var lastError: String?
        var lastSuccessMs: Int64?
        var loggedRefusals: Set<RefusalReason> = []
        var totalAcknowledged = 0
        var totalRefused = 0
        /// No lane starts an attempt before this (set from a `Retry-After`).
        var pausedUntil: ContinuousClock.Instant?
        /// Index into ``clients`` of the collector uploads go to now.
        var current = 0
    }

    let queue: any UploadQueue
    /// One client per collector (`server-url` order), each for the same agent and pins.
    let clients: [CollectorClient]
    public let configuration: UploaderConfiguration
    let logger: Logger
    private let state = Mutex(State())
    /// Failed attempts are logged once per kind, and the recovery once.
    private let errors = RepeatedErrorLog()
    /// Records refused `agent-mismatch` (sealed under another agent id): logged once per set of
    /// sealing agent ids, however often they are retried.
    private let stranded = RepeatedErrorLog()
    /// Failing over away from a collector: logged once per collector, and its recovery once.
    private let failovers: [RepeatedErrorLog]

    /// - Parameter clients: one per collector, in the order to try them (at least one).
    public init(queue: any UploadQueue, clients: [CollectorClient], configuration: UploaderConfiguration = .init(),
                logger: Logger) {
        precondition(!clients.isEmpty, "an Uploader needs at least one collector")
        self.queue = queue
        self.clients = clients
        self.configuration = configuration
        self.logger = logger
        failovers = clients.map { _ in RepeatedErrorLog() }
    }

    /// One collector.
    public convenience init(queue: any UploadQueue, client: CollectorClient, configuration: UploaderConfiguration = .init(),
                            logger: Logger) {
        self.init(queue: queue, clients: [client], configuration: configuration, logger: logger)
    }

    public var status: UploaderStatus {
        let clients = self.clients
        return state.withLock {
            UploaderStatus(lastSuccessMs: $0.lastSuccessMs, consecutiveFailures: $0.consecutiveFailures,
                           lastError: $0.lastError, collector: clients[$0.current].configuration.server,
                           totalAcknowledged: $0.totalAcknowledged, totalRefused: $0.totalRefused)
        }
    }

    /// Whether `error` means the collector is down or unable (try the next one): no connection,
    /// no TLS handshake, its certificate refused, no answer in time, or an HTTP 5xx answer. Not
    /// for a 4xx answer (a wrong token or an oversized batch is the same at every collector) nor
    /// cancellation.
    public static func isFailover(_ error: TransportError) -> Bool {
        switch error.code {
        case .connect, .handshake, .peerRefused, .io: return true
        case .rejected: return (error.httpStatus ?? 0) >= 500
        default: return false
        }
    }

    /// Uploads one batch.
    /// - Parameter timeout: limit for the request (default: the client's request timeout).
    /// - Returns: what happened to each record of the batch (zero counts when the spool is empty).
    /// - Throws: ``TransportError`` when the batch could not be delivered or the collector refused the
    ///   whole request; every leased record is then released (kept) for a later attempt.
    public func uploadOnce(timeout: Duration? = nil) async throws(TransportError) -> UploadSummary {
        try await uploadOnce(on: clients, timeout: timeout)
    }

    private func uploadOnce(on lane: [CollectorClient], timeout: Duration?) async throws(TransportError) -> UploadSummary {
        do {
            let summary = try await attempt(on: lane, timeout: timeout)
            noteSuccess(summary)
            return summary
        } catch {
            noteFailure(error)
            throw error
        }
    }

    /// Sends `records` to the current collector of `lane`, failing over to the next ones in turn
    /// (``isFailover(_:)``) within `timeout` (nil: each request's own limit); sticks to the first
    /// that answers. Throws the last collector's error when none answered.
    private func send(_ records: [Data], on lane: [CollectorClient], timeout: Duration?) async throws(TransportError) -> UploadResponse {
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now + $0 }
        let start = state.withLock { $0.current }
        var lastError: TransportError?
        for step in 0..<lane.count {
            let index = (start + step) % lane.count
            let left = deadline.map { clock.now.duration(to: $0) }
            if let left, left <= .zero, let lastError { throw lastError }
            do {
                let response = try await lane[index].upload(records: records, timeout: left)
                // Every lane may get here for the same switch: the one that makes it logs it.
                if index != start, state.withLock({ s -> Bool in
                    defer { s.current = index }
                    return s.current != index
                }) {
                    logger.notice("uploading to collector \(lane[index].configuration.server)", metadata: [
                        "transport.collector": "\(lane[index].configuration.server)",
                        "transport.previous": "\(lane[start].configuration.server)"])
                }
                failovers[index].success("collector \(lane[index].configuration.server) answers again", logger: logger)
                return response
            } catch {
                guard lane.count > 1, Self.isFailover(error), step + 1 < lane.count else { throw error }
                lastError = error
                let next = lane[(index + 1) % lane.count].configuration.server
                failovers[index].failure("collector \(lane[index].configuration.server) unavailable; trying \(next)",
                                         key: "\(error.code)|\(error.httpStatus ?? 0)", level: .warning,
                                         metadata: ["transport.error": "\(error.description)"], logger: logger)
            }
        }
        throw lastError ?? TransportError(.io, "no collector to upload to")
    }

    private func attempt(on lane: [CollectorClient], timeout: Duration?) async throws(TransportError) -> UploadSummary {
        let entries: [SpoolEntry]
        do {
            entries = try await queue.leaseForUpload(maxItems: configuration.maxBatchItems,
                                                     maxBytes: configuration.maxBatchBytes)
        } catch {
            throw TransportError(.spool, "cannot lease from the spool: \(error)")
        }
        var summary = UploadSummary()
        guard !entries.isEmpty else { return summary }
        summary.sent = entries.count
        summary.bytes = entries.reduce(0) { $0 + $1.payload.count }

        let response: UploadResponse
        do {
            response = try await send(entries.map(\.payload), on: lane, timeout: timeout)
        } catch {
            try await release(entries.map(\.id), after: nil)
            throw error
        }
        var verdicts = [RecordResult?](repeating: nil, count: entries.count)
        for r in response.results where r.index >= 0 && r.index < entries.count {
            // A result naming another id than the record at its index is ignored (kept spooled).
            if let id = r.id, id != wireHex(entries[r.index].id) { continue }
            verdicts[r.index] = r
        }
        var ack: [Data] = [], retrySoon: [Data] = [], retryLate: [Data] = [], unanswered: [Data] = []
        var newReasons: [(RefusalReason, String)] = []
        var mismatched: [SpoolEntry] = []
        for (i, entry) in entries.enumerated() {
            guard let v = verdicts[i] else { unanswered.append(entry.id); continue }
            switch v.status {
            case .stored: summary.stored += 1; ack.append(entry.id)
            case .duplicate: summary.duplicate += 1; ack.append(entry.id)
            case .refused:
                let reason = v.reason ?? .malformed
                summary.refused[reason, default: 0] += 1
                if v.retryable ?? false { retrySoon.append(entry.id) } else { retryLate.append(entry.id) }
                if reason == .agentMismatch { mismatched.append(entry) } else { newReasons.append((reason, v.message ?? "")) }
            }
        }
        summary.unanswered = unanswered.count
        // Every step runs even when one fails (each record gets its own delay); the first
        // failure is thrown at the end, so the attempt counts as failed and backs off.
        var failure: TransportError?
        if !ack.isEmpty {
            do { try await queue.acknowledge(ack) } catch {
                // Not deleted: they stay leased, are sent again later and answered `duplicate`.
                failure = TransportError(.spool, "the collector acknowledged \(ack.count) records but the spool "
                                         + "could not delete them: \(error)")
            }
        }
        for (ids, after) in [(unanswered, nil), (retrySoon, configuration.retryableRefusalDelay),
                             (retryLate, configuration.permanentRefusalDelay)] as [([Data], Duration?)] {
            do { try await release(ids, after: after) } catch { failure = failure ?? error }
        }
        logRefusals(newReasons, summary: summary)
        await noteAgentMismatch(mismatched, on: lane)
        if let failure { throw failure }
        return summary
    }

    private func release(_ ids: [Data], after: Duration?) async throws(TransportError) {
        guard !ids.isEmpty else { return }
        do { try await queue.giveBack(ids, retryAfter: after) } catch {
            throw TransportError(.spool, "cannot release \(ids.count) records to the spool: \(error)")
        }
    }

    private func logRefusals(_ reasons: [(RefusalReason, String)], summary: UploadSummary) {
        let present = Set(reasons.map(\.0))
        let fresh = state.withLock { s -> Set<RefusalReason> in
            let fresh = present.subtracting(s.loggedRefusals)
            // A reason that stopped occurring is logged again when it comes back.
            s.loggedRefusals = present
            return fresh
        }
        for reason in fresh.sorted(by: { $0.rawValue < $1.rawValue }) {
            let message = reasons.first { $0.0 == reason }?.1 ?? ""
            let level: Logger.Level = reason == .unknownKEK || reason == .unknownDEK ? .warning : .error
            logger.log(level: level, "collector refused records; they stay spooled", metadata: [
                "transport.reason": "\(reason.rawValue)", "transport.count": "\(summary.refused[reason] ?? 0)",
                "transport.detail": "\(SafeText.escaped(message))"])
        }
    }

    /// Records refused `agent-mismatch` were sealed under another agent id than the one this
    /// agent now uploads as (`agent-id=` changed): they can never be accepted under it. Rescans
    /// the queue (for `status`) and logs once per set of sealing ids which ids, the configured
    /// one and what to do. The records stay spooled (retried after `permanentRefusalDelay`).
    private func noteAgentMismatch(_ entries: [SpoolEntry], on lane: [CollectorClient]) async {
        guard !entries.isEmpty else { return }
        let configured = lane[0].configuration.agentID
        var sealers = Set(entries.compactMap { StrandedRecords.agentID(ofRecord: $0.payload) })
        var count = entries.count, bytes = Int64(entries.reduce(0) { $0 + $1.payload.count })
        do {
            if let scan = try await queue.noteStranded(configured: configured), !scan.sealedUnder.isEmpty {
                sealers.formUnion(scan.sealedUnder.keys)
                count = scan.sealedUnder.values.reduce(0) { $0 + $1.count }
                bytes = scan.sealedUnder.values.reduce(0) { $0 + $1.bytes }
            }
        } catch {
            logger.warning("cannot count the records sealed under another agent id",
                           metadata: ["transport.error": "\(error)"])
        }
        let ids = sealers.sorted()
        let names = ids.isEmpty ? "another agent id" : ids.map { SafeText.quoted($0) }.joined(separator: ", ")
        let old = ids.count == 1 ? "agent-id=\(SafeText.escaped(ids[0]))" : "agent-id= to the id they were sealed under"
        stranded.failure("collector refuses spooled records (agent-mismatch): they were sealed under agent-id \(names) "
                         + "but agent-id is now \(SafeText.quoted(configured.rawValue)); they cannot be re-sealed and stay "
                         + "spooled, retried hourly. To upload them, set \(old) again (with that agent's agent-token) "
                         + "until `custos-agent status` shows no stranded records, then switch back",
                         key: "agent-mismatch|" + ids.joined(separator: ","),
                         metadata: ["transport.reason": "agent-mismatch", "transport.count": "\(count)",
                                    "transport.bytes": "\(bytes)"],
                         logger: logger)
    }

    private func noteSuccess(_ summary: UploadSummary) {
        let failures = state.withLock { s -> Int in
            defer {
                s.consecutiveFailures = 0
                s.lastError = nil
                if summary.acknowledged > 0 { s.lastSuccessMs = Int64((Date().timeIntervalSince1970 * 1000).rounded()) }
                s.totalAcknowledged += summary.acknowledged
                s.totalRefused += summary.refusedCount
            }
            return s.consecutiveFailures
        }
        errors.success("upload recovered", metadata: ["transport.failed_attempts": "\(failures)"], logger: logger)
    }

    /// Logs a failed attempt through ``errors``: once per kind of failure (code, HTTP status,
    /// presented certificates), repeats at debug.
    private func noteFailure(_ error: TransportError) {
        // Cancellation (shutdown) is not a failure of the collector or the network.
        guard error.code != .cancelled else { return }
        state.withLock { s in
            s.consecutiveFailures += 1
            s.lastError = error.description
        }
        let key = "\(error.code)|\(error.httpStatus ?? 0)|\(error.presentedPins.joined(separator: ","))"
        if error.code == .peerRefused {
            // The reason and every presented SPKI pin, so an administrator can fix `server-pin`.
            errors.failure("collector certificate refused; no data sent, records stay spooled", key: key, metadata: [
                "transport.error": "\(error.message)",
                "transport.presented_spki": "\(error.presentedPins.joined(separator: ","))",
            ], logger: logger)
        } else if let after = error.retryAfter {
            // Flow control (429/503 with Retry-After), not a fault.
            errors.failure("collector busy; records stay spooled, waiting as it asked", key: key, level: .notice,
                           metadata: ["transport.retry_after": "\(after)", "transport.error": "\(error.description)"],
                           logger: logger)
        } else {
            errors.failure("upload failed; records stay spooled, retrying with backoff", key: key,
                           metadata: ["transport.error": "\(error.description)"], logger: logger)
        }
    }

    /// The delay before the next attempt after `failures` consecutive failures (≥ 1):
    /// `initialBackoff * 2^(failures-1)` capped at `maxBackoff`, times a random factor in [0.5, 1].
    public func backoff(failures: Int) -> Duration {
        Backoff(initial: configuration.initialBackoff, cap: configuration.maxBackoff).delay(afterFailures: failures)
    }

    /// The pause after an answer with `Retry-After: after`: `after`, capped at
    /// ``UploaderConfiguration/maxRetryAfter``, but never shorter than the backoff for
    /// `failures` (so `Retry-After: 0` from a proxy cannot make a tight loop).
    public func retryPause(after: Duration, failures: Int) -> Duration {
        max(min(after, configuration.maxRetryAfter), backoff(failures: failures))
    }

    /// Uploads until cancelled or gracefully shut down, then makes a final flush of at most
    /// ``UploaderConfiguration/finalFlushTimeout`` (graceful shutdown only). Runs
    /// ``UploaderConfiguration/parallelRequests`` lanes, each with its own connection.
    public func run() async throws {
        var lanes = [clients]
        for _ in 1..<max(1, configuration.parallelRequests) {
            do {
                var lane: [CollectorClient] = []
                for client in clients { lane.append(try await client.sibling()) }
                lanes.append(lane)
            } catch {
                logger.warning("cannot open another upload connection; uploading with fewer lanes",
                               metadata: ["transport.lanes": "\(lanes.count)", "transport.error": "\(error)"])
                break
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for (index, lane) in lanes.enumerated() {
                group.addTask { await self.runLane(lane, first: index == 0) }
            }
        }
        for lane in lanes.dropFirst() {
            for client in lane { await client.close() }
        }
        if !Task.isCancelled { await finalFlush() }
    }

    /// One lane's loop. The first lane owns failure handling (backoff); the others only work
    /// while the last attempt succeeded, so an outage is probed by one request at a time and
    /// backs off exactly as with a single lane. A `Retry-After` answer, whichever lane gets it,
    /// pauses every lane that long (at least the current backoff, so `Retry-After: 0` cannot
    /// make a tight loop).
    private func runLane(_ lane: [CollectorClient], first: Bool) async {
        let clock = ContinuousClock()
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            var delay: Duration = .zero
            if let until = state.withLock({ $0.pausedUntil }), clock.now < until {
                delay = clock.now.duration(to: until)
            } else if !first && status.consecutiveFailures > 0 {
                delay = configuration.idleInterval
            } else {
                // A graceful shutdown cancels the attempt in flight (a hung collector must not
                // hold the agent): its records are released, and the final flush sends them again.
                let outcome = await cancelWhenGracefulShutdown { () async -> Result<UploadSummary, TransportError> in
                    do throws(TransportError) { return .success(try await self.uploadOnce(on: lane, timeout: nil)) } catch {
                        return .failure(error)
                    }
                }
                switch outcome {
                case .success(let s):
                    if s.sent == 0 || s.acknowledged == 0 { delay = configuration.idleInterval }
                case .failure(let error) where error.code == .cancelled:
                    continue
                case .failure(let error):
                    if let after = error.retryAfter {
                        let pause = retryPause(after: after, failures: status.consecutiveFailures)
                        state.withLock { $0.pausedUntil = clock.now + pause }
                        delay = pause
                    } else {
                        delay = first ? backoff(failures: status.consecutiveFailures) : configuration.idleInterval
                    }
                }
            }
            if delay > .zero {
                let pause = delay
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
            }
        }
    }

    /// Uploads what it can within ``UploaderConfiguration/finalFlushTimeout`` (the limit covers
    /// connecting, the handshake and the answer); stops at the first failure, an empty spool, a
    /// batch with nothing acknowledged, or cancellation (then at once: every wait is cancellable).
    public func finalFlush() async {
        let clock = ContinuousClock()
        let deadline = clock.now + configuration.finalFlushTimeout
        var flushed = 0
        while clock.now < deadline {
            let left = clock.now.duration(to: deadline)
            guard let s = try? await uploadOnce(timeout: left), s.sent > 0, s.acknowledged > 0 else { break }
            flushed += s.acknowledged
        }
        logger.info("final flush done", metadata: ["transport.acknowledged": "\(flushed)"])
    }
}
