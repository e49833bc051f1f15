import CollectorStorage
import CustosBase
import Envelope
import Foundation

/// One stored sealed blob's metadata (no bytes): the admin-side view of a `captures` row or of a
/// blob header in a record stream. Times Unix ms; size in bytes. `agentID` is text: a record
/// stream's header names whatever agent sealed it.
struct SealedItem: Sendable, Equatable {
    var blobID: BlobID
    var agentID: String
    var kind: CaptureKind
    var dekID: DEKID
    var kekID: KEKID
    var sequence: Int64
    var captureTimeMs: Int64
    var size: Int
    /// The graphical session's user and display (a sealed session blob's header); nil otherwise.
    var user: UserName? = nil
    var display: String? = nil

    /// Its position in a listing (`(capture time, blob id)` order).
    var cursor: CaptureCursor { CaptureCursor(captureTimeMs: captureTimeMs, blobID: blobID) }
}

/// Where `custos decrypt`/`export` read sealed items from: the collector's storage (or a copy
/// of its database), or a record stream (a sealed file, an API export: DEK records and blobs
/// concatenated, docs/ARCHITECTURE.md "The record stream"). Nothing here needs a key.
protocol SealedItemSource {
    /// Human-readable name for messages (the database or file path).
    var name: String { get }
    /// One page of the captures `query` selects, strictly after `cursor` in the order of
    /// `CollectorStorage`'s listings (`(capture time, blob id)`, the query's direction), at most
    /// `limit`; `next` is nil on the last page.
    func captures(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) async throws -> (items: [SealedItem], next: CaptureCursor?)
    /// The DEK record bytes of a DEK id, nil when unknown.
    func dekRecord(_ id: DEKID) async throws -> Data?
    /// The sealed blob bytes of a blob id, nil when unknown.
    func blob(_ id: BlobID) async throws -> Data?
    /// What of the source could not be read although the rest could (a record stream whose
    /// last record was cut while it was written), in words; nil when it is whole.
    var damage: String? { get }
}

extension SealedItemSource {
    var damage: String? { nil }
}

extension SealedItemSource {
    /// Captures asked for at once: the most a walk holds in memory (metadata only).
    static var pageSize: Int { 1000 }

    /// Calls `body` with each page of the captures `query` selects, in order, until the last
    /// page or until `body` returns false.
    func forEachPage(_ query: CaptureQuery, _ body: ([SealedItem]) async throws -> Bool) async throws {
        var cursor: CaptureCursor?
        repeat {
            let page = try await captures(query, after: cursor, limit: Self.pageSize)
            guard try await body(page.items) else { return }
            cursor = page.next
        } while cursor != nil
    }
}

/// Sealed items in the collector's storage.
struct CollectorSource: SealedItemSource {
    let storage: any CollectorStorage
    let name: String

    func captures(_ query: CaptureQuery, after cursor: CaptureCursor?, limit: Int) async throws -> (items: [SealedItem], next: CaptureCursor?) {
        let page = try await storageCall { () throws(StorageError) in try await storage.captures(query, after: cursor, limit: limit) }
        return (page.items.map {
            SealedItem(blobID: $0.blobID, agentID: $0.agentID.rawValue, kind: $0.kind, dekID: $0.dekID, kekID: $0.kekID,
                       sequence: $0.sequence, captureTimeMs: $0.captureTimeMs, size: $0.size, user: $0.user,
                       display: $0.display)
        }, page.next)
    }
    func dekRecord(_ id: DEKID) async throws -> Data? {
        try await storageCall { () throws(StorageError) in try await storage.dekRecord(id) }
    }
    func blob(_ id: BlobID) async throws -> Data? {
        try await storageCall { () throws(StorageError) in try await storage.blob(id) }
    }
}

/// Sealed items in a record-stream file, parsed once into memory (the file is in memory anyway).
struct RecordStreamSource: SealedItemSource {
    let name: String
    let damage: String?
    private let deks: [DEKID: Data]
    private let blobs: [BlobID: SealedBlob]
    /// Every blob, in listing order (capture time, then blob id).
    private let infos: [SealedItem]

    /// - Throws: `AdminError.io` when the file cannot be read or is not a record stream.
    init(path: String) throws {
        name = path
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw AdminError(.io, "\(path): cannot read the record stream: \((error as NSError).localizedDescription)")
        }
        let records: [EnvelopeRecord]
        do {
            let (complete, torn) = try RecordStream.parseAllowingTornTail(data)
            records = complete
            damage = torn.map {
                "\(path): the last \($0.bytes) bytes (from byte \($0.offset)) are a record cut short (the writer was stopped mid-write); "
                    + "the \(complete.count) complete records before it were read"
            }
        } catch {
            throw AdminError(.io, "\(path): not a Custos record stream: \(error)")
        }
        var deks: [DEKID: Data] = [:], blobs: [BlobID: SealedBlob] = [:], infos: [SealedItem] = []
        for r in records {
            switch r {
            case .dekRecord(let d): deks[d.dekID] = d.serialized
            case .blob(let b):
                let h = b.header
                blobs[h.blobID] = b
                infos.append(SealedItem(blobID: h.blobID, agentID: h.agentID, kind: h.kind, dekID: h.dekID, kekID: h.kekID,
                                        sequence: Int64(bitPattern: h.sequence), captureTimeMs: h.captureTimeMs,
                                        size: b.serialized.count, user: h.session?.user, display: h.session?.display))
            }
        }
        self.deks = deks
        self.blobs = blobs
        self.infos = infos.sorted { Self.precedes($0.cursor, $1.cursor) }
    }

    /// The listing order: capture time, then blob id bytes (as the storage orders them).
    static func precedes(_ a: CaptureCursor, _ b: CaptureCursor) -> Bool {
        (a.captureTimeMs, a.blobID.hex) < (b.captureTimeMs, b.blobID.hex)
    }

    func captures(_ q: CaptureQuery, after cursor: CaptureCursor?, limit: Int) async throws -> (items: [SealedItem], next: CaptureCursor?) {
        let ascending = q.order == .ascending
        let ordered = ascending ? AnySequence(infos) : AnySequence(infos.reversed())
        let selected = ordered.lazy.filter { i in
            (q.agentID == nil || i.agentID == q.agentID?.rawValue) && (q.kind == nil || i.kind == q.kind)
                && (q.user == nil || i.user == q.user)
                && (q.sinceMs.map { i.captureTimeMs >= $0 } ?? true) && (q.untilMs.map { i.captureTimeMs < $0 } ?? true)
                && (cursor.map { ascending ? Self.precedes($0, i.cursor) : Self.precedes(i.cursor, $0) } ?? true)
        }
        let page = Array(selected.prefix(limit + 1))
        let items = Array(page.prefix(limit))
        return (items, page.count > limit ? items.last?.cursor : nil)
    }
    func dekRecord(_ id: DEKID) async throws -> Data? { deks[id] }
    func blob(_ id: BlobID) async throws -> Data? { blobs[id]?.serialized }
}
