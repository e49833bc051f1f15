import Foundation
import GRDB
import Spool
import Testing
import TestSupport

@Suite struct SpoolLeakTests {
    /// Captures are sealed before they reach the spool (here with the `openssl` CLI,
    /// AES-256-CTR, standing in for Envelope). The spool's database, WAL and SHM, its
    /// logs, statistics and error messages must then contain neither the key, nor the
    /// plaintext marker, nor any run of payload bytes.
    @Test func spoolFilesLogsAndErrorsHoldNoKeyPlaintextOrPayload() throws {
        try requireTool("openssl")
        try requireTool("sqlite3")
        let tmp = try TempDir("spool-leak")
        defer { tmp.remove() }
        let marker = Data("CUSTOS-PLAINTEXT-MARKER-\(UUID().uuidString)".utf8)
        let dek = randomBytes(32)
        let iv = randomBytes(16)
        let hex = { (d: Data) in d.map { String(format: "%02x", $0) }.joined() }
        let (logger, logs) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: 1 << 20, logger: logger)
        var payloads: [Data] = []
        var errors: [String] = []
        for n in 1...30 {
            var plaintext = Data()
            for _ in 0..<(n * 10) { plaintext.append(marker) }
            let sealed = try runCommand(["openssl", "enc", "-aes-256-ctr", "-K", hex(dek), "-iv", hex(iv)],
                                        stdin: plaintext).stdout
            #expect(sealed.count == plaintext.count)
            #expect(sealed.range(of: marker) == nil)
            let e = SpoolEntry(id: testID(n), kind: n % 3 == 0 ? .keystrokes : .screen, dekID: Data(dek.prefix(16)).map { $0 ^ 0x5A }.data,
                               captureTimeMs: Int64(n), payload: Data("CSTS".utf8) + sealed)
            payloads.append(e.payload)
            do { try spool.enqueue(e) } catch { errors.append("\(error)") }
        }
        // Errors too: an oversized record and a malformed one.
        for bad in [SpoolEntry(id: testID(99), kind: .screen, dekID: testDEK, captureTimeMs: 0, payload: payloads[29] + Data(count: 900_000)),
                    SpoolEntry(id: Data(payloads[0].prefix(5)), kind: .screen, dekID: testDEK, captureTimeMs: 0, payload: payloads[0])] {
            do { try spool.enqueue(bad) } catch { errors.append("\(error)") }
        }
        #expect(errors.count >= 2)
        let leased = try spool.lease(maxItems: 5, maxBytes: 1 << 20)
        try spool.release(leased.map(\.id))
        let statsJSON = try JSONEncoder().encode(spool.stats())
        // Scan while open (WAL and SHM present) and after close.
        var scanned: [String: Data] = [:]
        for name in ["spool.db", "spool.db-wal", "spool.db-shm"] {
            scanned["open " + name] = (try? Data(contentsOf: URL(fileURLWithPath: tmp.file(name)))) ?? Data()
        }
        #expect(!(scanned["open spool.db-wal"] ?? Data()).isEmpty)
        try spool.close()
        for name in try FileManager.default.contentsOfDirectory(atPath: tmp.path) {
            scanned["closed " + name] = try Data(contentsOf: URL(fileURLWithPath: tmp.file(name)))
        }
        let texts = Data((logs.text + "\n" + errors.joined(separator: "\n")).utf8) + statsJSON
        scanned["logs, errors, stats"] = texts
        let secrets: [(String, Data)] = [
            ("plaintext marker", marker), ("DEK", dek), ("DEK hex", Data(hex(dek).utf8)),
            ("DEK half", Data(dek.suffix(16))),
        ]
        for (where_, bytes) in scanned {
            for (what, secret) in secrets {
                #expect(bytes.range(of: secret) == nil, "\(what) found in \(where_)")
            }
        }
        // The spool's texts hold no payload bytes, raw or hex.
        for p in payloads {
            let window = p.subdata(in: 8..<24)
            #expect(texts.range(of: window) == nil)
            #expect(texts.range(of: Data(hex(window).utf8)) == nil)
        }
        // And the sealed bytes do round-trip (the scan looked at the real data).
        #expect(scanned["closed spool.db"]!.range(of: payloads[0].subdata(in: 4..<200)) != nil)
    }
}

extension Array where Element == UInt8 {
    var data: Data { Data(self) }
}
