import CollectorStorage
import CustosBase
import Envelope
import Foundation
import Hummingbird
import NIOCore

/// Items sealed to the collector's own KEK (`server-private-key-file`), opened here for any
/// logged-in admin (docs/API.md "Admin API"). End-to-end encrypted items never are.
extension AdminAPI {
    /// `GET /api/v1/captures/ID/plain`: an item sealed to the collector's own KEK, opened here
    /// (Envelope: the DEK record unwrapped with `server-private-key-file`, the blob opened with
    /// AES-256-GCM); an E2EE item is refused 403. Audited (`admin.open-collector-sealed`).
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
        guard let recordBytes = try await stored("read a DEK record", { () throws(StorageError) in try await storage.dekRecord(info.dekID) }),
              let blobBytes = try await stored("read a blob", { () throws(StorageError) in try await storage.blob(id) }) else {
            throw AdminHTTPError(.notFound, "capture \(id.hex): its DEK record or bytes are gone")
        }
        try await stored("append the audit record") { () throws(StorageError) in
            try await storage.appendAudit(actor: session.admin.rawValue, action: "admin.open-collector-sealed",
                                          detail: "blob=\(id.hex) agent=\(info.agentID) kind=\(info.kind.name) from \(context.clientIP)")
        }
        let plaintext: Data
        do {
            let opener = try key.unwrap(try DEKRecord(parsing: recordBytes))
            plaintext = try opener.open(try SealedBlob(parsing: blobBytes))
        } catch {
            logger.error("admin: a collector-sealed item does not open", metadata: ["admin.blob": "\(id.hex)", "admin.error": .safe(error)])
            throw AdminHTTPError(.unprocessableContent, "capture \(id.hex) does not open with the collector's key (damaged or tampered)")
        }
        return Response(status: .ok, headers: [.contentType: "application/octet-stream", .cacheControl: "no-store"],
                        body: .init(byteBuffer: ByteBuffer(bytes: plaintext)))
    }
}
