import Foundation
import Testing
import TestSupport
import CustosBase
@testable import Envelope

/// Byte offsets of the blob header fields (docs/FORMAT.md).
enum BlobOffsets {
    static let magic = 0..<4, version = 4, type = 5, length = 6..<10, suite = 10
    static let blobID = 11..<27, kekID = 27..<59, dekID = 59..<75, kind = 75
    static let sequence = 76..<84, time = 84..<92, agentLength = 92
}

enum DEKOffsets {
    static let magic = 0..<4, version = 4, type = 5, length = 6..<10, suite = 10
    static let dekID = 11..<27, kekID = 27..<59, time = 59..<67, agentLength = 67
}

@Suite("record format and tampering")
struct FormatTests {
    let session: DEKSession
    let blob: SealedBlob
    let opener: BlobOpener
    let plaintext = Data("keystrokes: hello world, this is a fixture of moderate size".utf8)

    init() throws {
        session = try DEKSession(kek: FixtureKeys.kek, agentID: "agent-α", now: Date(timeIntervalSince1970: 1_700_000_000))
        blob = try session.seal(plaintext, kind: .keystrokes, captureTimeMs: 1_700_000_000_321)
        opener = try FixtureKeys.privateKey.unwrap(session.record)
    }

    @Test("kind byte: 4 is activity (sealed and opened), 5 is refused naming the kinds")
    func activityKindByte() throws {
        let activity = try session.seal(plaintext, kind: .activity, captureTimeMs: 1)
        var b = [UInt8](activity.serialized)
        #expect(b[BlobOffsets.kind] == 4)
        let parsed = try SealedBlob(parsing: activity.serialized)
        #expect(parsed.header.kind == .activity)
        #expect(try opener.open(parsed) == plaintext)
        b[BlobOffsets.kind] = 5
        do {
            _ = try SealedBlob(parsing: Data(b))
            Issue.record("kind 5 was accepted")
        } catch let e as EnvelopeError {
            #expect(e.code == .malformed && e.message.contains("unknown capture kind 5 (expected 1, 2, 3 or 4)"), "\(e)")
        }
    }

    @Test("sealed session blob (type 3): user and display after the agent id, authenticated, parsed back")
    func sessionBlob() throws {
        let session = try BlobSession(user: UserName("alice"), display: ":1")
        let sealed = try self.session.seal(plaintext, kind: .screen, captureTimeMs: 7, session: session)
        var b = [UInt8](sealed.serialized)
        let agent = Array("agent-α".utf8)
        #expect(b[BlobOffsets.type] == 3)
        #expect(b[BlobOffsets.length].reduce(0) { $0 << 8 | Int($1) } == b.count)
        let at = 93 + agent.count
        #expect(Int(b[at]) == 5 && Array(b[(at + 1)..<(at + 6)]) == Array("alice".utf8))
        #expect(Int(b[at + 6]) == 2 && Array(b[(at + 7)..<(at + 9)]) == Array(":1".utf8))
        #expect(b.count == at + 9 + plaintext.count + 16)
        let parsed = try SealedBlob(parsing: sealed.serialized)
        #expect(parsed.header.session == session && parsed.header.kind == .screen && parsed.plaintextCount == plaintext.count)
        #expect(try opener.open(parsed) == plaintext)
        #expect(try RecordStream.parse(sealed.serialized).count == 1)
        // The user is authenticated: another name of the same length fails to open.
        b[at + 1] = UInt8(ascii: "b")
        #expect(throws: EnvelopeError.self) { try opener.open(try SealedBlob(parsing: Data(b))) }
        do { _ = try opener.open(try SealedBlob(parsing: Data(b))) } catch let e as EnvelopeError {
            #expect(e.code == .authenticationFailed)
        }
        // A user that is not UTF-8 does not parse; an empty one cannot be sealed.
        b[at + 1] = 0xff
        do {
            _ = try SealedBlob(parsing: Data(b))
            Issue.record("a non-UTF-8 user parsed")
        } catch let e as EnvelopeError {
            #expect(e.code == .malformed && e.message.contains("session user is not UTF-8"), "\(e)")
        }
        // A user name that is not a UserName (a path, a control character) does not parse.
        for bad in ["../ab", "a/bcd", "ab\ncd"] {
            b.replaceSubrange((at + 1)..<(at + 6), with: Array(bad.utf8))
            do {
                _ = try SealedBlob(parsing: Data(b))
                Issue.record("user \(bad.debugDescription) parsed")
            } catch let e as EnvelopeError {
                #expect(e.code == .malformed && e.message.contains("session user"), "\(e)")
            }
        }
        for bad in ["", ".", "..", "../etc", "a/b", "a\nb", "a\u{202E}b", String(repeating: "x", count: 129)] {
            #expect(throws: ValueError.self, "\(bad.debugDescription)") { try UserName(bad) }
        }
        for good in ["alice", "j.doe", "alice@corp.example", "CORP\\alice", "?", "uid-1001", "Zoë"] {
            #expect(try UserName(good).rawValue == good)
        }
        #expect(throws: EnvelopeError.self) { try BlobSession(user: UserName("a"), display: "") }
        #expect(throws: EnvelopeError.self) { try BlobSession(user: UserName("a"), display: String(repeating: "x", count: 256)) }
        // A plain blob stays type 2 with no session.
        #expect(blob.serialized[BlobOffsets.type] == 2 && blob.header.session == nil)
    }

