import CollectorStorage
import CustosBase
import Envelope
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import Synchronization
import Wire

/// Decides what to do with an authenticated upload body (docs/API.md, `POST /v1/records`).
///
/// The body is cut into records by their 10-byte prefix; each record's header is parsed with
/// Envelope (no key, nothing decrypted), checked (agent id, active KEK) and stored by id, so one
/// bad record does not fail the others. When the storage fails (any ``StorageError``: the
/// database unreachable, locked, full, refusing), the whole upload is answered 503 with
/// `Retry-After` and nothing of it is acknowledged: the agent keeps its spool and retries.
public struct Ingestor: Sendable {
    let storage: any CollectorStorage
    let registry: KEKRegistry
    let logger: Logger
    let maxRecords: Int
    let storageErrors = RepeatedErrorLog()
    /// Token checks that failed because the storage did (not a wrong token): logged once.
    let authErrors = RepeatedErrorLog()

    public init(storage: any CollectorStorage, registry: KEKRegistry, logger: Logger,
                maxRecords: Int = WireAPI.defaultMaxRecordsPerRequest) {
        self.storage = storage
        self.registry = registry
        self.logger = logger
        self.maxRecords = maxRecords
    }

    /// The outcome of one upload.
    public enum Outcome: Sendable {
        /// HTTP 200 (something acknowledged, or an empty body) or 422 (nothing acknowledged).
        case results(status: Int, UploadResponse)
        /// A request-level error: HTTP status and body. 503 (storage failed) goes out with
        /// `Retry-After`.
        case error(status: Int, ErrorResponse)
    }

    /// Refused records of one upload logged one by one; the rest are counted in one line.
    public static let refusalsLoggedPerUpload = 5

