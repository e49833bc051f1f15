import Foundation
import TestSupport

/// A whole Custos deployment on this machine for one test: an Xvfb with known content,
/// KEK pairs made by the openssl CLI, a real `custos-collector` process on 127.0.0.1 with a
/// self-signed certificate, and a `custos-agent` process with its own config and spool.
final class AgentRig: @unchecked Sendable {
    // @unchecked Sendable: used from one test task at a time.
    let dir: TempDir
    let xvfb: Xvfb
    let e2e: (privateKey: String, publicKey: String, passphraseFile: String)
    let serverKey: (privateKey: String, publicKey: String, passphraseFile: String)
    let port: Int
    let pin: String
    let token: String
    var collector: BackgroundProcess?
    var agent: BackgroundProcess?
    let agentID = "rig-pc"
    /// The solid colour painted on the root window (RGB).
    let rootColor: (UInt8, UInt8, UInt8) = (0x33, 0x66, 0x99)
    /// `screen-format` of the agent's config (`writeConfig`).
    var screenFormat = "video"
    /// More `key=value` lines for the agent's config (`writeConfig`).
    var extraConfig = ""
    /// `display=` and `xauthority=` of the agent's config (`writeConfig`); nil: the rig's Xvfb
    /// with no cookie.
    var displaySetting: String?

    var db: String { dir.file("collector/collector.db") }
    var configPath: String { dir.file("agent/config.cfg") }
    var spoolDir: String { dir.file("agent/spool") }

