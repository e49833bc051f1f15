import CollectorStorage
import CustosBase
import Envelope
import Foundation
import Hummingbird
import NIOCore

/// Items sealed to the collector's own KEK (`server-private-key-file`), opened here for any
/// logged-in admin (docs/API.md "Admin API"): `GET /api/v1/captures/ID/plain` (one) and
/// `POST /api/v1/plain` (up to 100, one audit record). End-to-end encrypted items never are.
extension AdminAPI {
    /// `GET /api/v1/captures/ID/plain`: an item sealed to the collector's own KEK, opened here
    /// (``openOwn(_:_:openers:)``); an E2EE item is refused 403. Audited (`admin.open-collector-sealed`).
    func plain(_ request: Request, _ context: AdminRequestContext, _ session: AdminSession) async throws -> Response {
        guard let text = context.parameters.get("id"), let id = BlobID(hex: text) else {
            throw AdminHTTPError.badParameter("id", "expected 32 hex digits")
        }
        let storage = self.storage
        guard let info = try await stored("read a capture", { () throws(StorageError) in try await storage.capture(id) }) else {
            throw AdminHTTPError(.notFound, "no capture \(id.hex)")
        }
        guard let key = ownKey, info.kekID == key.id else {
            throw AdminHTTPError.forbidden("end-to-end encrypted: decrypt in your browser")
        }
        try await stored("append the audit record") { () throws(StorageError) in
            try await storage.appendAudit(actor: session.admin.rawValue, action: "admin.open-collector-sealed",
                                          detail: "blob=\(id.hex) agent=\(info.agentID) kind=\(info.kind.name) from \(context.clientIP)")
        }
        var openers: [DEKID: BlobOpener] = [:]
        switch try await openOwn(info, key, openers: &openers) {
        case .opened(let plaintext):
            return Response(status: .ok, headers: [.contentType: "application/octet-stream", .cacheControl: "no-store"],
                            body: .init(byteBuffer: ByteBuffer(bytes: plaintext)))
        case .gone:
            throw AdminHTTPError(.notFound, "capture \(id.hex): its DEK record or bytes are gone")
        case .damaged:
            throw AdminHTTPError(.unprocessableContent, "capture \(id.hex) does not open with the collector's key (damaged or tampered)")
        case .unreadable:
            throw AdminHTTPError(.internalServerError,
                                 "capture \(id.hex): the collector cannot read its stored bytes (blob file missing or damaged; see the collector's log)")
        }
    }

    /// Most ids of one `POST /api/v1/plain`.
    static let maxPlainIDs = 100

