import Foundation
import Testing
import TestSupport

/// `custos-collector` refuses bad TLS files and a busy port with a message naming the setting.
@Suite struct CollectorStartupErrorTests {
    @Test func badTLSFilesAndBusyPortAreNamed() throws {
        try requireTool("openssl")
        let dir = try TempDir("custos-collector-bad")
        defer { dir.remove() }
        try runChecked(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-keyout", dir.file("a.key"), "-out", dir.file("a.crt")])
        try runChecked(["openssl", "genrsa", "-out", dir.file("b.key"), "2048"])
        let bin = try builtProduct("custos-collector")
        func start(_ cfg: String) throws -> CommandResult {
            try cfg.write(toFile: dir.file("c.cfg"), atomically: true, encoding: .utf8)
            return try runCommand([bin, "--config", dir.file("c.cfg")], timeout: 30)
        }
        let missing = try start("listen=127.0.0.1:0\ntls-cert=nope.crt\ntls-key=a.key\ndatabase=c.db\n")
        #expect(missing.status == 1)
        #expect(missing.stderrString.contains("tls-cert '\(dir.file("nope.crt"))': file does not exist"))
        let mismatch = try start("listen=127.0.0.1:0\ntls-cert=a.crt\ntls-key=b.key\ndatabase=c.db\n")
        #expect(mismatch.status == 1)
        #expect(mismatch.stderrString.contains("does not match tls-cert"))
        // A port someone else holds.
        let holder = try LoopbackListener()
        defer { holder.close() }
        let port = holder.port
        let busy = try start("listen=127.0.0.1:\(port)\ntls-cert=a.crt\ntls-key=a.key\ndatabase=c.db\n")
        #expect(busy.status == 1)
        #expect(busy.stderrString.contains("listen=127.0.0.1:\(port)"))
        #expect(busy.stderrString.contains("Address already in use"))
        let help = try runCommand([bin, "--help"])
        #expect(help.status == 0)
        #expect(help.stdoutString.contains("listen=HOST:PORT"))
    }
}
