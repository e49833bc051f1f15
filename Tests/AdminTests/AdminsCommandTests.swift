import AdminAuth
import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Foundation
import Testing
import TestSupport

/// `custos admins add / list / set-role / reset-password / remove` on the built binary, and the
/// password and TOTP rules of `AdminAuth`.
@Suite("custos admins (built binary)")
struct AdminsCommandTests {
    @Test("add (password file, stdin, --totp), list, set-role, reset-password, remove; audit records; bad input exit 2")
    func adminsSession() async throws {
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-admins")
        defer { tmp.remove() }
        let db = tmp.file("collector.db")
        let pw = tmp.file("pw")
        try "correct horse battery\n".write(toFile: pw, atomically: true, encoding: .utf8)
        // A password file others may read is refused (the rule of --db-password-file), in a
        // message that says "password file"; nothing is stored.
        let openToAll = try runCommand([custos, "admins", "add", "--db", db, "--name", "ann@example.org", "--role", "decryptor",
                                        "--password-file", pw])
        #expect(openToAll.status == 2 && openToAll.stderrString.contains("\(pw): password file: others may read or write it (mode 644)")
                && openToAll.stderrString.contains("chmod o-rwx") && !openToAll.stderrString.contains("passphrase"),
                "\(openToAll.stderrString)")
        let missing = try runCommand([custos, "admins", "add", "--db", db, "--name", "ann@example.org", "--role", "decryptor",
                                      "--password-file", tmp.file("nothing-here")])
        #expect(missing.status == 2 && missing.stderrString.contains("cannot open password file"), "\(missing.stderrString)")
        chmod(pw, 0o640)

        let add = try runCommand([custos, "admins", "add", "--db", db, "--name", "ann@example.org", "--role", "decryptor",
                                  "--password-file", pw])
        #expect(add.status == 0 && add.stdoutString.isEmpty, "\(add.stderrString)")
        // A new database (a mistyped --db) is made as by `agents add`, but said; not again.
        #expect(add.stderrString.contains("note: \(db) did not exist: created a new, empty collector database"), "\(add.stderrString)")
        let viaStdin = try runCommand([custos, "admins", "add", "--db", db, "--name", "vic", "--role", "viewer", "--password-file", "-",
                                       "--totp"], stdin: Data("another long password\n".utf8))
        #expect(viaStdin.status == 0 && !viaStdin.stderrString.contains("did not exist"), "\(viaStdin.stderrString)")
        let uri = viaStdin.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(uri.hasPrefix("otpauth://totp/Custos:vic?secret=") && uri.contains("issuer=Custos"), "\(uri)")

        // Refused, nothing stored: short password, bad name, bad role, taken name, password as an argument.
        let short = tmp.file("short")
        try "too short\n".write(toFile: short, atomically: true, encoding: .utf8)
        chmod(short, 0o600)
        for (args, expected) in [(["--name", "x", "--role", "viewer", "--password-file", short], "at least 12 characters"),
                                 (["--name", "bad name", "--role", "viewer", "--password-file", pw], "--name"),
                                 (["--name", ".", "--role", "viewer", "--password-file", pw], "--name: expected 1-64 letters, digits, '.', '_', '-' or '@' (not '.' or '..'), found '.'"),
                                 (["--name", "..", "--role", "viewer", "--password-file", pw], "(not '.' or '..'), found '..'"),
                                 (["--name", "x", "--role", "viewer", "--password-file", tmp.path], "\(tmp.path): password file: not a regular file"),
                                 (["--name", "x", "--role", "root", "--password-file", pw], "root"),
                                 (["--name", "vic", "--role", "viewer", "--password-file", pw], "exists already"),
                                 (["--name", "x", "--role", "viewer", "--password", "correct horse battery"], "--password")] {
            let r = try runCommand([custos, "admins", "add", "--db", db] + args)
            #expect(r.status == 2 && r.stderrString.contains(expected), "\(args): \(r.stderrString)")
            #expect(!r.stderrString.contains("correct horse"), "the password is never echoed")
        }

        let list = try runCommand([custos, "admins", "list", "--db", db])
        #expect(list.status == 0, "\(list.stderrString)")
        #expect(list.stdoutString.contains("ann@example.org") && list.stdoutString.contains("decryptor"))
        #expect(list.stdoutString.contains("vic") && list.stdoutString.contains("viewer"))
        #expect(!list.stdoutString.contains("$2b$"), "never a hash")

        #expect(try runCommand([custos, "admins", "set-role", "--db", db, "--name", "vic", "--role", "auditor"]).status == 0)
        let pw2 = tmp.file("pw2")
        try "a brand new password\n".write(toFile: pw2, atomically: true, encoding: .utf8)
        chmod(pw2, 0o600)
        let both = try runCommand([custos, "admins", "reset-password", "--db", db, "--name", "vic", "--password-file", pw2, "--totp", "--no-totp"])
        #expect(both.status == 2 && both.stderrString.contains("--totp") && both.stderrString.contains("--no-totp"), "\(both.stderrString)")
        let reset = try runCommand([custos, "admins", "reset-password", "--db", db, "--name", "vic", "--password-file", pw2, "--no-totp"])
        #expect(reset.status == 0, "\(reset.stderrString)")
        #expect(try runCommand([custos, "admins", "remove", "--db", db, "--name", "ann@example.org"]).status == 0)
        let gone = try runCommand([custos, "admins", "remove", "--db", db, "--name", "ann@example.org"])
        #expect(gone.status == 2 && gone.stderrString.contains("no admin"), "\(gone.stderrString)")

