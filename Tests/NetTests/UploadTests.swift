import CustosBase
import Collector
import CollectorStorage
import Envelope
import Foundation
import Testing
import TestSupport
import Transport
import Wire

@Suite struct UploadTests {
    @Test func uploadReadBackAndDecrypt() async throws {
        let f = try await NetFixture.start("upload")
        defer { Task { await f.stop() } }
        let (records, plaintexts) = try f.records(count: 5, size: 3000)
        let client = try f.client()

        let health = try await client.health()
        #expect(health.status == "ok" && health.activeKEKs == 1)

        let first = try await client.upload(stream(records))
        #expect(first.results.count == 6)
        #expect(first.results.allSatisfy { $0.status == .stored })
        #expect(first.results.map(\.id) == records.map { wireHex($0.id) })

        // Idempotent: the same bytes again are acknowledged as duplicates and stored once.
        let again = try await client.upload(stream(records))
        #expect(again.results.allSatisfy { $0.status == .duplicate })
        #expect(try await f.storedCounts == (5, 1))

        // Read back through the store API the admin tool uses, and decrypt with the private key.
        let storage = f.collector.storage
        let captures = try await allCaptures(storage, CaptureQuery(agentID: try AgentID(f.agentID)))
        #expect(captures.count == 5)
        #expect(try await allCaptures(storage, CaptureQuery(kind: .keystrokes)).count == 2)
        let kek = try KEKPrivateKey(pemFile: f.kekPrivate, passphrase: nil)
        guard case .dekRecord(let dek) = records[0] else { Issue.record("first record is not a DEK record"); return }
        let storedDEK = try #require(try await storage.dekRecord(dek.dekID))
        let opener = try kek.unwrap(try DEKRecord(parsing: storedDEK))
        for (i, record) in records.dropFirst().enumerated() {
            let bytes = try #require(try await storage.blob(record.blobID))
            #expect(bytes == record.serialized)
            #expect(try opener.open(try SealedBlob(parsing: bytes)) == plaintexts[i])
        }
        // The KEK id the collector learnt from pub_datafile is recorded in its row.
        #expect(try await storage.keks().first?.kekID == (try KEKPublicKey(pemFile: f.kekPublic)).id)
        await client.close()
    }

    @Test func oneBadRecordDoesNotFailTheBatch() async throws {
        let f = try await NetFixture.start("mixed")
        defer { Task { await f.stop() } }
        let (mine, _) = try f.records(count: 2)
        let (theirs, _) = try f.records(count: 1, agent: "someone-else")
        // Tamper with the second blob's header: an unknown capture kind byte (offset 10+1+16+32+16 = 75).
        var tampered = mine[2].serialized
        tampered[75] = 0xEE
        var body = stream(mine.dropLast() + theirs)
        body.append(tampered)
        let response = try await f.client().upload(body)
        let status = response.results.map(\.status)
        #expect(status == [.stored, .stored, .refused, .refused, .refused])
        #expect(response.results[2].reason == .agentMismatch)
        #expect(response.results[3].reason == .agentMismatch)
        #expect(response.results[4].reason == .malformed && response.results[4].retryable == false)
        #expect(try await f.storedCounts == (1, 1))
    }

    @Test func blobBeforeItsDEKRecordIsRetryable() async throws {
        let f = try await NetFixture.start("dek-order")
        defer { Task { await f.stop() } }
        let (records, _) = try f.records(count: 2)
        let client = try f.client()
        let early = try await client.upload(stream(Array(records.dropFirst())))
        #expect(early.results.allSatisfy { $0.reason == .unknownDEK && $0.retryable == true })
        let late = try await client.upload(stream(records))
        #expect(late.results.allSatisfy { $0.status == .stored })
    }
}

