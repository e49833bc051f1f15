import Collector
import Envelope
import Foundation

/// Where `custos decrypt`/`export` read sealed items from: a copy of the collector database, or a
/// record stream (a sealed file, an API export: DEK records and blobs concatenated,
/// docs/ARCHITECTURE.md "The record stream"). Nothing here needs a key.
/// One stored sealed blob's metadata (no bytes): the admin-side view of a `captures` row or a
/// blob header in a record stream. Ids are lowercase hex; times Unix ms; size in bytes.
struct SealedItem: Sendable, Equatable {
    var blobID: String
    var agentID: String
    var kind: String
    var dekID: String
    var kekID: String
    var sequence: Int64
    var captureTimeMs: Int64
    var size: Int
}

protocol SealedItemSource {
    /// Human-readable name for messages (the database or file path).
    var name: String { get }
    /// Captures matching `filter`, ordered by capture time.
    func captures(_ filter: CaptureFilter) throws -> [SealedItem]
    /// The DEK record bytes for a DEK id (lowercase hex), nil when unknown.
    func dekRecord(dekID: String) throws -> Data?
    /// The sealed blob bytes for a blob id (lowercase hex), nil when unknown.
    func blob(blobID: String) throws -> Data?
}

/// Sealed items in a collector database (read through the Collector store API).
struct CollectorSource: SealedItemSource {
    let store: any CollectorStore
    let name: String

    func captures(_ filter: CaptureFilter) throws -> [SealedItem] {
        do {
            return try store.listCaptures(filter).map {
                SealedItem(blobID: $0.blobID, agentID: $0.agentID, kind: $0.kind, dekID: $0.dekID, kekID: $0.kekID,
                           sequence: $0.sequence, captureTimeMs: $0.captureTimeMs, size: $0.size)
            }
        } catch { throw AdminError.fromCollector(error) }
    }
    func dekRecord(dekID: String) throws -> Data? {
        do { return try store.dekRecord(dekID: dekID) } catch { throw AdminError.fromCollector(error) }
    }
    func blob(blobID: String) throws -> Data? {
        do { return try store.blob(blobID: blobID) } catch { throw AdminError.fromCollector(error) }
    }
}

/// Sealed items in a record-stream file, parsed once into memory.
struct RecordStreamSource: SealedItemSource {
    let name: String
    private let deks: [String: Data]
    private let blobs: [String: SealedBlob]
    private let infos: [SealedItem]

    /// - Throws: `AdminError.io` when the file cannot be read or is not a record stream.
    init(path: String) throws {
        name = path
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw AdminError(.io, "\(path): cannot read the record stream: \((error as NSError).localizedDescription)")
        }
        let records: [EnvelopeRecord]
        do { records = try RecordStream.parse(data) } catch {
            throw AdminError(.io, "\(path): not a Custos record stream: \(error)")
        }
        var deks: [String: Data] = [:], blobs: [String: SealedBlob] = [:], infos: [SealedItem] = []
        for r in records {
            switch r {
            case .dekRecord(let d): deks[d.dekID.hex] = d.serialized
            case .blob(let b):
                let h = b.header
                blobs[h.blobID.hex] = b
                infos.append(SealedItem(blobID: h.blobID.hex, agentID: h.agentID, kind: h.kind.name,
                                         dekID: h.dekID.hex, kekID: h.kekID.hex, sequence: Int64(h.sequence),
                                         captureTimeMs: h.captureTimeMs, size: b.serialized.count))
            }
        }
        self.deks = deks
        self.blobs = blobs
        self.infos = infos.sorted { ($0.captureTimeMs, $0.agentID, $0.sequence) < ($1.captureTimeMs, $1.agentID, $1.sequence) }
    }

    func captures(_ f: CaptureFilter) throws -> [SealedItem] {
        let selected = infos.filter { i in
            (f.agentID == nil || i.agentID == f.agentID) && (f.kind == nil || i.kind == f.kind)
                && (f.sinceMs.map { i.captureTimeMs >= $0 } ?? true) && (f.untilMs.map { i.captureTimeMs < $0 } ?? true)
        }
        return f.limit.map { Array(selected.prefix($0)) } ?? selected
    }
    func dekRecord(dekID: String) throws -> Data? { deks[dekID] }
    func blob(blobID: String) throws -> Data? { blobs[blobID]?.serialized }
}
