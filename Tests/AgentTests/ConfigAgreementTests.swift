import Foundation
import Testing
import TestSupport

/// `--check-config` and the daemon parse the config with the same validators: a value one
/// refuses, the other refuses too, naming the same file, line and key (issue 12: a path in
/// `server-url` passed the check, then the daemon refused it and systemd restarted it every 5 s).
@Suite struct ConfigAgreementTests {
    static let badValues: [(key: String, value: String)] = [
        ("server-url", "https://h:8443/p"),
        ("server-url", "http://h"),
        ("server-pin", "sha256/" + Data(count: 31).base64EncodedString()),
        ("agent-id", ".."),
        ("exclude-window-title", "/Bank (of/"),
        ("sensitive-window-class", "//"),
    ]

    @Test(arguments: badValues.indices)
    func checkConfigAndDaemonRefuseTheSameValue(_ index: Int) throws {
        let (key, value) = Self.badValues[index]
        let dir = try TempDir("custos-agree")
        defer { dir.remove() }
        let keys = try makeOpenSSLKeyPair(in: dir.path, name: "k")
        let config = dir.file("c.cfg")
        // A config that is otherwise complete (KEK, token, URL, pin), so only `key` is wrong.
        var lines = ["enable-encryption=0", "server-kek-file=\(keys.publicKey)", "agent-token=t0ken",
                     "display=:9999", "xauthority=/dev/null", "spool-dir=\(dir.file("spool"))"]
        if key != "agent-id" { lines.append("agent-id=pc-1") }
        if key != "server-url" { lines.append("server-url=https://127.0.0.1:9") }
        lines.append("\(key)=\(value)")
        try (lines.joined(separator: "\n") + "\n").write(toFile: config, atomically: true, encoding: .utf8)
        let where_ = "\(config):\(lines.count): \(key):"

        let agent = try builtProduct("custos-agent")
        let check = try runCommand([agent, "--config", config, "--check-config"], timeout: 30)
        let daemon = try runCommand([agent, "--config", config], environment: ["CUSTOS_LOG_LEVEL": "debug"], timeout: 30)
        #expect(check.status == 2, "\(key)=\(value): --check-config exited \(check.status): \(check.stdoutString)")
        #expect(daemon.status == 2, "\(key)=\(value): daemon exited \(daemon.status)")
        #expect(check.stderrString.contains(where_), "\(check.stderrString)")
        #expect(daemon.stderrString.contains(where_), "\(daemon.stderrString)")
        // Refused while parsing, before the daemon started anything (no spool, no connection).
        #expect(!daemon.stderrString.contains("starting"), "\(daemon.stderrString)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("spool")))
    }

    /// A token line written without '=' is refused by the executable, naming file:line and the
    /// key, and the token never reaches stderr (the journal, under systemd).
    @Test func malformedSecretLineIsNotEchoed() throws {
        let dir = try TempDir("custos-secret-line")
        defer { dir.remove() }
        let config = dir.file("c.cfg")
        try "display=:9999\nagent-token S3CRET-t0ken\n".write(toFile: config, atomically: true, encoding: .utf8)
        let agent = try builtProduct("custos-agent")
        for args in [["--config", config], ["--config", config, "--check-config"], ["status", "--config", config]] {
            let r = try runCommand([agent] + args, timeout: 30)
            #expect(r.status == 2, "\(args): \(r.status)")
            #expect(r.stderrString.contains("\(config):2: agent-token: expected agent-token=VALUE"), "\(r.stderrString)")
            #expect(!r.stderrString.contains("S3CRET") && !r.stdoutString.contains("S3CRET"), "\(args) echoed the secret")
        }
    }
}
