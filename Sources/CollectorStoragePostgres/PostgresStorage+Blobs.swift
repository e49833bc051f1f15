import CollectorStorage
import CustosBase
import Envelope
import Foundation
import PostgresNIO

/// Large blobs in a shared blob directory (`blob-dir=`, docs/STORAGE.md "Blobs"): before a
/// batch's transaction, the bytes of its large blobs not stored yet are appended to this
/// instance's blob files and fdatasync'ed (``SharedBlobDirectory``); the rows then get an empty
/// `blob` and a `blob_ref`. A crash or a failed transaction in between leaves unreferenced bytes,
/// never a row without bytes. Idempotency stays in the database: of two instances storing one
/// blob id at once, one row wins (`ON CONFLICT DO NOTHING`) and the loser's bytes are unused.
extension PostgresStorage {
    /// The blob store of `blob-dir=`, nil without it; made at the first call (it reads the
    /// database's id, `blob_store.id`, the directory marker's content).
    /// - Throws: ``StorageError`` from the database (`.unavailable`, `.failed`), `.corrupt`
    ///   when `blob_store` holds no row.
    func sharedBlobDirectory() async throws(StorageError) -> SharedBlobDirectory? {
        guard let directory = configuration.blobDirectory else { return nil }
        if let store = state.withLock({ $0.blobStore }) { return store }
        let location = self.location
        let id = try await withClient("read the database id (blob_store)") { client in
            for try await (id) in try await client.query("SELECT id FROM blob_store LIMIT 1", logger: Self.quiet).decode(String.self) {
                return id
            }
            throw StorageError(.corrupt, "\(location): blob_store holds no row (migration 3 inserts the database's id)")
        }
        let store = try SharedBlobDirectory(directory: directory, instance: blobInstance, storeID: id)
        return state.withLock { s in
            if s.blobStore == nil { s.blobStore = store }
            return s.blobStore!
        }
    }

    /// Without `blob-dir=`: `.needed` when a row points into a blob file (one probe of the
    /// partial index `captures_blob_ref`), else `.notUsed`. With it: the directory and its
    /// marker checked (``SharedBlobDirectory/check(markerMayBeMissing:)``; a missing marker is
    /// fine only while `blob_store.marked_at` is unset), `.ready`.
    /// - Throws: `.unavailable` or `.failed` from the database.
    public func checkBlobDirectory() async throws(StorageError) -> BlobDirectoryCheck {
        guard let store = try await sharedBlobDirectory() else {
            let referenced = try await withClient("look for rows pointing into blob files") { client in
                try await client.query("SELECT 1 FROM captures WHERE blob_ref IS NOT NULL LIMIT 1", logger: Self.quiet)
                    .collect().count > 0
            }
            return referenced ? .needed : .notUsed
        }
        let marked = try await withClient("read whether a blob directory was marked") { client in
            for try await (m) in try await client.query("SELECT marked_at IS NOT NULL FROM blob_store LIMIT 1",
                                                        logger: Self.quiet).decode(Bool.self) {
                return m
            }
            return false
        }
        do {
            try await store.check(markerMayBeMissing: !marked)
        } catch {
            return .unusable(error.message)
        }
        return .ready
    }

    /// Appends the blobs of `items` of ``SharedBlobDirectory/minBytes`` or more whose ids are
    /// not stored yet (each id once) to this instance's blob files and makes them durable;
    /// returns their references by blob id. Empty without `blob-dir=`.
    /// - Throws: ``StorageError`` `.unavailable` naming the directory or file (missing, foreign,
    ///   unmounted: see ``SharedBlobDirectory/put(_:mayCreateMarker:)``): the batch is not stored.
    func putLargeBlobs(_ items: [IngestItem]) async throws(StorageError) -> [BlobID: BlobRef] {
        guard configuration.blobDirectory != nil else { return [:] }
        var large: [StoredBlob] = []
        for case .blob(let b) in items where b.bytes.count >= SharedBlobDirectory.minBytes { large.append(b) }
        if large.isEmpty { return [:] }
        guard let store = try await sharedBlobDirectory() else { return [:] }
        let ids = large.map(\.blobID.hex)
        let (present, marked) = try await withClient("look up \(ids.count) blob ids") { client in
            var present = Set<String>()
            for try await (id) in try await client.query("SELECT blob_id FROM captures WHERE blob_id = ANY(\(ids))",
                                                         logger: Self.quiet).decode(String.self) {
                present.insert(id)
            }
            var marked = false
            for try await (m) in try await client.query("SELECT marked_at IS NOT NULL FROM blob_store LIMIT 1",
                                                        logger: Self.quiet).decode(Bool.self) {
                marked = m
            }
            return (present, marked)
        }
        var seen = Set<BlobID>()
        let fresh = large.filter { !present.contains($0.blobID.hex) && seen.insert($0.blobID).inserted }
        if fresh.isEmpty { return [:] }
        let wasMarked = marked || state.withLock { $0.blobDirectoryMarked }
        let refs = try await store.put(fresh.map(\.bytes), mayCreateMarker: !wasMarked)
        if !wasMarked {
            // From now on a directory without the marker is refused (an unmounted volume).
            _ = try await withClient("record that the blob directory is marked") { client in
                try await client.query("UPDATE blob_store SET marked_at = now() WHERE marked_at IS NULL",
                                       logger: Self.quiet).collect().count
            }
        }
        state.withLock { $0.blobDirectoryMarked = true }
        return Dictionary(uniqueKeysWithValues: zip(fresh.map(\.blobID), refs))
    }

    /// The bytes of captures row `id` whose `blob_ref` is `refText`, checked: the reference
    /// parses, its size is the row's `size`, and the bytes parse as a sealed blob with id `id`.
    /// - Throws: ``StorageError`` naming the row or file: `.unavailable` without `blob-dir=`
    ///   (the bytes are elsewhere); `.corrupt` for a reference that does not parse, a size that
    ///   differs, a file missing or cut short, or bytes that are not that sealed blob.
    func referencedBytes(_ id: BlobID, refText: String, size: Int64) async throws(StorageError) -> Data {
        let row = "\(location): captures row \(id)"
        let ref = try BlobRef(text: refText, context: row)
        guard ref.size == size else {
            throw StorageError(.corrupt, "\(row): its blob reference \(ref) says \(ref.size) bytes, the row's size is \(size)")
        }
        guard let store = try await sharedBlobDirectory() else {
            throw StorageError(.unavailable, "\(row): its bytes are in blob file \(ref.fileName), but no blob directory is configured (blob-dir=)")
        }
        let bytes = try await store.read(ref)
        let file = SafeText.escaped(store.directory + "/" + ref.fileName)
        let parsed: SealedBlob
        do { parsed = try SealedBlob(parsing: bytes) } catch {
            throw StorageError(.corrupt, "\(file): the \(ref.size) bytes at offset \(ref.offset) (blob \(id)) do not parse as a sealed blob: \(SafeText.escaped(String(describing: error)))")
        }
        guard parsed.header.blobID == id else {
            throw StorageError(.corrupt, "\(file): the \(ref.size) bytes at offset \(ref.offset) are sealed blob \(parsed.header.blobID), expected \(id)")
        }
        return bytes
    }
}
