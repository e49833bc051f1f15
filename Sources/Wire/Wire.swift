// Agent <-> collector API types (docs/API.md).
//
// Foundation only: both the agent's Transport and the Collector encode and decode these.

import CustosBase
import Foundation

/// Constants of the agent <-> collector HTTP API, version 1 (docs/API.md).
public enum WireAPI {
    /// `POST` target for uploads: the body is a record stream (docs/FORMAT.md, docs/ARCHITECTURE.md).
    public static let recordsPath = "/v1/records"
    /// `GET` target answering ``HealthResponse``; needs no authentication.
    public static let healthPath = "/v1/health"
    /// Content type of an upload body: concatenated Envelope records, binary.
    public static let recordsContentType = "application/vnd.custos.records"
    /// Content type of every answer body.
    public static let jsonContentType = "application/json"
    /// Default (and recommended) upper bound of an upload body, in bytes (16 MiB). Larger bodies get 413.
    public static let defaultMaxRequestBytes = 16 * 1024 * 1024
    /// Default upper bound of records in one upload body. More get 413.
    public static let defaultMaxRecordsPerRequest = 10_000
    /// Length of the common record prefix in bytes: magic `CSTS`, version, type, u32 BE total length.
    public static let recordPrefixLength = 10
    /// The record magic `CSTS`.
    public static let recordMagic: [UInt8] = [0x43, 0x53, 0x54, 0x53]

    /// The `Authorization` header value for an agent: `Bearer AGENTID:TOKEN`. The one place the
    /// token is revealed: call it only to send the header.
    public static func authorization(agentID: AgentID, token: Secret) -> String {
        "Bearer \(agentID.rawValue):\(token.revealed)"
    }

    /// Parses `Bearer AGENTID:TOKEN`; nil when the header has another shape.
    public static func parseAuthorization(_ header: String) -> (agentID: String, token: String)? {
        let prefix = "Bearer "
        guard header.hasPrefix(prefix) else { return nil }
        let rest = header.dropFirst(prefix.count)
        guard let colon = rest.firstIndex(of: ":") else { return nil }  // agent ids hold no ":"
        let agent = String(rest[rest.startIndex..<colon])
        let token = String(rest[rest.index(after: colon)...])
        guard isValidAgentID(agent), !token.isEmpty else { return nil }
        return (agent, token)
    }

    /// Agent ids: ``AgentID/isValid(_:)`` (1 to 64 characters of `A-Z a-z 0-9 . _ -`, not `.` or `..`).
    public static func isValidAgentID(_ id: String) -> Bool { AgentID.isValid(id) }
}

/// What the collector did with one record of an upload.
public enum RecordStatus: String, Codable, Sendable, Equatable {
    /// Newly stored. Counts as an acknowledgement.
    case stored
    /// Already stored earlier (same id): nothing written. Counts as an acknowledgement.
    case duplicate
    /// Not stored; see ``RecordResult/reason`` and ``RecordResult/retryable``.
    case refused
}

/// Machine-readable reasons for a refusal (per record) or an error (per request).
public enum RefusalReason: String, Codable, Sendable, Equatable, CaseIterable {
    /// The record is wrapped/sealed under a KEK id that is not an active `encryption_kek` row. Retryable:
    /// the agent keeps it spooled until an administrator registers the key.
    case unknownKEK = "unknown-kek"
    /// A blob names a DEK whose DEK record the collector has not stored (send the DEK record first). Retryable.
    case unknownDEK = "unknown-dek"
    /// The record (or the body framing) does not parse. Not retryable.
    case malformed
    /// The record's agent id is not the authenticated agent's. Not retryable.
    case agentMismatch = "agent-mismatch"
    /// A record with this id exists with different bytes. Not retryable.
    case conflict
    /// The collector could not write; try again later. Retryable. (Collectors since issue 14
    /// answer a storage failure with 503 `unavailable` and `Retry-After` for the whole upload
    /// instead; agents still understand this per-record form.)
    case storageError = "storage-error"
    /// Missing or wrong `Authorization`. (Request level, 401.)
    case unauthorized
    /// The body exceeds the request size or record count limit. (Request level, 413.)
    case tooLarge = "too-large"
    /// Wrong content type. (Request level, 415.)
    case unsupportedMediaType = "unsupported-media-type"
    /// The collector is overloaded or shutting down, the agent has `max-uploads-per-agent`
    /// uploads in flight, or its storage failed (nothing of the upload stored). (Request level,
    /// 503 with `Retry-After`.)
    case unavailable
    /// The body did not arrive within `body-timeout-seconds`. Retryable. (Request level, 408.)
    case timeout
}

/// The collector's verdict on one record of an upload.
public struct RecordResult: Codable, Sendable, Equatable {
    /// Position of the record in the upload body, from 0.
    public var index: Int
    /// The record id (DEK id or blob id) as lowercase hex, nil when the record did not parse far enough.
    public var id: String?
    public var status: RecordStatus
    /// Set when `status == .refused`.
    public var reason: RefusalReason?
    /// Set when `status == .refused`: whether sending the same bytes later may succeed.
    public var retryable: Bool?
    /// Human-readable detail for logs (never key bytes or plaintext).
    public var message: String?

