import CollectorStoragePostgres
import CustosBase
import Foundation
import Testing
import TestSupport

/// The `postgres://` URL and the password file: one parser, clear errors, never a password
/// in a URL or a message.
struct PostgresURLTests {
    @Test func parsesTheForms() throws {
        let u = try PostgresURL("postgres://custos@db.example.org:6543/collector?sslmode=require")
        #expect(u == PostgresURL(user: "custos", host: "db.example.org", port: 6543, database: "collector", sslMode: .require))
        #expect(u.location == "db.example.org:6543/collector")
        #expect(u.description == "postgres://custos@db.example.org:6543/collector?sslmode=require")

        let d = try PostgresURL("postgresql://custos@10.0.0.5/custos")
        #expect(d.port == 5432 && d.sslMode == .verifyFull && d.sslRootCert == nil)
        let v6 = try PostgresURL("postgres://c%40x@[::1]:5433/my%20db?sslmode=verify-full&sslrootcert=/etc/custos/db-ca.pem")
        #expect(v6.host == "::1" && v6.port == 5433 && v6.user == "c@x" && v6.database == "my db")
        #expect(v6.sslRootCert == "/etc/custos/db-ca.pem" && v6.location == "[::1]:5433/my db")
        #expect(try PostgresURL(v6.description) == v6)
        #expect(PostgresURL.isPostgresURL("postgres://x@y/z") && !PostgresURL.isPostgresURL("/var/lib/custos/collector.db"))
    }

    @Test func refusesBadURLs() {
        func message(_ text: String) -> String {
            do { _ = try PostgresURL(text); return "" } catch { return error.description }
        }
        let withPassword = message("postgres://custos:S3cretPW@db/custos")
        #expect(withPassword.contains("password file") && !withPassword.contains("S3cretPW"))
        #expect(message("postgres://custos@db/custos?password=S3cretPW").contains("password file"))
        #expect(!message("postgres://custos@db/custos?password=S3cretPW").contains("S3cretPW"))
        #expect(message("postgres://custos@db/custos?sslmode=prefer").contains("sslmode must be disable, require or verify-full"))
        #expect(message("postgres://custos@db/custos?connect_timeout=3").contains("unknown parameter 'connect_timeout'"))
        #expect(message("postgres://custos@db:99999/custos").contains("port must be 1-65535"))
        #expect(message("postgres://db/custos").contains("no user name"))
        #expect(message("postgres://custos@db").contains("no database name"))
        #expect(message("postgres://custos@db/").contains("no database name"))
        #expect(message("mysql://custos@db/custos").hasPrefix("database: expected postgres://"))
        #expect(message("postgres://custos@db/custos?sslmode=require&sslrootcert=/ca.pem").contains("only used with sslmode=verify-full"))
        #expect(message("postgres://custos@d\u{1B}[2Jb/x").contains("\\u{1B}"))
    }

    @Test func readsThePasswordFile() throws {
        let dir = try TempDir("custos-pgpw")
        defer { dir.remove() }
        let path = dir.file("db.password")
        try Data("pa ss\r\nsecond line\n".utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o640)
        #expect(try PostgresURL.readPasswordFile(path).revealed == "pa ss")

        chmod(path, 0o644)
        do {
            _ = try PostgresURL.readPasswordFile(path)
            Issue.record("a world-readable password file was accepted")
        } catch {
            #expect(error.description.contains("readable by every user") && !error.description.contains("pa ss"))
        }
        try Data("\n".utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o600)
        #expect(throws: ValueError.self) { try PostgresURL.readPasswordFile(path) }
        #expect(throws: ValueError.self) { try PostgresURL.readPasswordFile(dir.file("missing")) }
    }
}
