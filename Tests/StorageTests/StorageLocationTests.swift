import CollectorStorage
import CollectorStorageOpen
import CollectorStorageSQLite
import CustosBase
import Foundation
import Testing
import TestSupport

/// `database=` / `--db`: one validator for a SQLite path or a `postgres://` URL, and one opener.
@Suite struct StorageLocationTests {
    @Test func pathsAndPostgresURLsParse() throws {
        #expect(try StorageLocation("collector.db") == .sqlite(path: "collector.db"))
        #expect(try StorageLocation("data/c.db", resolvingPath: { "/etc/custos/" + $0 }) == .sqlite(path: "/etc/custos/data/c.db"))
        // A colon in a file name is still a file name.
        #expect(try StorageLocation("./a:b.db") == .sqlite(path: "./a:b.db"))

        let full = try StorageLocation("postgres://custos@db.example.org:6543/collector?sslmode=verify-full",
                                       passwordFile: "pw", resolvingPath: { "/etc/custos/" + $0 })
        #expect(full == .postgres(PostgresLocation(user: "custos", host: "db.example.org", port: 6543, database: "collector",
                                                   sslMode: .verifyFull, passwordFile: "/etc/custos/pw")))
        #expect(full.shown == "db.example.org:6543/collector")
        #expect(full.description == "postgres://custos@db.example.org:6543/collector?sslmode=verify-full")
        let short = try StorageLocation("postgresql://u%40corp@[::1]/my%20db")
        #expect(short == .postgres(PostgresLocation(user: "u@corp", host: "::1", database: "my db")))
        #expect(short.shown == "[::1]:5432/my db")
        guard case .postgres(let p) = short else { return }
        #expect(p.sslMode == .prefer && p.port == 5432 && p.passwordFile == nil)
    }

    @Test(arguments: [
        ("", "found an empty value"),
        ("mysql://u@h/db", "the scheme 'mysql' is not supported"),
        ("postgres://u:s3cret@h/db", "a password does not belong in the URL"),
        ("postgres://u@h/db?password=s3cret", "a password does not belong in the URL"),
        ("postgres://h/db", "the user is missing"),
        ("postgres://u@/db", "the host is missing"),
        ("postgres://u@h", "the database name is missing"),
        ("postgres://u@h/", "the database name is missing"),
        ("postgres://u@h/a/b", "one database name"),
        ("postgres://u@h:0/db", "the port must be a number from 1 to 65535"),
        ("postgres://u@h:99999/db", "the port must be a number from 1 to 65535"),
        ("postgres://u@h/db?sslmode=allow", "sslmode=allow is not one of disable, prefer, require, verify-ca, verify-full"),
        ("postgres://u@h/db?sslmode=require&sslmode=disable", "sslmode is given twice"),
        ("postgres://u@h/db?connect_timeout=3", "the parameter 'connect_timeout' is not supported"),
        ("postgres://u@h/db#x", "a fragment"),
        ("postgres://u@h\u{1B}x/db", "is not a host name or IP address"),
        ("postgres://u@[::1/db", "must end with ']'"),
    ])
    func badValuesAreRefusedByName(_ text: String, _ expected: String) {
        do {
            let location = try StorageLocation(text, field: "database")
            Issue.record("\(text.debugDescription) parsed as \(location)")
        } catch {
            #expect(error.field == "database")
            #expect(error.message.contains(expected), "\(error.message)")
            #expect(!error.description.contains("s3cret"), "the password is repeated: \(error.description)")
            #expect(!error.description.unicodeScalars.contains { $0.value == 0x1B }, "raw ESC in \(error.description)")
        }
    }

    @Test func aPasswordFileGoesWithPostgresOnly() {
        #expect {
            _ = try StorageLocation("collector.db", passwordFile: "pw", field: "--db", passwordField: "--db-password-file")
        } throws: { error in
            let e = error as? ValueError
            return e?.field == "--db-password-file" && e?.message.contains("postgres://") == true
        }
    }

    @Test func thePasswordFileIsReadWithCare() throws {
        let dir = try TempDir("custos-pgpass")
        defer { dir.remove() }
        func location(_ file: String?) -> PostgresLocation {
            PostgresLocation(user: "u", host: "h", database: "d", passwordFile: file)
        }
        #expect(try location(nil).readPassword() == nil)
        let good = dir.file("good")
        try "pa ss\r\nsecond line\n".write(toFile: good, atomically: true, encoding: .utf8)
        #expect(chmod(good, 0o640) == 0)
        #expect(try location(good).readPassword()?.revealed == "pa ss")
        let loose = dir.file("loose")
        try "pw\n".write(toFile: loose, atomically: true, encoding: .utf8)
        #expect(chmod(loose, 0o644) == 0)
        let empty = dir.file("empty")
        try "\nx\n".write(toFile: empty, atomically: true, encoding: .utf8)
        #expect(chmod(empty, 0o600) == 0)
        for (file, expected) in [(loose, "others may read it"), (empty, "the first line is empty"),
                                 (dir.file("missing"), "No such file"), (dir.path, "not a regular file")] {
            #expect {
                _ = try location(file).readPassword()
            } throws: { error in
                let e = error as? StorageError
                return e?.code == .failed && e?.message.contains(file) == true && e?.message.contains(expected) == true
            }
        }
    }

    @Test func theOpenerServesSQLiteAndSaysPostgresIsNotWired() async throws {
        let dir = try TempDir("custos-open")
        defer { dir.remove() }
        let path = dir.file("c.db")
        let missing = await storageError { _ = try await StorageOpener.open(.sqlite(path: path), createIfMissing: false) }
        #expect(missing?.code == .notFound && missing?.message.contains("\(path): collector database does not exist") == true)
        #expect(!FileManager.default.fileExists(atPath: path))
        let storage = try await StorageOpener.open(.sqlite(path: path))
        #expect(storage is SQLiteStorage)
        #expect(await storage.health() == StorageHealth(backend: "sqlite", location: path, reachable: true))
        await storage.close()
        let reopened = try await StorageOpener.open(.sqlite(path: path), createIfMissing: false)
        await reopened.close()

        let pg = await storageError {
            _ = try await StorageOpener.open(try StorageLocation("postgres://custos@127.0.0.1:5432/custos"))
        }
        #expect(pg?.code == .failed)
        #expect(pg?.message == "127.0.0.1:5432/custos: this build's PostgreSQL backend is not wired yet; use a SQLite file path for the database")
    }
}
