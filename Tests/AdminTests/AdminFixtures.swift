import CaptureFormat
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import TestSupport
@testable import Admin

/// A small but real PNG (RGB, 8-bit, stored deflate blocks) whose pixels depend on `seed`.
/// Built by hand (PNG spec ISO/IEC 15948: IHDR, IDAT with a zlib stream, IEND; CRC-32 per chunk).
func makePNG(width: Int, height: Int, seed: UInt8) -> Data {
    func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xffff_ffff
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = (c & 1) != 0 ? 0xedb8_8320 ^ (c >> 1) : c >> 1 }
        }
        return c ^ 0xffff_ffff
    }
    func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }
    func chunk(_ type: String, _ body: [UInt8]) -> [UInt8] {
        let tb = Array(type.utf8) + body
        return be32(UInt32(body.count)) + tb + be32(crc32(tb))
    }
    var raw: [UInt8] = []
    for y in 0..<height {
        raw.append(0)  // filter: none
        for x in 0..<width {
            raw += [UInt8(truncatingIfNeeded: x &* 3 &+ Int(seed)), UInt8(truncatingIfNeeded: y &* 5), seed]
        }
    }
    // zlib: header, stored blocks of ≤ 65535 bytes, Adler-32.
    var z: [UInt8] = [0x78, 0x01]
    var i = 0
    repeat {
        let n = min(65535, raw.count - i)
        let last: UInt8 = i + n == raw.count ? 1 : 0
        z += [last, UInt8(n & 0xff), UInt8(n >> 8), UInt8(~n & 0xff), UInt8((~n >> 8) & 0xff)]
        z += raw[i..<(i + n)]
        i += n
    } while i < raw.count
    var a: UInt32 = 1, b: UInt32 = 0
    for byte in raw { a = (a + UInt32(byte)) % 65521; b = (b + a) % 65521 }
    z += be32(b << 16 | a)
    let ihdr = be32(UInt32(width)) + be32(UInt32(height)) + [8, 2, 0, 0, 0]
    let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", ihdr) + chunk("IDAT", z) + chunk("IEND", [])
    return Data(png)
}

/// What an agent captured, in plaintext, for comparing with decrypted output.
struct Captured {
    var frames: [(blobID: String, meta: FrameMetadata, png: Data)] = []
    var chunks: [(blobID: String, chunk: KeystrokeChunk)] = []
    var tampered: [String] = []
    var records: [EnvelopeRecord] = []
}

/// Seals captures for `agent` under `sessions` fresh DEKs to `kek`, stores them in `store`
/// through the storage seam (as the collector would after an upload), and returns the
/// plaintext originals. Blob `tamperIndex` (counting all blobs) gets one ciphertext byte flipped.
func fillCollector(_ store: any CollectorStorage, kek: KEKPublicKey, agent: String, baseMs: Int64,
                   framesPerDEK: Int = 2, chunksPerDEK: Int = 2, sessions: Int = 2,
                   tamperIndex: Int? = nil, frameSize: Int = 8) async throws -> Captured {
    var out = Captured()
    var items: [IngestItem] = []
    var blobIndex = 0
    for s in 0..<sessions {
        let session = try DEKSession(kek: kek, agentID: agent)
        let r = session.record
        items.append(ingestItem(r))
        out.records.append(.dekRecord(r))
        func add(_ blob: SealedBlob) {
            var bytes = blob.serialized
            if blobIndex == tamperIndex {
                bytes[bytes.count - 20] ^= 0x01  // a ciphertext byte
                out.tampered.append(blob.header.blobID.hex)
            }
            blobIndex += 1
            items.append(ingestItem(blob, bytes: bytes))
            out.records.append(.blob(try! SealedBlob(parsing: bytes)))
        }
        for f in 0..<framesPerDEK {
            let t = baseMs + Int64(s * 10_000 + f * 1000)
            let meta = FrameMetadata(monitor: f % 2, monitorName: f % 2 == 0 ? "DP-1" : "HDMI/2", x: (f % 2) * 640, y: 0,
                                     width: frameSize + f, height: 6 * frameSize / 8, captureTimeMs: t)
            let png = makePNG(width: frameSize + f, height: 6 * frameSize / 8, seed: UInt8(truncatingIfNeeded: s * 16 + f))
            let blob = try session.seal(FramePayload.encode(meta, png: png), kind: .screen, captureTimeMs: t)
            out.frames.append((blob.header.blobID.hex, meta, png))
            add(blob)
        }
        for c in 0..<chunksPerDEK {
            let t = baseMs + Int64(s * 10_000 + c * 1000 + 500)
            let keys = "héllo [\(s)-\(c)]".map { Keystroke(timeMs: t, text: KeyToken.literal(String($0))) }
                + [Keystroke(timeMs: t + 10, text: "[Enter]")]
            let chunk = KeystrokeChunk(windowTitle: c % 2 == 0 ? "Terminal: ~/src" : "Notes — Editor",
                                       wmClass: c % 2 == 0 ? "xterm.XTerm" : "gedit.Gedit",
                                       startMs: t, endMs: t + 10, keys: keys)
            let blob = try session.seal(chunk.encoded(), kind: .keystrokes, captureTimeMs: t)
            out.chunks.append((blob.header.blobID.hex, chunk))
            add(blob)
        }
    }
    let outcomes = try await store.ingest(items, receivedAtMs: baseMs + 100_000)
    guard outcomes.allSatisfy({ $0 == .stored }) else { throw TestSupportError("ingest: \(outcomes)") }
    return out
}

