import Collector
import CustosBase
import Foundation
import Synchronization
import Testing
import TestSupport
import Transport
import Wire

/// Certificate pinning and TLS policy against a real collector (and `openssl s_server`).
@Suite struct PinningTests {
    /// How a test client trusts the collector.
    enum Trust: String, CaseIterable, CustomTestStringConvertible {
        case leafPin, backupPin, intermediatePin, rootPin, privateCA, selfSignedPin
        var testDescription: String { rawValue }
    }

    @Test(arguments: Trust.allCases)
    func acceptedTrust(_ trust: Trust) async throws {
        let f = try await NetFixture.start("pin-ok", certificate: trust == .selfSignedPin ? "selfSigned" : "leaf")
        defer { Task { await f.stop() } }
        let pki = f.collector.pki
        let client: CollectorClient
        switch trust {
        case .leafPin: client = try f.client(pins: [try pki.pin("leaf")])
        case .backupPin: client = try f.client(pins: [try pki.pin("other"), try pki.pin("leaf")])
        case .intermediatePin: client = try f.client(pins: [try TestPKI.pin(ofCertificate: pki.intermediateCertificate)])
        // The root is not presented by the server: a root pin needs the CA file too.
        case .rootPin: client = try f.client(pins: [try TestPKI.pin(ofCertificate: pki.rootCertificate)],
                                             caFile: pki.rootCertificate)
        case .privateCA: client = try f.client(pins: [], caFile: pki.rootCertificate)
        case .selfSignedPin: client = try f.client(pins: [try pki.pin("selfSigned")])
        }
        let (records, _) = try f.records(count: 2)
        let r = try await client.upload(stream(records))
        #expect(r.results.allSatisfy { $0.status == .stored })
        #expect(try await f.storedCounts == (2, 1))
        await client.close()
    }

    enum Refusal: String, CaseIterable, CustomTestStringConvertible {
        case wrongPin, wrongHost, expired, selfSignedWithoutPin, caWithoutChainToIt
        var testDescription: String { rawValue }
    }

    @Test(arguments: Refusal.allCases)
    func refusedBeforeAnyPayload(_ refusal: Refusal) async throws {
        let certificate: String = switch refusal {
        case .wrongPin, .caWithoutChainToIt: "leaf"
        case .wrongHost: "wrongHost"
        case .expired: "expired"
        case .selfSignedWithoutPin: "selfSigned"
        }
        let f = try await NetFixture.start("pin-bad", certificate: certificate)
        defer { Task { await f.stop() } }
        let pki = f.collector.pki
        let logs = LogCapture()
        let logger = logs.logger("transport")
        let client: CollectorClient
        switch refusal {
        case .wrongPin: client = try f.client(pins: [try pki.pin("other")], logger: logger)
        case .wrongHost: client = try f.client(pins: [try pki.pin("wrongHost")], logger: logger)
        case .expired: client = try f.client(pins: [try pki.pin("expired")], logger: logger)
        case .selfSignedWithoutPin: client = try f.client(pins: [], logger: logger)
        case .caWithoutChainToIt: client = try f.client(pins: [], caFile: pki.certificate("other"), logger: logger)
        }
        let (records, _) = try f.records(count: 3)
        do {
            _ = try await client.upload(stream(records))
            Issue.record("upload through a refused certificate succeeded")
        } catch {
            #expect(error.code == .peerRefused, "\(error)")
            // The presented leaf's SPKI pin is named in the error (the uploader logs it, once per episode).
            let presented = try pki.pin(certificate)
            #expect(error.presentedPins.first == presented)
            #expect(error.description.contains(presented), "\(error)")
            switch refusal {
            case .expired: #expect(error.message.contains("expired"), "\(error)")
            case .wrongHost: #expect(error.message.lowercased().contains("mismatch"), "\(error)")
            default: break
            }
        }
        #expect(try await f.storedCounts == (0, 0))
        // The collector never saw a request: no upload was logged as refused or stored.
        #expect(!f.logs.contains("upload refused"))
    }

    /// A server offering only TLS 1.1 is refused (the client requires TLS 1.2) and receives no request bytes.
    /// A bad `server-ca` says what is wrong with the file (NIOSSL alone says only
    /// "failedToLoadCertificate"), naming the key and the path.
    @Test func badCAFilesSayWhatIsWrong() throws {
        let dir = try TempDir("bad-ca")
        defer { dir.remove() }
        func message(_ path: String) -> String {
            do { _ = try TLSPolicy(pins: [], caFile: path); return "accepted" } catch { return error.description }
        }
        let missing = message(dir.file("missing.pem"))
        #expect(missing.contains("server-ca") && missing.contains("No such file or directory"), "\(missing)")
        try "not a certificate\n".write(toFile: dir.file("junk.pem"), atomically: true, encoding: .utf8)
        let junk = message(dir.file("junk.pem"))
        #expect(junk.contains("expected PEM certificates"), "\(junk)")
        let folder = message(dir.path)
        #expect(folder.contains("cannot be read"), "\(folder)")
    }

    @Test func tls11ServerRefused() async throws {
        try requireTool("openssl")
        let pki = try sharedMaterial.get().pki
        let server = try OpenSSLServer(arguments: ["-naccept", "1", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
                                                   "-cert", pki.chain("leaf"), "-key", pki.key("leaf")])
        defer { server.stop() }
        let config = try testTransport(serverURL: "https://127.0.0.1:\(server.port)", agentID: "host-1",
                                       agentToken: "token", pins: [try pki.pin("leaf")], caFile: nil)
        let client = try CollectorClient(configuration: config, logger: LogCapture().logger("transport"))
        do {
            _ = try await client.upload(Data("CSTS-secret-payload".utf8))
            Issue.record("a TLS 1.1 server was accepted")
        } catch {
            #expect(error.code == .handshake || error.code == .io, "\(error)")
        }
        try await Task.sleep(for: .milliseconds(200))
        let seen = server.output
        #expect(!seen.contains("POST") && !seen.contains("CSTS"), "s_server saw: \(seen)")
    }
}

final class DataBox: Sendable {
    let data = Mutex(Data())
}

/// `openssl s_server` on a free port, with its output collected.
final class OpenSSLServer: Sendable {
    let process: Process
    let port: Int
    private let collected: DataBox

    init(arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl", "s_server", "-accept", "0"] + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        process.standardInput = Pipe()
        let collected = DataBox()
        let handle = out.fileHandleForReading
        handle.readabilityHandler = { h in
            let d = h.availableData
            // At end of file the handler would be called again and again: stop it.
            if d.isEmpty { h.readabilityHandler = nil; return }
            collected.data.withLock { $0.append(d) }
        }
        try process.run()
        var port = 0
        for _ in 0..<100 {
            let text = String(decoding: collected.data.withLock { $0 }, as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("ACCEPT") }),
               let p = line.split(separator: ":").last.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) }) {
                port = p
                break
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        self.process = process
        self.collected = collected
        guard port > 0 else {
            process.terminate()
            throw TestSupportError("openssl s_server did not report its port: \(String(decoding: collected.data.withLock { $0 }, as: UTF8.self))")
        }
        self.port = port
    }

    var output: String { String(decoding: collected.data.withLock { $0 }, as: UTF8.self) }

    func stop() {
        // Poll instead of `waitUntilExit()`, which can spin forever in swift-corelibs-foundation.
        if process.isRunning { process.terminate() }
        for _ in 0..<100 where process.isRunning { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}