    @Test("layout: prefix, header fields at their documented offsets, sizes")
    func layout() throws {
        let b = [UInt8](blob.serialized)
        let agent = Array("agent-α".utf8)
        #expect(Array(b[BlobOffsets.magic]) == Array("CSTS".utf8))
        #expect(b[BlobOffsets.version] == 1)
        #expect(b[BlobOffsets.type] == 2)
        #expect(b[BlobOffsets.length].reduce(0) { $0 << 8 | Int($1) } == b.count)
        #expect(b[BlobOffsets.suite] == 1)
        #expect(Array(b[BlobOffsets.blobID]) == blob.header.blobID.bytes)
        #expect(Array(b[BlobOffsets.kekID]) == FixtureKeys.kek.id.bytes)
        #expect(Array(b[BlobOffsets.dekID]) == session.record.dekID.bytes)
        #expect(b[BlobOffsets.kind] == 2)
        #expect(b[BlobOffsets.sequence].reduce(0) { $0 << 8 | UInt64($1) } == 0)
        #expect(b[BlobOffsets.time].reduce(0) { $0 << 8 | UInt64($1) } == 1_700_000_000_321)
        #expect(Int(b[BlobOffsets.agentLength]) == agent.count)
        #expect(Array(b[93..<(93 + agent.count)]) == agent)
        #expect(b.count == 93 + agent.count + plaintext.count + 16)
        #expect(blob.plaintextCount == plaintext.count)

        let r = [UInt8](session.record.serialized)
        #expect(Array(r[DEKOffsets.magic]) == Array("CSTS".utf8))
        #expect(r[DEKOffsets.type] == 1)
        #expect(r[DEKOffsets.length].reduce(0) { $0 << 8 | Int($1) } == r.count)
        #expect(Array(r[DEKOffsets.dekID]) == session.record.dekID.bytes)
        #expect(Array(r[DEKOffsets.kekID]) == FixtureKeys.kek.id.bytes)
        #expect(r[DEKOffsets.time].reduce(0) { $0 << 8 | Int64($1) } == 1_700_000_000_000)
        #expect(r.count == 102 + agent.count + 256)
        #expect(session.record.commitment.count == 32)
        #expect(try DEKRecord(parsing: session.record.serialized) == session.record)
        let reparsed = try SealedBlob(parsing: blob.serialized)
        #expect(reparsed.header == blob.header)
        #expect(EnvelopeRecord.blob(blob).id == Data(blob.header.blobID.bytes))
        #expect(EnvelopeRecord.dekRecord(session.record).id == Data(session.record.dekID.bytes))
    }

    /// Opens `bytes` as a blob with the session's unwrapped DEK; returns the error code.
    func openBlob(_ bytes: Data) -> EnvelopeError.Code? {
        envelopeErrorCode { _ = try opener.open(try SealedBlob(parsing: bytes)) }
    }