    /// `POST /api/v1/plain` `{"ids": [1…100 × 32 hex]}`: several items sealed to the
    /// collector's own KEK opened in one request, with one audit record (docs/API.md "Admin
    /// API", "Opened items"). The answer is ``PlainFrame``s, one per distinct id in the order
    /// asked: the payload of each item that opens, a status for the others (not found,
    /// end-to-end encrypted, damaged). The audit record is written before any byte is sent,
    /// and only when at least one item is to be opened; items are read and opened one at a time
    /// while the answer is written (each DEK unwrapped once per request).
    func plainBatch(_ request: Request, _ context: AdminRequestContext, _ session: AdminSession) async throws -> Response {
        let body = try await AdminJSON.object(request)
        guard body["ids"] != nil else { throw AdminHTTPError.badParameter("ids", "expected a list of 1 to \(Self.maxPlainIDs) ids") }
        let listed = try Self.ids(body["ids"], "ids", BlobIDKind.self, max: Self.maxPlainIDs)
        guard !listed.isEmpty else { throw AdminHTTPError.badParameter("ids", "expected a list of 1 to \(Self.maxPlainIDs) ids") }
        var seen = Set<BlobID>(), ids: [BlobID] = []
        for id in listed where seen.insert(id).inserted { ids.append(id) }
        let storage = self.storage, key = ownKey
        // What each id is, before anything is audited or sent.
        var found: [(BlobID, CaptureInfo?)] = []
        for id in ids {
            found.append((id, try await stored("read a capture", { () throws(StorageError) in try await storage.capture(id) })))
        }
        let items = found
        let toOpen = items.compactMap { $0.1 }.filter { $0.kekID == key?.id }
        let missing = items.count { $0.1 == nil }
        if !toOpen.isEmpty {
            let shown = toOpen.prefix(20).map(\.blobID.hex).joined(separator: ",") + (toOpen.count > 20 ? ",…" : "")
            try await stored("append the audit record") { () throws(StorageError) in
                try await storage.appendAudit(actor: session.admin.rawValue, action: "admin.open-collector-sealed",
                                              detail: "blobs=\(toOpen.count) e2ee=\(items.count - toOpen.count - missing) missing=\(missing) from \(context.clientIP); blobs: \(shown)")
            }
        }
        let bodyWriter = ResponseBody { writer in
            var openers: [DEKID: BlobOpener] = [:]
            for (id, info) in items {
                guard let info else { try await writer.write(PlainFrame.buffer(id, .notFound)); continue }
                guard let key, info.kekID == key.id else { try await writer.write(PlainFrame.buffer(id, .endToEnd)); continue }
                // The head is sent already: a storage failure now (logged by `stored`) is this
                // item's status, never an answer cut short.
                let opening: OwnOpening
                do { opening = try await self.openOwn(info, key, openers: &openers) } catch { opening = .unreadable }
                switch opening {
                case .opened(let plaintext) where plaintext.count <= PlainFrame.maxPayload:
                    try await writer.write(PlainFrame.buffer(id, .opened, payload: plaintext))
                case .gone: try await writer.write(PlainFrame.buffer(id, .notFound))
                case .unreadable: try await writer.write(PlainFrame.buffer(id, .unreadable))
                case .opened, .damaged:
                    try await writer.write(PlainFrame.buffer(id, .damaged))
                }
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/octet-stream", .cacheControl: "no-store"], body: bodyWriter)
    }

    /// What opening one item sealed to the collector's own KEK gave.
    enum OwnOpening {
        case opened(Data)
        /// Its DEK record or bytes are no longer stored (retention since the listing).
        case gone
        /// It does not open: damaged or tampered (logged).
        case damaged
        /// Its stored bytes cannot be read: a blob file missing or cut short (logged).
        case unreadable
    }

    /// Opens the item `info` (sealed to `key`, the collector's own KEK): its DEK record
    /// unwrapped with `server-private-key-file` (once per DEK: `openers` keeps them for the
    /// request), its blob opened with AES-256-GCM (Envelope); a blob whose header names another
    /// id than its row is damaged too.
    /// - Throws: 503 (``AdminHTTPError``) when the storage fails (`.unreadable` is returned
    ///   instead when the blob's stored bytes are damaged: ``StorageError/Code/corrupt``).
    func openOwn(_ info: CaptureInfo, _ key: KEKPrivateKey, openers: inout [DEKID: BlobOpener]) async throws -> OwnOpening {
        let storage = self.storage, id = info.blobID
        var opener = openers[info.dekID]
        if opener == nil {
            guard let recordBytes = try await stored("read a DEK record", { () throws(StorageError) in try await storage.dekRecord(info.dekID) })
            else { return .gone }
            do {
                opener = try key.unwrap(try DEKRecord(parsing: recordBytes))
                openers[info.dekID] = opener
            } catch {
                logger.error("admin: a collector-sealed DEK record does not unwrap", metadata: ["admin.blob": "\(id.hex)", "admin.error": .safe(error)])
                return .damaged
            }
        }
        guard let opener else { return .gone }
        let read: Data?
        do { read = try await storage.blob(id) } catch {
            logger.warning("admin: storage failed", metadata: ["admin.what": "read blob \(id.hex)", "admin.error": .safe(error.message)])
            guard error.code == .corrupt else { throw AdminHTTPError.unavailable() }
            return .unreadable
        }
        guard let blobBytes = read else { return .gone }
        do {
            let blob = try SealedBlob(parsing: blobBytes)
            guard blob.header.blobID == id else {
                logger.error("admin: a collector-sealed item's row holds another blob",
                             metadata: ["admin.blob": "\(id.hex)", "admin.found": "\(blob.header.blobID.hex)"])
                return .damaged
            }
            return .opened(try opener.open(blob))
        } catch {
            logger.error("admin: a collector-sealed item does not open", metadata: ["admin.blob": "\(id.hex)", "admin.error": .safe(error)])
            return .damaged
        }
    }
}

/// One item of a `POST /api/v1/plain` answer (docs/API.md "Admin API", "Opened items"): a
/// 26-byte header shaped like docs/FORMAT.md's record prefix, then the payload. Big-endian.
/// A `POST /api/v1/sealed` answer carries payload-less ones in place of blobs it cannot send.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `CPLN` = `43 50 4C 4E` |
/// | 4 | 1 | version `01` |
/// | 5 | 1 | status (``Status``) |
/// | 6 | 4 | total length of this item, header included (u32) |
/// | 10 | 16 | blob id |
/// | 26 | n | the payload as `GET …/plain` gives it (status `00` only; otherwise n = 0) |
enum PlainFrame {
    enum Status: UInt8 {
        /// Opened: the payload follows.
        case opened = 0
        /// No such capture (or its bytes or DEK record are gone).
        case notFound = 1
        /// Not sealed to the collector's own KEK: end-to-end encrypted, decrypt in the browser.
        case endToEnd = 2
        /// Sealed to the collector's KEK but does not open: damaged or tampered.
        case damaged = 3
        /// The collector cannot read its stored bytes: a blob file missing or cut short, or the
        /// database failed while answering (logged). Also in a `POST /api/v1/sealed` answer,
        /// in place of a blob, as is `notFound` for a blob gone since the request began.
        case unreadable = 4
    }

    static let magic: [UInt8] = Array("CPLN".utf8)
    static let version: UInt8 = 1
    static let headerSize = 26
    /// The largest payload a u32 total length can carry.
    static let maxPayload = Int(UInt32.max) - headerSize

    /// The bytes of one item; `payload` only with `.opened` (at most ``maxPayload`` bytes).
    static func buffer(_ id: BlobID, _ status: Status, payload: Data = Data()) -> ByteBuffer {
        precondition(status == .opened || payload.isEmpty, "only an opened item has a payload")
        var buffer = ByteBuffer()
        buffer.reserveCapacity(headerSize + payload.count)
        buffer.writeBytes(magic)
        buffer.writeInteger(version)
        buffer.writeInteger(status.rawValue)
        buffer.writeInteger(UInt32(headerSize + payload.count))
        buffer.writeBytes(id.bytes)
        buffer.writeBytes(payload)
        return buffer
    }
}
