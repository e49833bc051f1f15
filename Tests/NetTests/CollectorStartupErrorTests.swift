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

    /// `database=` is read by the one `StorageLocation` validator: a refused `sslmode`, a
    /// password in the URL, or a password file with a SQLite path, is refused naming the file,
    /// line and key (and the password is not repeated); a password file that is not there is
    /// named at start.
    @Test func theDatabaseValueIsValidatedAndThePasswordFileNamed() throws {
        let dir = try TempDir("custos-collector-db-url")
        defer { dir.remove() }
        let pki = try sharedMaterial.get().pki
        let bin = try builtProduct("custos-collector")
        func start(_ lines: String) throws -> CommandResult {
            try "listen=127.0.0.1:0\ntls-cert=\(pki.chain("leaf"))\ntls-key=\(pki.key("leaf"))\n\(lines)\n"
                .write(toFile: dir.file("c.cfg"), atomically: true, encoding: .utf8)
            return try runCommand([bin, "--config", dir.file("c.cfg")], timeout: 30)
        }
        let prefer = try start("database=postgres://custos@127.0.0.1:5432/custos?sslmode=prefer")
        #expect(prefer.status == 1)
        #expect(prefer.stderrString.contains("c.cfg:4: database: sslmode=prefer is not supported: it falls back to an unencrypted connection without saying so; use sslmode=verify-full"),
                "\(prefer.stderrString)")
        let missingFile = try start("database=postgres://custos@127.0.0.1:5432/custos?sslmode=disable\ndatabase-password-file=none")
        #expect(missingFile.status == 1)
        #expect(missingFile.stderrString.contains("cannot open the storage: custos@127.0.0.1:5432/custos: database password file '\(dir.file("none"))': No such file"),
                "\(missingFile.stderrString)")
        let password = try start("database=postgres://custos:hunter2@db/custos")
        #expect(password.status == 1)
        #expect(password.stderrString.contains("\(dir.file("c.cfg")):4: database: a password does not belong in the URL"),
                "\(password.stderrString)")
        #expect(password.stderrString.contains("database-password-file") && !password.stderrString.contains("hunter2"))
        let sqliteWithPassword = try start("database=c.db\ndatabase-password-file=pw")
        #expect(sqliteWithPassword.status == 1)
        #expect(sqliteWithPassword.stderrString.contains("c.cfg:5: database-password-file: is for a postgres://"),
                "\(sqliteWithPassword.stderrString)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("c.db")), "a refused configuration created the database")
    }
}
