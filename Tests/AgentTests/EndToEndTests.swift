import Foundation
import Testing
import TestSupport

/// The whole pipeline on real input: Xvfb → custos-agent → pinned TLS → custos-collector →
/// custos decrypt, with keys from the openssl CLI. These run the built binaries.
@Suite(.serialized) struct EndToEndTests {
    /// Captures wait while the collector lacks the KEK, flush once the seed's SQL registers it,
    /// and decrypt to exactly the typed text and the painted pixels (exactly for PNG frames,
    /// within the codec's tolerance for video, decoded by ffmpeg); nothing is plaintext at rest.
    @Test(arguments: ["video", "png"])
    func pipelineHoldsThenFlushesAndDecryptsExactly(screenFormat: String) throws {
        let rig = try AgentRig(name: "pipeline-\(screenFormat)")
        rig.screenFormat = screenFormat
        try rig.writeConfig(encryption: true)
        try rig.startCollector()
        try rig.startAgent()
        // Refused while the KEK is unknown: captures stay spooled, the collector stores nothing.
        let refused = waitUntil(timeout: 20) { rig.agent!.log.contains("unknown-kek") }
        #expect(refused, "agent log: \(rig.agent!.log.suffix(2000))")
        #expect(try rig.count("select count(*) from captures") == 0)
        #expect(try rig.count("select count(*) from encryption_dek") == 0)
        // Refused uploads are not "successful uploads".
        let held = try runChecked([try builtProduct("custos-agent"), "status", "--config", rig.configPath])
        #expect(held.contains("last upload:      -"), "\(held)")

        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        let flushed = try waitUntil(timeout: 30) { try rig.count("select count(*) from captures where kind='screen'") > 0 }
        #expect(flushed, "agent log: \(rig.agent!.log.suffix(2000))")

        let typed = "Hello, Custos 42"
        try rig.xvfb.run(["xdotool", "type", "--delay", "30", typed])
        let chunked = try waitUntil(timeout: 20) { try rig.count("select count(*) from captures where kind='keystrokes'") > 0 }
        #expect(chunked)

        let start = Date()
        rig.agent!.send(SIGTERM)
        let status = rig.agent!.waitExit(timeout: 10)
        #expect(status == 0, "agent exit: \(String(describing: status)); log: \(rig.agent!.log.suffix(1500))")
        #expect(Date().timeIntervalSince(start) < 2.5, "SIGTERM took \(Date().timeIntervalSince(start)) s")

        // Nothing plaintext at rest: neither the typed text nor a PNG signature.
        for file in rig.filesAtRest() {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
            #expect(bytes.range(of: Data(typed.utf8)) == nil, "typed text in \(file)")
            #expect(bytes.range(of: Data("Custos 42".utf8)) == nil, "typed text in \(file)")
            #expect(bytes.range(of: Data([0x89, 0x50, 0x4E, 0x47])) == nil, "PNG signature in \(file)")
        }

        // The listing shows sealed items without content.
        let list = try runChecked([try builtProduct("custos"), "captures", "list", "--db", rig.db])
        #expect(list.contains("<Encrypted>"))
        #expect(!list.contains(typed))

        // The wrong key finds nothing to open; the right key and passphrase recover everything.
        let (wrongStatus, wrongOut) = try rig.decrypt(key: rig.serverKey, name: "wrong")
        #expect(wrongStatus != 0)
        #expect(rig.files(in: wrongOut, suffix: ".png").isEmpty && rig.files(in: wrongOut, suffix: ".webm").isEmpty)
        let (okStatus, out) = try rig.decrypt(key: rig.e2e, name: "decrypted")
        #expect(okStatus == 0)
        let first: Data
        if screenFormat == "png" {
            let pngs = rig.files(in: out, suffix: ".png")
            #expect(!pngs.isEmpty)
            first = try rig.rgb(ofPNG: try #require(pngs.first))
        } else {
            let videos = rig.files(in: out, suffix: ".webm")
            #expect(!videos.isEmpty)
            #expect(try rig.packetCount(videos) == (try rig.count("select count(*) from captures where kind='screen'")))
            first = try rig.rgb(ofPNG: try #require(videos.first))  // ffmpeg: the first decoded frame
        }
        #expect(first.count == 320 * 240 * 3)
        let tolerance = screenFormat == "png" ? 0 : 8
        let painted = [rig.rootColor.0, rig.rootColor.1, rig.rootColor.2]
        let off = first.enumerated().first { abs(Int($0.element) - Int(painted[$0.offset % 3])) > tolerance }
        #expect(off == nil, "decrypted frame differs from the painted root at byte \(off?.offset ?? -1)")

        let jsonl = try String(contentsOfFile: out + "/keystrokes.jsonl", encoding: .utf8)
        let text = jsonl.split(separator: "\n").compactMap { line -> String? in
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return obj["text"] as? String
        }.joined()
        #expect(text == typed, "recovered \(text)")
    }

    /// kill -9 mid-run, then a restart: everything that reached the spool arrives, once.
    @Test func killNineThenRestartLosesNothingAndDuplicatesNothing() throws {
        let rig = try AgentRig(name: "kill9")
        try rig.startCollector()
        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        // Frames change every capture so each is sealed (not "unchanged").
        try rig.startAgent()
        for i in 0..<8 {
            try rig.xvfb.run(["xsetroot", "-solid", String(format: "#%02x%02x%02x", 16 * i, 255 - 16 * i, 90)])
            usleep(250_000)
        }
        rig.agent!.send(SIGKILL)
        _ = rig.agent!.waitExit(timeout: 5)
        try rig.startAgent()
        for i in 0..<4 {
            try rig.xvfb.run(["xsetroot", "-solid", String(format: "#%02x0000", 40 * i + 10)])
            usleep(250_000)
        }
        rig.agent!.send(SIGTERM)
        #expect(rig.agent!.waitExit(timeout: 10) == 0)
        // Let a last restart drain whatever the SIGTERM flush left.
        try rig.writeConfig(encryption: true, screenIntervalMs: 0, keystrokeIdleMs: 0)
        try rig.startAgent()
        let drained = try waitUntil(timeout: 20) {
            let s = try runChecked([try builtProduct("custos-agent"), "status", "--config", rig.configPath])
            let stored = try rig.count("select count(*) from captures")
            return s.contains("last upload") && stored > 0 && Self.spoolEmpty(s)
        }
        rig.agent!.send(SIGTERM)
        _ = rig.agent!.waitExit(timeout: 10)
        #expect(drained)
        #expect(try rig.count("select count(*) from encryption_dek") >= 2, "a new DEK per start")
        // No duplicates, and no gaps: per DEK, sequences are exactly 0..<count.
        #expect(try rig.sql("select count(*) from (select dek_id, sequence from captures group by dek_id, sequence having count(*) > 1)") == "0")
        let gaps = try rig.sql("select count(*) from (select dek_id from captures group by dek_id having max(sequence) + 1 != count(*))")
        let perDEK = try rig.sql("select dek_id, count(*), max(sequence) from captures group by dek_id")
        #expect(gaps == "0", "per DEK (id, count, max sequence): \(perDEK)")
        // Every stored blob references a stored DEK record.
        #expect(try rig.count("select count(*) from captures c left join encryption_dek d on c.dek_id = d.dek_id where d.dek_id is null") == 0)
        let (status, out) = try rig.decrypt(key: rig.e2e, name: "out")
        #expect(status == 0)
        // Every stored packet is in a video file: kill -9 lost at most the frame being encoded,
        // which never reached the spool, so no stream has a hole.
        #expect(try rig.packetCount(rig.files(in: out, suffix: ".webm"))
                == (try rig.count("select count(*) from captures where kind='screen'")))
    }

    /// SIGHUP switches enable-encryption either way; each blob stays readable with the key it was sealed under.
    @Test func sighupTogglesEncryptionWithoutLosingData() throws {
        let rig = try AgentRig(name: "toggle")
        try rig.startCollector()
        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        try rig.registerKEK(publicKey: rig.serverKey.publicKey, privateKey: rig.serverKey.privateKey)
        let e2eID = try rig.kekID(rig.e2e.publicKey)
        let serverID = try rig.kekID(rig.serverKey.publicKey)
        try rig.startAgent()
        #expect(try waitUntil(timeout: 20) { try rig.count("select count(*) from captures where kek_id='\(e2eID)'") > 0 })

        try rig.writeConfig(encryption: false)
        rig.agent!.send(SIGHUP)
        try rig.xvfb.run(["xsetroot", "-solid", "#aa0000"])
        #expect(try waitUntil(timeout: 20) { try rig.count("select count(*) from captures where kek_id='\(serverID)'") > 0 },
                "agent log: \(rig.agent!.log.suffix(2000))")

        try rig.writeConfig(encryption: true)
        rig.agent!.send(SIGHUP)
        try rig.xvfb.run(["xsetroot", "-solid", "#00aa00"])
        #expect(try waitUntil(timeout: 20) { try rig.count("select count(*) from encryption_dek where kek_id='\(e2eID)'") >= 2 })
        #expect(try waitUntil(timeout: 20) {
            try rig.count("select count(*) from captures c join encryption_dek d on c.dek_id = d.dek_id where d.kek_id='\(e2eID)' and d.creation_time = (select max(creation_time) from encryption_dek)") > 0
        })
        rig.agent!.send(SIGTERM)
        #expect(rig.agent!.waitExit(timeout: 10) == 0)

        let e2eFrames = try rig.count("select count(*) from captures where kind='screen' and kek_id='\(e2eID)'")
        let serverFrames = try rig.count("select count(*) from captures where kind='screen' and kek_id='\(serverID)'")
        #expect(e2eFrames > 0 && serverFrames > 0)
        // Each key opens exactly its own blobs (the other key's items are reported, so exit is non-zero).
        let (_, a) = try rig.decrypt(key: rig.e2e, name: "with-e2e")
        let (_, b) = try rig.decrypt(key: rig.serverKey, name: "with-server")
        #expect(try rig.packetCount(rig.files(in: a, suffix: ".webm")) == e2eFrames)
        #expect(try rig.packetCount(rig.files(in: b, suffix: ".webm")) == serverFrames)
    }

    /// With enable-encryption=1 and no kek.pem the agent captures nothing and says why; when the
    /// key appears it starts on its own.
    @Test func missingKEKCapturesNothingUntilTheKeyArrives() throws {
        let rig = try AgentRig(name: "nokek")
        try FileManager.default.removeItem(atPath: rig.dir.file("agent/certs/kek.pem"))
        try rig.startCollector()
        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        try rig.startAgent()
        #expect(waitUntil(timeout: 10) { rig.agent!.log.contains("no usable KEK") })
        usleep(1_500_000)
        #expect(try rig.count("select count(*) from captures") == 0)
        #expect(try rig.count("select count(*) from encryption_dek") == 0)
        let status = try runChecked([try builtProduct("custos-agent"), "status", "--config", rig.configPath])
        #expect(status.contains("paused"))
        try FileManager.default.copyItem(atPath: rig.e2e.publicKey, toPath: rig.dir.file("agent/certs/kek.pem"))
        #expect(try waitUntil(timeout: 20) { try rig.count("select count(*) from captures") > 0 }, "log: \(rig.agent!.log.suffix(1500))")
        rig.agent!.send(SIGTERM)
        #expect(rig.agent!.waitExit(timeout: 10) == 0)
    }

    static func spoolEmpty(_ status: String) -> Bool {
        status.split(separator: "\n").contains { $0.hasPrefix("spooled:") && $0.contains(" 0 records") }
    }
}