    /// Processes `body` (a record stream) uploaded by `agentID` (already authenticated).
    ///
    /// Records are not copied out of `body`: each is a zero-based `Data` view of its bytes that
    /// keeps `body`'s storage alive (`ByteBuffer.getData(at:length:byteTransferStrategy: .noCopy)`).
    public func ingest(agentID: AgentID, body: ByteBuffer) async -> Outcome {
        let framed: [FramedRecord]
        do {
            let stream = body.getData(at: body.readerIndex, length: body.readableBytes, byteTransferStrategy: .noCopy) ?? Data()
            framed = try frameRecords(stream, maxRecords: maxRecords) { range in
                body.getData(at: body.readerIndex + range.lowerBound, length: range.count, byteTransferStrategy: .noCopy) ?? Data()
            }
        } catch {
            let tooMany = error.description.contains("more than")
            logger.warning("upload refused: bad record stream", metadata: [
                "collector.agent_id": .safe(agentID), "collector.error": .safe(error.description)])
            return .error(status: tooMany ? 413 : 400,
                          ErrorResponse(error: tooMany ? .tooLarge : .malformed, message: error.description))
        }
        // Whether each KEK id named is active, asked once per upload: an id the registry does not
        // know waits for one re-read of encryption_kek that starts after this upload arrived.
        let arrived = ContinuousClock.now
        var kekActive: [KEKID: Bool] = [:]
        func isActive(_ kek: KEKID) async -> Bool {
            if let known = kekActive[kek] { return known }
            let active = await registry.isActive(kek, askedAt: arrived)
            kekActive[kek] = active
            return active
        }
        var results: [RecordResult?] = Array(repeating: nil, count: framed.count)
        var items: [IngestItem] = []
        var itemIndex: [Int] = []
        // The first few refusals of an upload are logged one by one; the rest are counted, by
        // reason, in one line at the end (a body of 10,000 bad records is one request, not
        // 10,000 log lines).
        var refusalsLogged = 0
        var refusalsNotLogged: [String: Int] = [:]
        func logRefusal(_ index: Int, id: String?, reason: RefusalReason, _ message: String?) {
            guard refusalsLogged < Self.refusalsLoggedPerUpload else {
                refusalsNotLogged[reason.rawValue, default: 0] += 1
                return
            }
            refusalsLogged += 1
            var metadata: Logger.Metadata = ["collector.agent_id": .safe(agentID), "collector.record": .safe(id ?? "#\(index)"),
                                             "collector.reason": "\(reason.rawValue)"]
            if let message { metadata["collector.error"] = .safe(message) }
            logger.warning("record refused", metadata: metadata)
        }
        defer {
            if !refusalsNotLogged.isEmpty {
                let count = refusalsNotLogged.values.reduce(0, +)
                logger.warning("more records of this upload refused (not logged one by one)", metadata: [
                    "collector.agent_id": .safe(agentID), "collector.records": "\(count)",
                    "collector.reasons": "\(refusalsNotLogged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))"])
            }
        }
        for (i, rec) in framed.enumerated() {
            func refuse(_ reason: RefusalReason, retryable: Bool, id: String?, _ message: String) {
                results[i] = RecordResult(index: i, id: id, status: .refused, reason: reason, retryable: retryable,
                                          message: message)
                logRefusal(i, id: id, reason: reason, message)
            }
            switch rec.type {
            case 1:
                let r: DEKRecord
                do { r = try DEKRecord(parsing: rec.bytes) } catch {
                    refuse(.malformed, retryable: false, id: nil, "DEK record does not parse: \(error)")
                    continue
                }
                let id = r.dekID.hex, kek = r.kekID
                guard r.agentID == agentID.rawValue else {
                    refuse(.agentMismatch, retryable: false, id: id, "DEK record of agent '\(r.agentID)' uploaded by '\(agentID)'")
                    continue
                }
                guard await isActive(kek) else {
                    refuse(.unknownKEK, retryable: true, id: id, "KEK \(kek) is not an active encryption_kek row")
                    continue
                }
                items.append(.dek(StoredDEK(dekID: r.dekID, kekID: kek, agentID: agentID, creationTimeMs: r.creationTimeMs,
                                            record: rec.bytes)))
                itemIndex.append(i)
            case 2, 3:  // a sealed blob, or a sealed session blob (docs/FORMAT.md)
                let b: SealedBlob
                do { b = try SealedBlob(parsing: rec.bytes) } catch {
                    refuse(.malformed, retryable: false, id: nil, "sealed blob does not parse: \(error)")
                    continue
                }
                let h = b.header
                let id = h.blobID.hex, kek = h.kekID
                guard h.agentID == agentID.rawValue else {
                    refuse(.agentMismatch, retryable: false, id: id, "blob of agent '\(h.agentID)' uploaded by '\(agentID)'")
                    continue
                }
                guard await isActive(kek) else {
                    refuse(.unknownKEK, retryable: true, id: id, "KEK \(kek) is not an active encryption_kek row")
                    continue
                }
                items.append(.blob(StoredBlob(blobID: h.blobID, agentID: agentID, kind: h.kind, dekID: h.dekID, kekID: kek,
                                              sequence: Int64(bitPattern: h.sequence), captureTimeMs: h.captureTimeMs,
                                              bytes: rec.bytes, user: h.session?.user, display: h.session?.display)))
                itemIndex.append(i)
            default:
                refuse(.malformed, retryable: false, id: nil, "unknown record type \(rec.type)")
            }
        }
        if !items.isEmpty {
            let outcomes: [IngestOutcome]
            do throws(StorageError) {
                outcomes = try await storage.ingest(items, receivedAtMs: Int64((Date().timeIntervalSince1970 * 1000).rounded()))
                guard outcomes.count == items.count else {
                    throw StorageError(.failed, "the storage answered \(outcomes.count) outcomes for \(items.count) records")
                }
            } catch {
                // Logged once per kind of failure (say a full disk, with every agent retrying), then
                // at debug level until an upload is stored again.
                let level: Logger.Level = storageErrors.isNew("\(error.code)") ? .error : .debug
                logger.log(level: level, "storing an upload failed", metadata: ["collector.agent_id": .safe(agentID),
                                                                                "collector.error": .safe(error)])
                return .error(status: 503, ErrorResponse(
                    error: .unavailable, message: "the collector cannot store records now (storage \(error.code)); nothing was stored, try again later"))
            }
            var otherAgentIDs: [String] = []
            if let suppressed = storageErrors.recovered() {
                logger.notice("storing uploads works again", metadata: ["collector.repeats_not_logged": "\(suppressed)"])
            }
            for (k, outcome) in outcomes.enumerated() {
                let i = itemIndex[k], id = wireHex(items[k].idBytes)
                switch outcome {
                case .stored: results[i] = RecordResult(index: i, id: id, status: .stored)
                case .duplicate: results[i] = RecordResult(index: i, id: id, status: .duplicate)
                case .conflict:
                    results[i] = RecordResult(index: i, id: id, status: .refused, reason: .conflict, retryable: false,
                                              message: "a different record with this id is stored")
                    logRefusal(i, id: id, reason: .conflict, nil)
                case .unknownDEK:
                    results[i] = RecordResult(index: i, id: id, status: .refused, reason: .unknownDEK, retryable: true,
                                              message: "the blob's DEK record has not been uploaded")
                case .otherAgent:
                    // Answered as a new id is; the collector's log has the truth.
                    results[i] = RecordResult(index: i, id: id, status: .stored)
                    otherAgentIDs.append(id)
                }
            }
            if !otherAgentIDs.isEmpty {
                logger.warning("records not stored: their ids belong to another agent's records (answered as stored)",
                               metadata: ["collector.agent_id": .safe(agentID), "collector.records": "\(otherAgentIDs.count)",
                                          "collector.record": .safe(otherAgentIDs[0])])
            }
        }
        let final = results.enumerated().map { i, r in
            r ?? RecordResult(index: i, id: nil, status: .refused, reason: .malformed, retryable: false)
        }
        let acked = final.contains { $0.isAcknowledged }
        return .results(status: acked || final.isEmpty ? 200 : 422, UploadResponse(results: final))
    }
}
