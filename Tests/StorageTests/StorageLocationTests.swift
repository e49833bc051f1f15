import CollectorStorage
import CollectorStorageOpen
import CollectorStoragePostgres
import CollectorStorageSQLite
import CustosBase
import Foundation
import Testing
import TestSupport

/// `database=` / `--db`: one validator for a SQLite path or a `postgres://` URL (one
/// `PostgresLocation`, the type the backend uses too), one password-file reader, one opener.
@Suite struct StorageLocationTests {
    @Test func pathsAndPostgresURLsParse() throws {
        #expect(try StorageLocation("collector.db") == .sqlite(path: "collector.db"))
        #expect(try StorageLocation("data/c.db", resolvingPath: { "/etc/custos/" + $0 }) == .sqlite(path: "/etc/custos/data/c.db"))
        // A colon in a file name is still a file name.
        #expect(try StorageLocation("./a:b.db") == .sqlite(path: "./a:b.db"))

        let full = try StorageLocation("postgres://custos@db.example.org:6543/collector?sslmode=verify-full&sslrootcert=ca.pem",
                                       passwordFile: "pw", resolvingPath: { "/etc/custos/" + $0 })
        #expect(full == .postgres(PostgresLocation(user: "custos", host: "db.example.org", port: 6543, database: "collector",
                                                   sslMode: .verifyFull, sslRootCert: "/etc/custos/ca.pem",
                                                   passwordFile: "/etc/custos/pw")))
        #expect(full.shown == "db.example.org:6543/collector")
        #expect(full.description == "postgres://custos@db.example.org:6543/collector?sslmode=verify-full&sslrootcert=/etc/custos/ca.pem")
        let required = try StorageLocation("postgres://custos@10.0.0.5/custos?sslmode=require")
        #expect(required == .postgres(PostgresLocation(user: "custos", host: "10.0.0.5", database: "custos", sslMode: .require)))
        let short = try StorageLocation("postgresql://u%40corp@[::1]/my%20db")
        #expect(short == .postgres(PostgresLocation(user: "u@corp", host: "::1", database: "my db")))
        #expect(short.shown == "[::1]:5432/my db")
        guard case .postgres(let p) = short, case .postgres(let f) = full else { return }
        // verify-full is the default: TLS, certificate and host name checked.
        #expect(p.sslMode == .verifyFull && p.port == 5432 && p.passwordFile == nil && p.sslRootCert == nil)
        #expect(p.named == "u@corp@[::1]:5432/my db")
        // description parses back to the same place (the password file is not part of the URL).
        #expect(try PostgresLocation(p.description) == p)
        #expect(try PostgresLocation(f.description, passwordFile: f.passwordFile) == f)
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
        ("postgres://u@h/db?sslmode=allow", "sslmode=allow is not supported: it falls back to an unencrypted connection"),
        ("postgres://u@h/db?sslmode=prefer", "sslmode=prefer is not supported: it falls back to an unencrypted connection without saying so; use sslmode=verify-full"),
        ("postgres://u@h/db?sslmode=verify-ca", "sslmode=verify-ca is not supported: it accepts any certificate of the CA whatever host it names; use sslmode=verify-full"),
        ("postgres://u@h/db?sslmode=VERIFY", "sslmode=VERIFY is not one of disable, require, verify-full"),
        ("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem", "sslrootcert is only used with sslmode=verify-full"),
        ("postgres://u@h/db?sslrootcert=", "sslrootcert must be the path of a PEM file"),
        ("postgres://u@h/db?sslrootcert=/a&sslrootcert=/b", "sslrootcert is given twice"),
        ("postgres://\(String(repeating: "u", count: 64))@h/db", "the user must be 1 to 63 bytes"),
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
        let writable = dir.file("writable")
        try "pw\n".write(toFile: writable, atomically: true, encoding: .utf8)
        #expect(chmod(writable, 0o602) == 0)
        for (file, expected) in [(loose, "others may read or write it (mode 644); run chmod o-rwx '\(loose)'"),
                                 (writable, "others may read or write it (mode 602)"), (empty, "the first line is empty"),
                                 (dir.file("missing"), "No such file"), (dir.path, "not a regular file")] {
            #expect {
                _ = try location(file).readPassword()
            } throws: { error in
                let e = error as? StorageError
                return e?.code == .failed && e?.message.contains(file) == true && e?.message.contains(expected) == true
            }
        }
    }

    @Test func theOpenerServesSQLite() async throws {
        let dir = try TempDir("custos-open")
        defer { dir.remove() }
        let path = dir.file("c.db")
        let missing = await storageError { _ = try await StorageOpener.openService(.sqlite(path: path), createIfMissing: false) }
        #expect(missing?.code == .notFound && missing?.message.contains("\(path): collector database does not exist") == true)
        #expect(!FileManager.default.fileExists(atPath: path))
        try await StorageOpener.withStorage(.sqlite(path: path)) { storage in
            #expect(storage is SQLiteStorage)
            #expect(await storage.health() == StorageHealth(backend: "sqlite", location: path, reachable: true))
        }
        let reopened = try await StorageOpener.openService(.sqlite(path: path), createIfMissing: false)
        await reopened.close()
    }

    /// `withStorage` on PostgreSQL: the password read from the file, `run()` running while the
    /// closure does (calls work without the caller running anything), the schema made at once,
    /// everything closed at the end; a password file open to others is refused before any
    /// connection, naming the file and the chmod.
    @Test(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
    func theOpenerServesPostgreSQLAndRunsIt() async throws {
        let cluster = try await PostgresCluster.make()
        defer { cluster.shutdown() }
        let password = try cluster.createRole("custos")
        let db = try await cluster.createDatabaseAsync(owner: "custos")
        let dir = try TempDir("custos-open-pg")
        defer { dir.remove() }
        let pwFile = dir.file("db.password")
        try (password + "\n").write(toFile: pwFile, atomically: true, encoding: .utf8)
        #expect(chmod(pwFile, 0o640) == 0)
        let location = try StorageLocation(cluster.url(database: db, user: "custos"), passwordFile: pwFile)
        var saved: (any CollectorStorage)?
        try await StorageOpener.withStorage(location) { storage in
            saved = storage
            #expect(storage is PostgresStorage)
            // The schema exists before the first call: withStorage prepared it.
            #expect(try cluster.psql("SELECT count(*) FROM public.encryption_dek;", database: db).contains("0"))
            _ = try await storage.addAgent(try AgentID("open-test"))
            #expect(try await storage.agents().map(\.id.rawValue) == ["open-test"])
            #expect(await storage.health() == StorageHealth(backend: "postgresql", location: "\(cluster.host):\(cluster.port)/\(db)",
                                                            reachable: true))
        }
        let afterClose = await storageError { _ = try await saved!.agents() }
        #expect(afterClose?.code == .unavailable && afterClose?.message.contains("closed") == true, "\(String(describing: afterClose))")

        #expect(chmod(pwFile, 0o644) == 0)
        let loose = await storageError {
            try await StorageOpener.withStorage(location) { _ in _ = Issue.record("opened with a loose password file") }
        }
        #expect(loose?.code == .failed, "\(String(describing: loose))")
        #expect(loose?.message.contains("custos@\(cluster.host):\(cluster.port)/\(db): database password file '\(pwFile)'") == true)
        #expect(loose?.message.contains("chmod o-rwx '\(pwFile)'") == true && loose?.message.contains(password) == false)
    }
}