/// `--check-config` and bad configs exit 2 naming the file and line.
@Suite struct AgentCLITests {
    @Test func badConfigExitsTwoNamingTheLine() throws {
        let dir = try TempDir("custos-cli")
        defer { dir.remove() }
        try "display=:1\nenable-encryption=maybe\n".write(toFile: dir.file("c.cfg"), atomically: true, encoding: .utf8)
        let r = try runCommand([try builtProduct("custos-agent"), "--config", dir.file("c.cfg"), "--check-config"])
        #expect(r.status == 2)
        #expect(r.stderrString.contains(dir.file("c.cfg") + ":2"))
        #expect(r.stderrString.contains("enable-encryption"))
        // Usage errors exit 2 too.
        let usage = try runCommand([try builtProduct("custos-agent"), "record", "--seconds", "0", "--out", dir.file("x")])
        #expect(usage.status == 2)
        #expect(usage.stderrString.contains("--seconds"))
    }

    @Test func checkConfigReportsMissingKEK() throws {
        let dir = try TempDir("custos-cli")
        defer { dir.remove() }
        try "enable-encryption=1\nspool-dir=\(dir.file("spool"))\ndisplay=:9999\n".write(toFile: dir.file("c.cfg"), atomically: true, encoding: .utf8)
        let r = try runCommand([try builtProduct("custos-agent"), "--config", dir.file("c.cfg"), "--check-config"])
        #expect(r.status == 2)
        #expect(r.stdoutString.contains("FAIL kek"))
        #expect(r.stdoutString.contains(dir.file("certs/kek.pem")))
    }