    init(name: String) throws {
        for tool in ["Xvfb", "xdotool", "xsetroot", "openssl", "sqlite3", "ffmpeg"] { try requireTool(tool) }
        dir = try TempDir("custos-e2e-\(name)")
        try FileManager.default.createDirectory(atPath: dir.file("collector"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.file("agent/certs"), withIntermediateDirectories: true)
        xvfb = try Xvfb(width: 320, height: 240, depth: 24)
        try xvfb.run(["xsetroot", "-solid", "#336699"])
        e2e = try makeOpenSSLKeyPair(in: dir.path, name: "e2e")
        serverKey = try makeOpenSSLKeyPair(in: dir.path, name: "server")
        let c = dir.file("collector")
        try runChecked(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", c + "/tls.key", "-out", c + "/tls.crt"])
        pin = "sha256/" + (try runChecked(["sh", "-c",
            "openssl x509 -in '\(c)/tls.crt' -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64"]))
            .trimmingCharacters(in: .whitespacesAndNewlines)
        port = try freeLocalPort()
        try "listen=127.0.0.1:\(port)\ntls-cert=tls.crt\ntls-key=tls.key\ndatabase=collector.db\n"
            .write(toFile: c + "/collector.cfg", atomically: true, encoding: .utf8)
        token = try runChecked([try builtProduct("custos"), "agents", "add", "--db", c + "/collector.db", "--id", agentID])
            .trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "\n").last ?? ""
        try FileManager.default.copyItem(atPath: e2e.publicKey, toPath: dir.file("agent/certs/kek.pem"))
        try FileManager.default.copyItem(atPath: serverKey.publicKey, toPath: dir.file("agent/certs/server-kek.pem"))
        try writeConfig(encryption: true)
    }

    func writeConfig(encryption: Bool, screenIntervalMs: Int = 300, keystrokeIdleMs: Int = 400) throws {
        let text = """
            enable-encryption=\(encryption ? 1 : 0)
            screen-format=\(screenFormat)
            agent-id=\(agentID)
            agent-token=\(token)
            server-url=https://localhost:\(port)
            server-pin=\(pin)
            \(displaySetting.map { "display=\($0)" } ?? "display=\(xvfb.name)\nxauthority=/dev/null")
            screen-interval-ms=\(screenIntervalMs)
            keystroke-idle-ms=\(keystrokeIdleMs)
            spool-dir=\(spoolDir)
            spool-max-mb=64
            \(extraConfig)
            """
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    func startCollector() throws {
        collector = try BackgroundProcess(try builtProduct("custos-collector"), ["--config", dir.file("collector/collector.cfg")],
                                          logPath: dir.file("collector/collector-\(Date().timeIntervalSince1970).log"))
        let up = waitUntil(timeout: 20) { (try? runCommand(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"]).status) == 0 }
        if !up { throw TestSupportError("collector did not listen on \(port): \(collector?.log ?? "")") }
    }

    func startAgent() throws {
        agent = try BackgroundProcess(try builtProduct("custos-agent"), ["--config", configPath],
                                      environment: ["CUSTOS_LOG_LEVEL": "debug"],
                                      logPath: dir.file("agent/agent-\(Date().timeIntervalSince1970).log"))
    }

    /// The seed's statement, run with the sqlite3 CLI.
    func registerKEK(publicKey: String, privateKey: String) throws {
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", db, "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '\(publicKey)', '\(privateKey)');"])
        collector?.send(SIGHUP)
    }

    func sql(_ query: String) throws -> String {
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", db, query]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func count(_ query: String) throws -> Int { Int(try sql(query)) ?? -1 }

    func kekID(_ publicKey: String) throws -> String {
        try runChecked([try builtProduct("custos"), "keys", "id", publicKey]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs `custos decrypt` into a new folder; returns (exit status, folder).
    func decrypt(key: (privateKey: String, publicKey: String, passphraseFile: String), name: String) throws -> (Int32, String) {
        let out = dir.file(name)
        let r = try runCommand([try builtProduct("custos"), "decrypt", "--db", db, "--key", key.privateKey,
                                "--passphrase-file", key.passphraseFile, "--out", out])
        return (r.status, out)
    }

    /// Files under `folder` (recursively) whose name ends with `suffix`.
    func files(in folder: String, suffix: String) -> [String] {
        let e = FileManager.default.enumerator(atPath: folder)
        var out: [String] = []
        while let f = e?.nextObject() as? String { if f.hasSuffix(suffix) { out.append(folder + "/" + f) } }
        return out.sorted()
    }

    /// Decodes a PNG (or the first frame of a video file) to packed RGB bytes with ffmpeg (an
    /// independent decoder).
    func rgb(ofPNG path: String) throws -> Data {
        try runCommand(["ffmpeg", "-v", "error", "-i", path, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]).stdout
    }

    /// The last picture of a video file as RGB24 (ffmpeg decodes every picture; `pictureBytes`
    /// = width × height × 3 of the last one). Empty when nothing decodes.
    func rgbOfLastPicture(_ path: String, pictureBytes: Int) throws -> Data {
        try runCommand(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]).stdout.suffix(pictureBytes)
    }

    /// The number of video packets in `files` (``webmPacketCount(_:)``).
    func packetCount(_ files: [String]) throws -> Int { try webmPacketCount(files) }

    /// Every file of the agent's spool and the collector database (incl. -wal/-shm).
    func filesAtRest() -> [String] {
        var out: [String] = []
        // Every regular file under the spool and collector folders, blob files included.
        for folder in [spoolDir, dir.file("collector")] {
            for f in FileManager.default.subpaths(atPath: folder) ?? [] {
                var isDirectory: ObjCBool = false
                let path = folder + "/" + f
                if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
                    out.append(path)
                }
            }
        }
        return out
    }

    deinit {
        agent = nil
        collector = nil
        xvfb.stop()
        if ProcessInfo.processInfo.environment["CUSTOS_KEEP_TEST_DIRS"] == nil { dir.remove() }
    }
}

/// The number of video packets in `files`, as ffprobe counts them (an independent demuxer).
func webmPacketCount(_ files: [String]) throws -> Int {
    var total = 0
    for file in files {
        let out = try runChecked(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
                                  "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", file])
        total += Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1_000_000
    }
    return total
}