        let storage = try SQLiteStorage(path: db)
        let vic = try #require(try await storage.admin(try AdminName("vic")))
        #expect(vic.role == .auditor && vic.totpSecret == nil)
        #expect(await AdminPassword.verify(Secret("a brand new password"), hash: vic.passwordHash))
        #expect(await !AdminPassword.verify(Secret("another long password"), hash: vic.passwordHash))
        #expect(vic.passwordHash.hasPrefix("$2b$12$"), "bcrypt, cost 12")
        let actions = try await storage.auditEntries(before: nil, limit: 100).map(\.action)
        for action in ["admins.add", "admins.list", "admins.set-role", "admins.reset-password", "admins.remove"] {
            #expect(actions.contains(action), "\(action) in \(actions)")
        }
        #expect(actions.filter { $0 == "admins.add" }.count == 2, "refused adds leave no record")
        await storage.close()
    }

    @Test("read-only commands refuse a SQLite file with no collector schema and leave it as it was; dashboard checks --db before making a certificate")
    func notACollectorDatabaseIsRefused() throws {
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-not-collector")
        defer { tmp.remove() }
        let other = tmp.file("other.db"), empty = tmp.file("empty.db"), fresh = tmp.file("fresh.db")
        #expect(try runCommand(["/usr/bin/sqlite3", other, "CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('mine');"]).status == 0)
        try Data().write(to: URL(fileURLWithPath: empty))
        let dashboardDir = tmp.file("dashboard")
        try FileManager.default.createDirectory(atPath: dashboardDir, withIntermediateDirectories: true)
        for db in [other, empty] {
            for args in [["dashboard", "--db", db, "--dashboard-dir", dashboardDir, "--listen", "127.0.0.1:0"],
                         ["captures", "list", "--db", db], ["agents", "list", "--db", db], ["admins", "list", "--db", db],
                         ["db", "migrate", "--from", db, "--to", fresh]] {
                let r = try runCommand([custos] + args, timeout: 60)
                #expect(r.status == 2 && r.stderrString.contains("\(db): not a collector database (no Custos schema in it)")
                        && r.stderrString.contains("sqlite3 collector.db \".backup copy.db\""), "\(args): \(r.status) \(r.stderrString)")
                #expect(!r.stderrString.contains("certificate:"), "\(args): no certificate made")
            }
        }
        let tables = try runCommand(["/usr/bin/sqlite3", other, ".tables"])
        #expect(tables.stdoutString.trimmingCharacters(in: .whitespacesAndNewlines) == "notes", "untouched: \(tables.stdoutString)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: empty)).isEmpty && !FileManager.default.fileExists(atPath: fresh))
        let missing = try runCommand([custos, "dashboard", "--db", tmp.file("nonexistent.db"), "--dashboard-dir", dashboardDir,
                                      "--listen", "127.0.0.1:0"], timeout: 60)
        #expect(missing.status == 2 && missing.stderrString.contains("collector database does not exist")
                && !missing.stderrString.contains("certificate:"), "\(missing.stderrString)")
    }

    @Test("TOTP: the code of now and of the neighbouring steps passes with its step, others fail; the URI's key is base32 of the secret")
    func totp() throws {
        let secret = AdminTOTP.newSecret()
        #expect(secret.count == 32 && secret.allSatisfy { "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".contains($0) })
        #expect(secret != AdminTOTP.newSecret())
        let now = Date(timeIntervalSince1970: 1_700_000_015)
        #expect(AdminTOTP.step(at: now) == 56_666_667, "floor(1,700,000,015 / 30)")
        #expect(AdminTOTP.matchingStep(code: AdminTOTP.code(secret: secret, at: now), secret: secret, at: now) == 56_666_667)
        #expect(AdminTOTP.matchingStep(code: AdminTOTP.code(secret: secret, at: now.addingTimeInterval(-30)), secret: secret, at: now)
            == 56_666_666)
        #expect(AdminTOTP.matchingStep(code: AdminTOTP.code(secret: secret, at: now.addingTimeInterval(30)), secret: secret, at: now)
            == 56_666_668)
        #expect(AdminTOTP.matchingStep(code: AdminTOTP.code(secret: secret, at: now.addingTimeInterval(-90)), secret: secret, at: now) == nil)
        #expect(AdminTOTP.matchingStep(code: "12345", secret: secret, at: now) == nil)
        #expect(AdminTOTP.matchingStep(code: "abcdef", secret: secret, at: now) == nil)
        // RFC 6238 Appendix B, SHA-1, T = 59 s: 94287082 (8 digits), so 287082 for 6.
        #expect(AdminTOTP.code(secret: "12345678901234567890", at: Date(timeIntervalSince1970: 59)) == "287082")
        let key = AdminTOTP.base32Key(secret: "12345678901234567890")
        #expect(key == "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", "RFC 4648 base32 of the secret's bytes")
    }

    @Test("password rule: 12 characters at least, 72 bytes at most, no control characters; never quoted")
    func passwordRule() throws {
        #expect(throws: ValueError.self) { try AdminPassword.check(Secret("elevenchars")) }
        try AdminPassword.check(Secret("twelve chars"))
        #expect(throws: ValueError.self) { try AdminPassword.check(Secret(String(repeating: "é", count: 37))) }
        #expect(throws: ValueError.self) { try AdminPassword.check(Secret("twelve chars\u{7}")) }
        do { try AdminPassword.check(Secret("short-secret")) ; try AdminPassword.check(Secret("tiny")) } catch {
            #expect(!error.description.contains("tiny"))
        }
    }
}
