import Foundation
import Testing
import TestSupport
@testable import Envelope

@Suite("DEK sessions")
struct SessionTests {
    @Test("round trip of every kind and size, including empty and 1 MiB")
    func roundTrip() throws {
        let session = try DEKSession(kek: FixtureKeys.kek, agentID: "host")
        let opener = try FixtureKeys.privateKey.unwrap(session.record)
        for (i, size) in [0, 1, 15, 16, 17, 4096, 1 << 20].enumerated() {
            let kind = CaptureKind.allCases[i % CaptureKind.allCases.count]
            let plain = Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) })
            let blob = try session.seal(plain, kind: kind, captureTimeMs: Int64(i))
            #expect(blob.header.kind == kind)
            #expect(blob.header.sequence == UInt64(i))
            #expect(blob.serialized.count == 93 + 4 + size + 16)
            #expect(try opener.open(try SealedBlob(parsing: blob.serialized)) == plain)
        }
        #expect(session.blobsSealed == 7)
        #expect(session.bytesSealed == [0, 1, 15, 16, 17, 4096, 1 << 20].reduce(0, +))
    }

    @Test("same plaintext twice: fresh blob ids, different ciphertexts")
    func freshBlobIDs() throws {
        let session = try DEKSession(kek: FixtureKeys.kek, agentID: "host")
        let p = Data(repeating: 0x41, count: 64)
        let a = try session.seal(p, kind: .generic, captureTimeMs: 1)
        let b = try session.seal(p, kind: .generic, captureTimeMs: 1)
        #expect(a.header.blobID != b.header.blobID)
        #expect(a.serialized.suffix(80) != b.serialized.suffix(80))
        let s2 = try DEKSession(kek: FixtureKeys.kek, agentID: "host")
        #expect(s2.record.dekID != session.record.dekID)
        #expect(s2.record.wrappedDEK != session.record.wrappedDEK)
        #expect(s2.dek.withUnsafeBytes { Array($0) } != session.dek.withUnsafeBytes { Array($0) })
    }

    @Test("concurrent seals get unique, gap-free sequence numbers")
    func concurrentSeal() async throws {
        let session = try DEKSession(kek: FixtureKeys.kek, agentID: "host")
        let sequences = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for t in 0..<8 {
                group.addTask {
                    try (0..<50).map { _ in try session.seal(Data([UInt8(t)]), kind: .screen, captureTimeMs: 0).header.sequence }
                }
            }
            var all: [UInt64] = []
            for try await s in group { all += s }
            return all
        }
        #expect(sequences.sorted() == (0..<400).map(UInt64.init))
        #expect(session.blobsSealed == 400)
    }

    @Test("rotation policy: blobs, bytes, age, none")
    func rotation() throws {
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        let session = try DEKSession(kek: FixtureKeys.kek, agentID: "host", now: t0)
        #expect(!session.needsRotation(RotationPolicy(), now: t0.addingTimeInterval(1e9)))
        #expect(!session.needsRotation(RotationPolicy(maxBlobs: 2, maxBytes: 100, maxAge: 3600), now: t0))
        _ = try session.seal(Data(count: 60), kind: .screen, captureTimeMs: 0)
        #expect(!session.needsRotation(RotationPolicy(maxBlobs: 2), now: t0))
        _ = try session.seal(Data(count: 60), kind: .screen, captureTimeMs: 0)
        #expect(session.needsRotation(RotationPolicy(maxBlobs: 2), now: t0))
        #expect(session.needsRotation(RotationPolicy(maxBytes: 120), now: t0))
        #expect(!session.needsRotation(RotationPolicy(maxBytes: 121), now: t0))
        #expect(!session.needsRotation(RotationPolicy(maxAge: 3600), now: t0.addingTimeInterval(3599)))
        #expect(session.needsRotation(RotationPolicy(maxAge: 3600), now: t0.addingTimeInterval(3600)))
        #expect(session.record.creationTimeMs == 1_000_000_000)
    }

    @Test("agent ids must be 1-255 UTF-8 bytes")
    func agentIDLimits() throws {
        #expect(envelopeErrorCode { _ = try DEKSession(kek: FixtureKeys.kek, agentID: "") } == .invalidArgument)
        #expect(envelopeErrorCode { _ = try DEKSession(kek: FixtureKeys.kek, agentID: String(repeating: "a", count: 256)) } == .invalidArgument)
        let s = try DEKSession(kek: FixtureKeys.kek, agentID: String(repeating: "é", count: 127))
        let b = try s.seal(Data([1]), kind: .generic, captureTimeMs: 0)
        #expect(try SealedBlob(parsing: b.serialized).header.agentID == String(repeating: "é", count: 127))
    }

    @Test("SecretBytes: random, locked where allowed, wiped")
    func secretBytes() {
        let s = SecretBytes.random(count: 32)
        #expect(s.withUnsafeBytes { $0.contains { $0 != 0 } })
        #expect(!s.description.contains(where: \.isHexDigit) || s.description == "SecretBytes(32 bytes)")
        s.wipe()
        #expect(s.withUnsafeBytes { $0.allSatisfy { $0 == 0 } })
        let c = SecretBytes(copying: [1, 2, 3])
        #expect(c.withUnsafeBytes { Array($0) } == [1, 2, 3])
    }

    @Test("ids and kinds: hex round trips and names")
    func idsAndKinds() {
        let d = DEKID.random()
        #expect(DEKID(hex: d.hex) == d)
        #expect(DEKID(hex: d.hex.uppercased()) == d)
        #expect(DEKID(hex: "zz") == nil)
        #expect(BlobID(hex: String(repeating: "0", count: 31)) == nil)
        #expect(KEKID(hex: FixtureKeys.kek.id.hex) == FixtureKeys.kek.id)
        #expect(CaptureKind.allCases.map(\.name) == ["screen", "keystrokes", "generic", "activity"])
        #expect(CaptureKind.allCases.map(\.rawValue) == [1, 2, 3, 4])  // the header's kind byte (docs/FORMAT.md)
        #expect(CaptureKind(name: "keystrokes") == .keystrokes)
        #expect(CaptureKind(name: "Screen") == nil)
    }
}