    @Test func checkConfigProbesTheSpoolDirectoryForReal() throws {
        let dir = try TempDir("custos-cli")
        defer { dir.remove() }
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir.file("a-file")))
        let cases: [(String, String)] = [("/proc/custos-nope", "FAIL spool-dir"), (dir.file("a-file"), "FAIL spool-dir"),
                                         (dir.file("new/deeper"), "ok   spool-dir")]
        for (spool, expected) in cases {
            try "spool-dir=\(spool)\ndisplay=:9999\n".write(toFile: dir.file("c.cfg"), atomically: true, encoding: .utf8)
            let r = try runCommand([try builtProduct("custos-agent"), "--config", dir.file("c.cfg"), "--check-config"])
            #expect(r.stdoutString.contains(expected), "\(spool): \(r.stdoutString)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("new")), "the probe leaves nothing behind")
    }

    @Test func recordRefusalsLeaveNoFile() throws {
        let dir = try TempDir("custos-record-bad")
        defer { dir.remove() }
        let keys = try makeOpenSSLKeyPair(in: dir.path, name: "k")
        // No KEK: refused, exit 2, no file.
        try "enable-encryption=1\nkek-file=\(dir.file("missing.pem"))\ndisplay=:987\nspool-dir=\(dir.file("s"))\n"
            .write(toFile: dir.file("a.cfg"), atomically: true, encoding: .utf8)
        let a = try runCommand([try builtProduct("custos-agent"), "record", "--config", dir.file("a.cfg"), "--seconds", "1", "--out", dir.file("a.rec")])
        #expect(a.status == 2)
        #expect(!FileManager.default.fileExists(atPath: dir.file("a.rec")))
        // A display that does not exist: nothing captured, exit 1, says why, no file.
        try "enable-encryption=1\nkek-file=\(keys.publicKey)\ndisplay=:987\nxauthority=/dev/null\nscreen-interval-ms=200\nspool-dir=\(dir.file("s"))\n"
            .write(toFile: dir.file("b.cfg"), atomically: true, encoding: .utf8)
        let b = try runCommand([try builtProduct("custos-agent"), "record", "--config", dir.file("b.cfg"), "--seconds", "1", "--out", dir.file("b.rec")])
        #expect(b.status == 1)
        #expect(b.stderrString.contains("nothing was captured"))
        #expect(b.stderrString.contains(":987"))
        #expect(!FileManager.default.fileExists(atPath: dir.file("b.rec")))
    }

    @Test func recordWritesASealedFileThatOpensWithThePassphrase() throws {
        try requireTool("Xvfb")
        let dir = try TempDir("custos-record")
        defer { dir.remove() }
        let x = try Xvfb(width: 200, height: 100, depth: 24)
        try x.run(["xsetroot", "-solid", "#123456"])
        let keys = try makeOpenSSLKeyPair(in: dir.path, name: "k")
        try "enable-encryption=1\nkek-file=\(keys.publicKey)\ndisplay=\(x.name)\nxauthority=/dev/null\nscreen-interval-ms=200\nkeystroke-idle-ms=300\nspool-dir=\(dir.file("spool"))\n"
            .write(toFile: dir.file("c.cfg"), atomically: true, encoding: .utf8)
        let rec = dir.file("rec.custos")
        // Change the screen while recording so several frames (blobs) are sealed.
        let painter = Thread {
            for color in ["#aa0000", "#00aa00", "#0000aa", "#aaaa00"] {
                usleep(300_000)
                _ = try? x.run(["xsetroot", "-solid", color])
            }
        }
        painter.start()
        try runChecked([try builtProduct("custos-agent"), "record", "--config", dir.file("c.cfg"), "--seconds", "2", "--out", rec])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: rec))
        #expect(bytes.prefix(4) == Data("CSTS".utf8))
        #expect(bytes.range(of: Data([0x89, 0x50, 0x4E, 0x47])) == nil)
        let attrs = try FileManager.default.attributesOfItem(atPath: rec)
        #expect((attrs[.posixPermissions] as? Int) == 0o600)
        try runChecked([try builtProduct("custos"), "open", "--key", keys.privateKey, "--passphrase-file", keys.passphraseFile,
                        "--in", rec, "--out", dir.file("opened")])
        let all = FileManager.default.enumerator(atPath: dir.file("opened"))?.allObjects as? [String] ?? []
        // The screen is recorded as video by default: the packets open into WebM files.
        let videos = all.filter { $0.hasSuffix(".webm") }.map { dir.file("opened") + "/" + $0 }
        #expect(!videos.isEmpty, "opened: \(all)")
        let packets = try webmPacketCount(videos)
        #expect(packets >= 2, "the repaints make several packets: \(packets) in \(all)")
        #expect(all.contains("manifest.json"))
        // One frame (a still screen) opens into a directory too when --out ends in '/'.
        let still = dir.file("still.rec")
        try runChecked([try builtProduct("custos-agent"), "record", "--config", dir.file("c.cfg"), "--seconds", "0.5", "--out", still])
        try runChecked([try builtProduct("custos"), "open", "--key", keys.privateKey, "--passphrase-file", keys.passphraseFile,
                        "--in", still, "--out", dir.file("still-out") + "/"])
        let stillFiles = FileManager.default.enumerator(atPath: dir.file("still-out"))?.allObjects as? [String] ?? []
        #expect(stillFiles.contains { $0.hasSuffix(".webm") }, "\(stillFiles)")
        // custos open never overwrites a file.
        try Data("precious".utf8).write(to: URL(fileURLWithPath: dir.file("precious")))
        let over = try runCommand([try builtProduct("custos"), "open", "--key", keys.privateKey, "--passphrase-file", keys.passphraseFile,
                                   "--in", still, "--out", dir.file("precious")])
        #expect(over.status != 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.file("precious"))) == Data("precious".utf8))
        // A directory where a key file belongs is named as such.
        let keyDir = try runCommand([try builtProduct("custos"), "keys", "id", dir.path])
        #expect(keyDir.status == 2)
        #expect(keyDir.stderrString.contains("is a directory"))
        // Refuses to overwrite.
        let again = try runCommand([try builtProduct("custos-agent"), "record", "--config", dir.file("c.cfg"), "--seconds", "1", "--out", rec])
        #expect(again.status != 0)
    }
}
