import CollectorStorage
import CollectorStoragePostgres
import CustosBase
import Foundation

/// Where the collector's storage lives: the value of `database=` in `collector.cfg` and of
/// `--db` for every `custos` command, read by one validator (``init(_:passwordFile:resolvingPath:field:passwordField:)``).
///
/// Two forms (docs/API.md "Storage"):
/// - a file path: a SQLite database (the embedded default; created when missing where the
///   caller allows it), its blob files in the directory beside it;
/// - `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=MODE][&sslrootcert=PATH]` (or `postgresql://`):
///   a PostgreSQL database, parsed by ``PostgresLocation`` (CollectorStoragePostgres). The
///   password is never part of the URL (it would show in `ps`, shell history and logs): it
///   comes from a file named by `database-password-file=` / `--db-password-file`.
public enum StorageLocation: Sendable, Equatable, CustomStringConvertible {
    /// A SQLite database file (as given, or resolved against the config file's folder).
    case sqlite(path: String)
    /// A PostgreSQL database.
    case postgres(PostgresLocation)

    /// Parses `text`.
    /// - Parameters:
    ///   - passwordFile: the `database-password-file=` / `--db-password-file` value (a path),
    ///     allowed with a `postgres://` URL only.
    ///   - resolvingPath: turns a relative path (the SQLite file, the password file, `sslrootcert`) into the
    ///     one to use: the config file resolves against its folder; the CLI keeps it as given.
    ///   - field, passwordField: the config key or option names used in errors.
    /// - Throws: ``ValueError`` naming `field` (or `passwordField`) and what was expected: an
    ///   empty value; a URL of another scheme; a `postgres://` URL that
    ///   ``PostgresLocation/init(_:passwordFile:resolvingPath:field:passwordField:)`` refuses;
    ///   a password file with a SQLite path.
    public init(_ text: String, passwordFile: String? = nil, resolvingPath: (String) -> String = { $0 },
                field: String = "database", passwordField: String = "database-password-file") throws(ValueError) {
        guard !text.isEmpty else {
            throw ValueError(field: field, "expected a SQLite file path or \(PostgresLocation.form), found an empty value")
        }
        if let scheme = Self.scheme(of: text) {
            guard ["postgres", "postgresql"].contains(scheme.lowercased()) else {
                throw ValueError(field: field, "the scheme \(SafeText.quoted(scheme)) is not supported; expected a SQLite file path or \(PostgresLocation.form), found \(SafeText.quoted(text))")
            }
            self = .postgres(try PostgresLocation(text, passwordFile: passwordFile, resolvingPath: resolvingPath,
                                                  field: field, passwordField: passwordField))
            return
        }
        if passwordFile != nil {
            throw ValueError(field: passwordField, "is for a \(PostgresLocation.form) database only; \(field) is the SQLite file \(SafeText.quoted(text)), which has no password")
        }
        self = .sqlite(path: resolvingPath(text))
    }

    /// The scheme of `text` when it starts like a URL (`LETTER (LETTER | DIGIT | + - .)* ://`,
    /// RFC 3986 §3.1), else nil (a file path, even one holding a colon).
    static func scheme(of text: String) -> String? {
        guard let end = text.range(of: "://") else { return nil }
        let scheme = text[..<end.lowerBound]
        guard let first = scheme.unicodeScalars.first, first.isASCII, first.properties.isAlphabetic else { return nil }
        let ok = scheme.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "+-.".unicodeScalars.contains($0)) }
        return ok ? String(scheme) : nil
    }

    /// The file path, or the URL without any secret (``PostgresLocation/description``).
    public var description: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let p): p.description
        }
    }

    /// What messages and health name: the file path, or `HOST:PORT/DBNAME`.
    public var shown: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let p): p.shown
        }
    }
}