    @Test("every single-bit flip of a sealed blob fails, with the error its field implies")
    func blobBitFlips() {
        let original = blob.serialized
        #expect(openBlob(original) == nil)
        let agentEnd = 93 + Array("agent-α".utf8).count
        var seen: [String: Int] = [:]
        for i in 0..<original.count {
            for bit in 0..<8 {
                var bytes = original
                bytes[i] ^= UInt8(1 << bit)
                let code = openBlob(bytes)
                #expect(code != nil, "flip of byte \(i) bit \(bit) was not detected")
                guard let code else { continue }
                seen[code.description, default: 0] += 1
                let expected: Set<EnvelopeError.Code>
                switch i {
                case BlobOffsets.magic: expected = [.malformed]
                case BlobOffsets.version, BlobOffsets.suite: expected = [.unsupportedVersion]
                // 2 → 3 reads a sealed session blob: its session fields from the ciphertext.
                case BlobOffsets.type: expected = [.malformed, .truncated, .authenticationFailed]
                case BlobOffsets.length: expected = [.malformed, .truncated]
                case BlobOffsets.blobID: expected = [.authenticationFailed]
                case BlobOffsets.kekID: expected = [.keyMismatch]
                case BlobOffsets.dekID: expected = [.dekMismatch]
                case BlobOffsets.kind: expected = [.malformed, .authenticationFailed]
                case BlobOffsets.sequence, BlobOffsets.time: expected = [.authenticationFailed]
                case BlobOffsets.agentLength: expected = [.malformed, .truncated, .authenticationFailed]
                case 93..<agentEnd: expected = [.malformed, .authenticationFailed]
                default: expected = [.authenticationFailed]  // ciphertext and tag
                }
                #expect(expected.contains(code), "flip of byte \(i) bit \(bit): \(code), expected one of \(expected)")
            }
        }
        #expect(seen["authenticationFailed", default: 0] > 0)
    }

    @Test("every single-bit flip of a DEK record fails, with the error its field implies")
    func dekRecordBitFlips() throws {
        let original = session.record.serialized
        let agentEnd = 68 + Array("agent-α".utf8).count
        let wrappedStart = agentEnd + 2
        let commitmentStart = original.count - 32
        for i in 0..<original.count {
            // RSA unwraps are ~1 ms each: test every bit of the small fields and one bit per byte of the wrapped key.
            let bits = (wrappedStart..<commitmentStart).contains(i) ? [i % 8] : Array(0..<8)
            for bit in bits {
                var bytes = original
                bytes[i] ^= UInt8(1 << bit)
                let code = envelopeErrorCode {
                    let r = try DEKRecord(parsing: bytes)
                    _ = try FixtureKeys.privateKey.unwrap(r)
                }
                let expected: Set<EnvelopeError.Code>
                switch i {
                case DEKOffsets.magic, DEKOffsets.type: expected = [.malformed]
                case DEKOffsets.version, DEKOffsets.suite: expected = [.unsupportedVersion]
                case DEKOffsets.length: expected = [.malformed, .truncated]
                case DEKOffsets.kekID: expected = [.keyMismatch]
                case DEKOffsets.dekID, DEKOffsets.time: expected = [.commitmentMismatch]
                case DEKOffsets.agentLength: expected = [.malformed, .truncated]
                case 68..<agentEnd: expected = [.malformed, .commitmentMismatch]
                case agentEnd..<wrappedStart: expected = [.malformed, .truncated]
                case wrappedStart..<commitmentStart: expected = [.unwrapFailed]
                default: expected = [.commitmentMismatch]
                }
                #expect(code.map { expected.contains($0) } == true, "flip of DEK record byte \(i) bit \(bit): \(String(describing: code)), expected \(expected)")
            }
        }
    }

    @Test("truncation at every length fails with truncated")
    func truncation() {
        let b = blob.serialized
        for n in 0..<b.count {
            #expect(envelopeErrorCode { _ = try SealedBlob(parsing: b.prefix(n)) } == .truncated, "blob cut to \(n) bytes")
        }
        let r = session.record.serialized
        for n in 0..<r.count {
            #expect(envelopeErrorCode { _ = try DEKRecord(parsing: r.prefix(n)) } == .truncated, "DEK record cut to \(n) bytes")
        }
        // A stream cut inside a record is truncated; a cut at a record boundary yields the records before it.
        let stream = RecordStream.encode([.dekRecord(session.record), .blob(blob)])
        for n in 1..<stream.count {
            let cut = stream.prefix(n)
            if n == r.count {
                #expect((try? RecordStream.parse(cut))?.count == 1)
            } else {
                #expect(envelopeErrorCode { _ = try RecordStream.parse(cut) } == .truncated, "stream cut to \(n) bytes")
            }
        }
        #expect((try? RecordStream.parse(Data()))?.isEmpty == true)
    }