@Suite struct BadRequestTests {
    @Test func wrongTokenIsRefused() async throws {
        let f = try await NetFixture.start("token")
        defer { Task { await f.stop() } }
        let (records, _) = try f.records(count: 1)
        let wrong = String(repeating: "A", count: 43)
        await #expect {
            try await f.client(token: wrong).upload(stream(records))
        } throws: { ($0 as? TransportError)?.httpStatus == 401 }
        #expect(try await f.storedCounts == (0, 0))
        #expect(f.logs.contains("wrong token"))
    }

    @Test func malformedTruncatedOversizedBodiesGet4xx() async throws {
        let f = try await NetFixture.start("bad", maxRequestBytes: 64 * 1024)
        defer { Task { await f.stop() } }
        let client = try f.client()
        let (records, _) = try f.records(count: 1, size: 2000)
        func status(_ body: Data) async -> Int? {
            do { _ = try await client.upload(body); return 200 } catch {
                if error.httpStatus == nil { Issue.record("\(error)") }
                return error.httpStatus
            }
        }
        // Garbage: no CSTS prefix.
        #expect(await status(Data((0..<500).map { _ in UInt8.random(in: 0...255) })) == 400)
        // Truncated: the last record is cut short.
        #expect(await status(stream(records).dropLast(7)) == 400)
        // Oversized: more than max-request-bytes.
        #expect(await status(Data(count: 100 * 1024)) == 413)
        // Tampered header only: 422 (the client hands back its per-record results) with reason `malformed`.
        var tampered = records[1].serialized
        tampered[75] = 0xEE
        let refused = try await client.upload(tampered)
        #expect(refused.results.map(\.reason) == [.malformed])
        #expect(f.logs.contains("sealed blob does not parse"))
        // The collector is still up and stores a good batch.
        #expect(try await client.upload(stream(records)).results.allSatisfy { $0.status == .stored })
    }

    /// A body sent chunked (no Content-Length, so nothing is reserved up front) is collected and
    /// stored like any other; one past max-request-bytes is refused with 413 while it streams in.
    /// curl stands in for a client other than ours (it pins the leaf's SPKI too).
    @Test func chunkedBodiesAreStoredAndLimited() async throws {
        try requireTool("curl")
        let f = try await NetFixture.start("chunked", maxRequestBytes: 64 * 1024)
        defer { Task { await f.stop() } }
        func post(_ body: Data, _ name: String) async throws -> (status: String, answer: String) {
            let bodyFile = f.dir.file("\(name).body"), answerFile = f.dir.file("\(name).answer")
            try body.write(to: URL(fileURLWithPath: bodyFile))
            let pin = try f.collector.pin.replacingOccurrences(of: "sha256/", with: "sha256//")
            let status = try await runCheckedOffPool([
                "curl", "-sS", "--max-time", "60", "--cacert", sharedMaterial.get().pki.rootCertificate,
                "--pinnedpubkey", pin, "-o", answerFile, "-w", "%{http_code}",
                "-H", "Authorization: Bearer \(f.agentID):\(f.token)",
                "-H", "Content-Type: \(WireAPI.recordsContentType)", "-H", "Transfer-Encoding: chunked",
                "--data-binary", "@" + bodyFile, "https://127.0.0.1:\(f.collector.port)\(WireAPI.recordsPath)"])
            return (status.trimmingCharacters(in: .whitespacesAndNewlines),
                    (try? String(contentsOfFile: answerFile, encoding: .utf8)) ?? "")
        }
        let (records, _) = try f.records(count: 5, size: 8000)
        let small = try await post(stream(records), "small")
        #expect(small.status == "200", "answer: \(small.answer)")
        let response = try JSONDecoder().decode(UploadResponse.self, from: Data(small.answer.utf8))
        #expect(response.results.count == 6 && response.results.allSatisfy { $0.status == .stored })
        #expect(try await f.storedCounts == (5, 1))
        // What was stored is each record's bytes, byte for byte (each is cut out of the received
        // buffer without a copy).
        for record in records.dropFirst() {
            guard case .blob(let blob) = record else { continue }
            #expect(try await f.collector.storage.blob(blob.header.blobID) == blob.serialized)
        }

        let (big, _) = try f.records(count: 12, size: 8000)  // about 97 KiB > 64 KiB
        let refused = try await post(stream(big), "big")
        #expect(refused.status == "413", "answer: \(refused.answer)")
        #expect(refused.answer.contains(RefusalReason.tooLarge.rawValue))
        #expect(f.logs.contains("body too large"))
        #expect(try await f.storedCounts == (5, 1))
    }
}

@Suite struct WireTests {
    @Test func framingSplitsOnPrefixes() throws {
        var body = Data()
        let a = Data([0x43, 0x53, 0x54, 0x53, 1, 1, 0, 0, 0, 12, 0xAA, 0xBB])
        let b = Data([0x43, 0x53, 0x54, 0x53, 1, 2, 0, 0, 0, 10])
        body.append(a); body.append(b)
        let framed = try frameRecords(body)
        #expect(framed.map(\.type) == [1, 2])
        #expect(framed.map(\.bytes) == [a, b])
        #expect(throws: FramingError.self) { try frameRecords(body.dropLast()) }
        #expect(throws: FramingError.self) { try frameRecords(Data([0x43, 0x53, 0x54, 0x53, 1, 2, 0, 0, 0, 3])) }
        #expect(throws: FramingError.self) { try frameRecords(body, maxRecords: 1) }
        // A slice that does not start at index 0: records are still found, and `cut` is handed
        // ranges counted from the slice's start.
        let slice = (Data([0xFF, 0xFF, 0xFF]) + body)[3...]
        #expect(try frameRecords(slice).map(\.bytes) == [a, b])
        var ranges: [Range<Int>] = []
        let cut = try frameRecords(slice) { range in ranges.append(range); return Data(count: range.count) }
        #expect(ranges == [0..<12, 12..<22])
        #expect(cut.map(\.bytes.count) == [12, 10])
    }

    @Test func authorizationHeader() throws {
        let h = WireAPI.authorization(agentID: try AgentID("host-1"), token: Secret("abc:def"))
        #expect(WireAPI.parseAuthorization(h)?.agentID == "host-1")
        #expect(WireAPI.parseAuthorization(h)?.token == "abc:def")
        #expect(WireAPI.parseAuthorization("Basic aG9zdDp0b2s=") == nil)
        #expect(WireAPI.parseAuthorization("Bearer bad id:tok") == nil)
        #expect(WireAPI.parseAuthorization("Bearer host-1:") == nil)
    }

    @Test func pinSyntax() throws {
        let p = try SPKIPin("sha256/" + Data(repeating: 7, count: 32).base64EncodedString())
        #expect(p.digest == [UInt8](repeating: 7, count: 32))
        #expect(throws: ValueError.self) { try SPKIPin("sha1/AAAA") }
        #expect(throws: ValueError.self) { try SPKIPin("sha256/" + Data(count: 20).base64EncodedString()) }
        #expect(throws: ValueError.self) { try CollectorURL("http://x:1") }
        // The token is a Secret: never in the configuration's description or dump.
        let config = try testTransport(serverURL: "https://x:1", agentID: "a", agentToken: "S3CRET", pins: [], caFile: nil)
        var dumped = ""
        dump(config, to: &dumped)
        #expect(!"\(config)".contains("S3CRET") && !dumped.contains("S3CRET"))
    }
}