    public init(index: Int, id: String?, status: RecordStatus, reason: RefusalReason? = nil,
                retryable: Bool? = nil, message: String? = nil) {
        self.index = index
        self.id = id
        self.status = status
        self.reason = reason
        self.retryable = retryable
        self.message = message
    }

    /// True for `stored` and `duplicate`: the agent may delete its copy.
    public var isAcknowledged: Bool { status == .stored || status == .duplicate }
}

/// Body of the answer to `POST /v1/records` (status 200, or 422 when no record was acknowledged).
public struct UploadResponse: Codable, Sendable, Equatable {
    /// One result per record of the body, in body order.
    public var results: [RecordResult]
    public init(results: [RecordResult]) { self.results = results }
}

/// Body of every non-2xx answer other than 422 (`{"error": "malformed", "message": "..."}`).
public struct ErrorResponse: Codable, Sendable, Equatable {
    public var error: RefusalReason
    public var message: String
    public init(error: RefusalReason, message: String) {
        self.error = error
        self.message = message
    }
}

/// Body of `GET /v1/health`.
public struct HealthResponse: Codable, Sendable, Equatable {
    /// `ok` while the collector accepts uploads; `storage-failing` while its last attempt to
    /// store an upload failed (full disk, missing blob directory, database down or locked, …;
    /// its log says which) or its storage does not answer.
    public var status: String
    /// API version, 1.
    public var apiVersion: Int
    /// Number of active KEKs whose public key (row or file) could be read.
    public var activeKEKs: Int
    /// Which storage the collector uses and whether it answers (absent from collectors before
    /// issue 14).
    public var storage: Storage?

    /// The collector's storage, as `GET /v1/health` reports it.
    public struct Storage: Codable, Sendable, Equatable {
        /// `sqlite` or `postgresql`.
        public var backend: String
        /// The database file, or `HOST:PORT/DBNAME` (never a password).
        public var location: String
        /// Whether the storage answered a check (at most a second ago).
        public var reachable: Bool
        public init(backend: String, location: String, reachable: Bool) {
            self.backend = backend
            self.location = location
            self.reachable = reachable
        }
    }

    public init(status: String, apiVersion: Int, activeKEKs: Int, storage: Storage? = nil) {
        self.status = status
        self.apiVersion = apiVersion
        self.activeKEKs = activeKEKs
        self.storage = storage
    }
}

/// Lowercase hex of bytes (record ids on the wire and in logs).
public func wireHex<D: Collection<UInt8>>(_ bytes: D) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// One record's bytes cut out of a record stream by its 10-byte prefix alone (no parsing of the inside).
public struct FramedRecord: Sendable {
    /// Record type byte: 1 = DEK record, 2 = sealed blob, 3 = sealed session blob (others are
    /// passed through for the parser to refuse).
    public var type: UInt8
    /// The whole record, prefix included.
    public var bytes: Data
}

/// Why a record stream could not be cut into records.
public struct FramingError: Error, CustomStringConvertible, Sendable {
    /// Byte offset of the bad record prefix.
    public var offset: Int
    public var description: String
}

/// Cuts a record stream into records using only the common 10-byte prefix
/// (magic `CSTS`, version, type, u32 big-endian total length; docs/ARCHITECTURE.md).
///
/// - Parameters:
///   - stream: the record stream (any start index).
///   - maxRecords: more records than this throw.
///   - cut: makes one record's bytes from its byte range, counted from the start of `stream`
///     (0-based). Without it the bytes are copied into a new zero-based `Data`; a receiver that
///     holds the stream in another buffer can hand out views of that buffer instead (the
///     collector does, so a 4 MiB upload is not copied record by record).
/// - Throws: ``FramingError`` when a prefix is missing, has the wrong magic, declares a length
///   below 10 bytes, or runs past the end of `stream`.
public func frameRecords(_ stream: Data, maxRecords: Int = .max,
                         cut: ((Range<Int>) -> Data)? = nil) throws(FramingError) -> [FramedRecord] {
    var out: [FramedRecord] = []
    var offset = stream.startIndex
    while offset < stream.endIndex {
        let at = offset - stream.startIndex
        guard stream.endIndex - offset >= WireAPI.recordPrefixLength else {
            throw FramingError(offset: at, description: "record stream truncated at byte \(at): \(stream.endIndex - offset) bytes left, a record prefix needs 10")
        }
        guard stream[offset..<offset + 4].elementsEqual(WireAPI.recordMagic) else {
            throw FramingError(offset: at, description: "record stream: no CSTS magic at byte \(at)")
        }
        let type = stream[offset + 5]
        var length = 0
        for i in 6..<10 { length = length << 8 | Int(stream[offset + i]) }
        guard length >= WireAPI.recordPrefixLength else {
            throw FramingError(offset: at, description: "record stream: record at byte \(at) declares length \(length) < 10")
        }
        guard stream.endIndex - offset >= length else {
            throw FramingError(offset: at, description: "record stream: record at byte \(at) declares \(length) bytes, only \(stream.endIndex - offset) present")
        }
        guard out.count < maxRecords else {
            throw FramingError(offset: at, description: "record stream: more than \(maxRecords) records")
        }
        let bytes = cut?(at..<at + length) ?? Data(stream[offset..<offset + length])
        out.append(FramedRecord(type: type, bytes: bytes))
        offset += length
    }
    return out
}