    @Test("wrong KEK: keyMismatch by id; a record relabelled to the other KEK fails RSA unwrap")
    func wrongKEK() throws {
        #expect(envelopeErrorCode { _ = try FixtureKeys.otherPrivateKey.unwrap(session.record) } == .keyMismatch)
        let forged = DEKRecord(dekID: session.record.dekID, kekID: FixtureKeys.otherKEK.id, agentID: session.record.agentID,
                               creationTimeMs: session.record.creationTimeMs, wrappedDEK: session.record.wrappedDEK,
                               commitment: session.record.commitment)
        #expect(envelopeErrorCode { _ = try FixtureKeys.otherPrivateKey.unwrap(forged) } == .unwrapFailed)
        // A blob sealed to the other KEK, opened with this key's opener.
        let other = try DEKSession(kek: FixtureKeys.otherKEK, agentID: "agent-α")
        let otherBlob = try other.seal(plaintext, kind: .keystrokes, captureTimeMs: 1)
        let opener = try FixtureKeys.privateKey.unwrap(session.record)
        #expect(envelopeErrorCode { _ = try opener.open(otherBlob) } == .keyMismatch)
    }

    @Test("swapped headers: same DEK fails authentication, another DEK is dekMismatch")
    func swappedHeaders() throws {
        let second = try session.seal(Data(plaintext.reversed()), kind: .keystrokes, captureTimeMs: 1_700_000_000_999)
        #expect(second.header.sequence == 1)
        let hl = blob.headerLength
        var swapped = second.serialized.prefix(hl)
        swapped.append(blob.serialized.suffix(from: hl))
        let opener = try FixtureKeys.privateKey.unwrap(session.record)
        #expect(try opener.open(blob) == plaintext)
        #expect(envelopeErrorCode { _ = try opener.open(try SealedBlob(parsing: Data(swapped))) } == .authenticationFailed)

        let otherSession = try DEKSession(kek: FixtureKeys.kek, agentID: "agent-α")
        let foreign = try otherSession.seal(plaintext, kind: .keystrokes, captureTimeMs: 1)
        #expect(envelopeErrorCode { _ = try opener.open(foreign) } == .dekMismatch)
        // The other DEK's header on this DEK's ciphertext: still refused.
        var mixed = foreign.serialized.prefix(hl)
        mixed.append(blob.serialized.suffix(from: hl))
        let otherOpener = try FixtureKeys.privateKey.unwrap(otherSession.record)
        #expect(envelopeErrorCode { _ = try otherOpener.open(try SealedBlob(parsing: Data(mixed))) } == .authenticationFailed)
    }

    @Test("key commitment: a record whose wrapped key unwraps to a different DEK is caught")
    func commitment() throws {
        let other = try DEKSession(kek: FixtureKeys.kek, agentID: "agent-α")
        let r = session.record
        let substituted = DEKRecord(dekID: r.dekID, kekID: r.kekID, agentID: r.agentID, creationTimeMs: r.creationTimeMs,
                                    wrappedDEK: other.record.wrappedDEK, commitment: r.commitment)
        #expect(envelopeErrorCode { _ = try FixtureKeys.privateKey.unwrap(substituted) } == .commitmentMismatch)
        let renamed = DEKRecord(dekID: r.dekID, kekID: r.kekID, agentID: "agent-β", creationTimeMs: r.creationTimeMs,
                                wrappedDEK: r.wrappedDEK, commitment: r.commitment)
        #expect(envelopeErrorCode { _ = try FixtureKeys.privateKey.unwrap(renamed) } == .commitmentMismatch)
    }

    @Test("record streams: foreign bytes, wrong type for the parser, trailing bytes")
    func streamErrors() throws {
        #expect(envelopeErrorCode { _ = try RecordStream.parse(Data("hello, world!".utf8)) } == .malformed)
        #expect(envelopeErrorCode { _ = try SealedBlob(parsing: session.record.serialized) } == .malformed)
        #expect(envelopeErrorCode { _ = try DEKRecord(parsing: blob.serialized) } == .malformed)
        #expect(envelopeErrorCode { _ = try SealedBlob(parsing: blob.serialized + Data([0])) } == .malformed)
        let stream = RecordStream.encode([.dekRecord(session.record), .blob(blob), .blob(blob)])
        let parsed = try RecordStream.parse(stream)
        #expect(parsed.count == 3)
        #expect(RecordStream.encode(parsed) == stream)
        // Slices with a non-zero start index parse the same.
        let padded = Data([9, 9, 9]) + stream
        #expect(try RecordStream.parse(padded[3...]).count == 3)
    }
}
