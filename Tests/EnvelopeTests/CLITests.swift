import Foundation
import Testing
import TestSupport
@testable import Envelope

/// The `custos keys id`, `seal` and `open` subcommands, run as the built binary.
@Suite("custos CLI: keys id, seal, open")
struct CLITests {
    let custos: String
    init() throws { custos = try builtProduct("custos") }

    @Test("keys id prints the openssl KEK id for SPKI and PKCS#1 files; bad files exit 2 naming the file")
    func keysID() throws {
        let expected = try String(contentsOfFile: fixture("publickey.kekid"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        for file in ["publickey.crt", "publickey-pkcs1.pem"] {
            let r = try runCommand([custos, "keys", "id", fixture(file)])
            #expect(r.status == 0, "\(r.stderrString)")
            #expect(r.stdoutString == expected + "\n")
        }
        for file in ["bad-kek/private-pkcs1.pem", "bad-kek/rsa1024.pub.pem", "bad-kek/empty.pem", "missing.pem"] {
            let r = try runCommand([custos, "keys", "id", fixture(file)])
            #expect(r.status == 2, "\(file)")
            #expect(r.stderrString.contains(fixture(file)), "\(file): \(r.stderrString)")
        }
    }

    @Test("seal then open with every private key form; passphrase from a file and from stdin")
    func sealOpen() throws {
        let tmp = try TempDir("cli-seal")
        defer { tmp.remove() }
        let input = tmp.file("frame.png")
        let plain = Data((0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        try plain.write(to: URL(fileURLWithPath: input))
        let sealed = tmp.file("frame.csts")
        let s = try runCommand([custos, "seal", "--kek", fixture("publickey.crt"), "--kind", "screen",
                                "--agent", "host-7", "--in", input, "--out", sealed])
        #expect(s.status == 0, "\(s.stderrString)")
        let records = try RecordStream.parse(try Data(contentsOf: URL(fileURLWithPath: sealed)))
        #expect(records.count == 2)
        if case .blob(let b) = records[1] {
            #expect(b.header.kind == .screen)
            #expect(b.header.agentID == "host-7")
            #expect(b.header.kekID == FixtureKeys.kek.id)
        } else { Issue.record("second record is not a blob") }
        for (file, _) in fixturePrivateKeys {
            let out = tmp.file("out-\(file)")
            let r = try runCommand([custos, "open", "--key", fixture(file), "--passphrase-file", fixture("pass"),
                                    "--in", sealed, "--out", out])
            #expect(r.status == 0, "\(file): \(r.stderrString)")
            #expect((try? Data(contentsOf: URL(fileURLWithPath: out))) == plain, "\(file)")
        }
        let viaStdin = tmp.file("out-stdin")
        let r = try runCommand([custos, "open", "--key", fixture("keypair.pem"), "--passphrase-file", "-",
                                "--in", sealed, "--out", viaStdin], stdin: Data((fixturePassphrase + "\n").utf8))
        #expect(r.status == 0, "\(r.stderrString)")
        #expect((try? Data(contentsOf: URL(fileURLWithPath: viaStdin))) == plain)
        // Output holds plaintext: owner-only permissions.
        let mode = try FileManager.default.attributesOfItem(atPath: viaStdin)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test("several blobs open into a directory laid out as custos decrypt writes it")
    func multiBlob() throws {
        let tmp = try TempDir("cli-multi")
        defer { tmp.remove() }
        var stream = Data()
        var plains: [Data] = []
        for i in 0..<3 {
            let p = Data("blob number \(i)".utf8)
            plains.append(p)
            try p.write(to: URL(fileURLWithPath: tmp.file("in\(i)")))
            try runChecked([custos, "seal", "--kek", fixture("publickey.crt"), "--kind", "generic", "--agent", "a",
                            "--in", tmp.file("in\(i)"), "--out", tmp.file("s\(i)")])
            stream += try Data(contentsOf: URL(fileURLWithPath: tmp.file("s\(i)")))
        }
        try stream.write(to: URL(fileURLWithPath: tmp.file("all.csts")))
        let out = tmp.file("opened")
        let r = try runCommand([custos, "open", "--key", fixture("keypair-pkcs8-plain.pem"), "--in", tmp.file("all.csts"), "--out", out])
        #expect(r.status == 0, "\(r.stderrString)")
        let names = try FileManager.default.contentsOfDirectory(atPath: out + "/a/other").sorted()
        #expect(names.count == 3)
        let contents = Set(try names.map { try Data(contentsOf: URL(fileURLWithPath: out + "/a/other/" + $0)) })
        #expect(contents == Set(plains))
        #expect(FileManager.default.fileExists(atPath: out + "/manifest.json"))
    }

    @Test("exit codes: 1 for wrong passphrase, wrong key and tampering; 2 for usage and unreadable input")
    func exitCodes() throws {
        let tmp = try TempDir("cli-exit")
        defer { tmp.remove() }
        try Data("secret text".utf8).write(to: URL(fileURLWithPath: tmp.file("in")))
        try Data("not the passphrase".utf8).write(to: URL(fileURLWithPath: tmp.file("badpass")))
        let sealed = tmp.file("s.csts")
        try runChecked([custos, "seal", "--kek", fixture("publickey.crt"), "--agent", "a", "--in", tmp.file("in"), "--out", sealed])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: sealed))
        var flipped = bytes
        flipped[bytes.count - 20] ^= 0x01
        try flipped.write(to: URL(fileURLWithPath: tmp.file("flipped.csts")))
        try bytes.prefix(bytes.count - 5).write(to: URL(fileURLWithPath: tmp.file("cut.csts")))
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: tmp.file("garbage.csts")))

        func open(_ input: String, key: String = fixture("keypair.pem"), pass: String? = fixture("pass"), setsid: Bool = false) throws -> CommandResult {
            var args = [custos, "open", "--key", key, "--in", input, "--out", tmp.file("out")]
            if let pass { args += ["--passphrase-file", pass] }
            return try runCommand(setsid ? ["setsid", "-w"] + args : args)
        }
        let cases: [(String, CommandResult, Int32)] = [
            ("ok", try open(sealed), 0),
            ("wrong passphrase", try open(sealed, pass: tmp.file("badpass")), 1),
            ("wrong key", try open(sealed, key: fixture("other-keypair.pem")), 1),
            ("bit flip", try open(tmp.file("flipped.csts")), 1),
            ("truncated", try open(tmp.file("cut.csts")), 2),
            ("garbage input", try open(tmp.file("garbage.csts")), 2),
            ("missing input", try open(tmp.file("nope.csts")), 2),
            ("missing passphrase file", try open(sealed, pass: tmp.file("nope-pass")), 2),
            ("no terminal, no passphrase file", try open(sealed, pass: nil, setsid: true), 2),
            ("public key as private key", try open(sealed, key: fixture("publickey.crt")), 2),
        ]
        for (name, r, code) in cases {
            #expect(r.status == code, "\(name): exit \(r.status), stderr: \(r.stderrString)")
            if code != 0 { #expect(!r.stderrString.isEmpty, "\(name): no message") }
            #expect(!r.stderrString.contains(fixturePassphrase), "\(name): passphrase leaked")
        }
        #expect(cases[1].1.stderrString.contains("passphrase"))
        #expect(cases[3].1.stderrString.contains("tmp") || cases[3].1.stderrString.contains("flipped.csts"))
        let usage: [[String]] = [
            ["open", "--key", fixture("keypair.pem"), "--passphrase", fixturePassphrase, "--in", sealed, "--out", tmp.file("o")],
            ["seal", "--kek", fixture("publickey.crt"), "--kind", "video", "--agent", "a", "--in", tmp.file("in"), "--out", tmp.file("o")],
            ["seal", "--agent", "a", "--in", tmp.file("in"), "--out", tmp.file("o")],
            ["seal", "--kek", fixture("keypair.pem"), "--agent", "a", "--in", tmp.file("in"), "--out", tmp.file("o")],
            ["frobnicate"],
        ]
        for args in usage {
            let r = try runCommand([custos] + args)
            #expect(r.status == 2, "\(args): exit \(r.status) \(r.stderrString)")
        }
    }

    @Test("without --passphrase-file, open asks on the terminal without echo")
    func terminalPrompt() throws {
        try requireTool("script")
        let tmp = try TempDir("cli-tty")
        defer { tmp.remove() }
        let out = tmp.file("out.txt")
        // script(1) gives custos a pseudo-terminal; the passphrase is typed 2 s later, after echo is off.
        let command = "\(custos) open --key \(fixture("keypair-trad-aes256.pem")) --in \(fixture("sealed-generic.csts")) --out \(out)"
        let r = try runCommand(["sh", "-c", "(sleep 2; printf '%s\\n' '\(fixturePassphrase)') | script -q -e -c '\(command)' /dev/null"])
        #expect(r.status == 0, "\(r.stdoutString) \(r.stderrString)")
        #expect(r.stdoutString.contains("Passphrase for"), "no prompt: \(r.stdoutString)")
        #expect(!r.stdoutString.contains(fixturePassphrase), "passphrase was echoed")
        #expect((try? Data(contentsOf: URL(fileURLWithPath: out))) == (try Data(contentsOf: URL(fileURLWithPath: fixture("plain.txt")))))
    }

    @Test("committed fixtures made by custos seal open with every key form")
    func committedSealedFixtures() throws {
        let plain = try Data(contentsOf: URL(fileURLWithPath: fixture("plain.txt")))
        let records = try RecordStream.parse(try Data(contentsOf: URL(fileURLWithPath: fixture("sealed-generic.csts"))))
        guard case .dekRecord(let rec) = records.first, case .blob(let blob) = records.last else {
            Issue.record("fixture layout"); return
        }
        for (file, encrypted) in fixturePrivateKeys {
            let key = try KEKPrivateKey(pemFile: fixture(file), passphrase: encrypted ? secret(fixturePassphrase) : nil)
            #expect(try key.unwrap(rec).open(blob) == plain, "\(file)")
        }
        // The multi-blob fixture (two sealed files concatenated) holds 2 DEK records and 2 blobs.
        let multi = try RecordStream.parse(try Data(contentsOf: URL(fileURLWithPath: fixture("sealed-two.csts"))))
        #expect(multi.count == 4)
    }
}