/// A DEK record as the collector stores it.
func ingestItem(_ r: DEKRecord) -> IngestItem {
    .dek(StoredDEK(dekID: r.dekID, kekID: r.kekID, agentID: aid(r.agentID), creationTimeMs: r.creationTimeMs,
                   record: r.serialized))
}

/// A sealed blob as the collector stores it: its header's fields and `bytes` (default its own).
func ingestItem(_ b: SealedBlob, bytes: Data? = nil) -> IngestItem {
    let h = b.header
    return .blob(StoredBlob(blobID: h.blobID, agentID: aid(h.agentID), kind: h.kind, dekID: h.dekID, kekID: h.kekID,
                            sequence: Int64(bitPattern: h.sequence), captureTimeMs: h.captureTimeMs,
                            bytes: bytes ?? b.serialized, user: h.session?.user, display: h.session?.display))
}

/// An agent id known to be valid.
func aid(_ text: String) -> AgentID { try! AgentID(text) }

/// The whole audit log, oldest first.
func allAudit(_ storage: any CollectorStorage) async throws -> [AuditEntry] {
    try await storage.auditEntries(before: nil, limit: 10_000).reversed()
}

/// Every capture `query` selects, all pages.
func allCaptures(_ storage: any CollectorStorage, _ query: CaptureQuery = CaptureQuery()) async throws -> [CaptureInfo] {
    var out: [CaptureInfo] = [], cursor: CaptureCursor?
    repeat {
        let page = try await storage.captures(query, after: cursor, limit: 1000)
        out += page.items
        cursor = page.next
    } while cursor != nil
    return out
}

/// `custos keys register` on the SQLite database `db` (created if missing).
func registerKEK(db: String, publicKey: String, privateKey: String?) async throws -> (row: Int64, kekID: String) {
    let storage = try SQLiteStorage(path: db)
    do {
        let result = try await KEKRows.register(storage, publicKey: publicKey, privateKey: privateKey)
        await storage.close()
        return result
    } catch {
        await storage.close()
        throw error
    }
}

/// All regular files under `dir`, as paths relative to it.
func filesUnder(_ dir: String) -> [String] {
    guard let e = FileManager.default.enumerator(atPath: dir) else { return [] }
    var out: [String] = []
    while let p = e.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: dir + "/" + p, isDirectory: &isDir), !isDir.boolValue { out.append(p) }
    }
    return out.sorted()
}

func secret(_ s: String) -> SecretBytes { SecretBytes(copying: Array(s.utf8)) }

/// The manifest as loose JSON.
func readManifest(_ data: Data) throws -> [String: Any] {
    guard let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
        throw TestSupportError("manifest is not a JSON object")
    }
    return obj
}
