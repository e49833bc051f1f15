import CollectorStorage
import CustosBase
import Foundation

/// Where the collector's storage lives: the value of `database=` in `collector.cfg` and of
/// `--db` for every `custos` command, read by one validator (``init(_:passwordFile:resolvingPath:field:passwordField:)``).
///
/// Two forms (docs/API.md "Storage"):
/// - a file path: a SQLite database (the embedded default; created when missing where the
///   caller allows it), its blob files in the directory beside it;
/// - `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=MODE]` (or `postgresql://`): a PostgreSQL
///   database. The password is never part of the URL (it would show in `ps`, shell history
///   and logs): it comes from a file named by `database-password-file=` / `--db-password-file`.
public enum StorageLocation: Sendable, Equatable, CustomStringConvertible {
    /// A SQLite database file (as given, or resolved against the config file's folder).
    case sqlite(path: String)
    /// A PostgreSQL database.
    case postgres(PostgresLocation)

    /// Parses `text`.
    /// - Parameters:
    ///   - passwordFile: the `database-password-file=` / `--db-password-file` value (a path),
    ///     allowed with a `postgres://` URL only.
    ///   - resolvingPath: turns a relative path (the SQLite file, the password file) into the
    ///     one to use: the config file resolves against its folder; the CLI keeps it as given.
    ///   - field, passwordField: the config key or option names used in errors.
    /// - Throws: ``ValueError`` naming `field` (or `passwordField`) and what was expected: an
    ///   empty value; a URL of another scheme; a `postgres://` URL with a password, no user, no
    ///   host, a port outside 1–65535, no database name, a path of more than one segment, a
    ///   fragment, a query parameter other than `sslmode`, or an `sslmode` other than
    ///   ``PostgresLocation/SSLMode``'s; a password file with a SQLite path.
    public init(_ text: String, passwordFile: String? = nil, resolvingPath: (String) -> String = { $0 },
                field: String = "database", passwordField: String = "database-password-file") throws(ValueError) {
        guard !text.isEmpty else {
            throw ValueError(field: field, "expected a SQLite file path or \(PostgresLocation.form), found an empty value")
        }
        if let scheme = Self.scheme(of: text) {
            guard ["postgres", "postgresql"].contains(scheme.lowercased()) else {
                throw ValueError(field: field, "the scheme \(SafeText.quoted(scheme)) is not supported; expected a SQLite file path or \(PostgresLocation.form), found \(SafeText.quoted(text))")
            }
            self = .postgres(try PostgresLocation(parsing: text, passwordFile: passwordFile.map(resolvingPath), field: field,
                                                  passwordField: passwordField))
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

/// A `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=MODE]` location (libpq's URI form,
/// https://www.postgresql.org/docs/15/libpq-connect.html#LIBPQ-CONNSTRING, without a password).
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    /// How TLS is used to reach the server (libpq's `sslmode` values, `allow` excepted).
    public enum SSLMode: String, Sendable, CaseIterable {
        /// No TLS.
        case disable
        /// TLS when the server offers it, without checking its certificate (libpq's default).
        case prefer
        /// TLS or no connection; the certificate is not checked.
        case require
        /// TLS; the certificate must chain to a trusted CA.
        case verifyCA = "verify-ca"
        /// TLS; the certificate must chain to a trusted CA and name the host.
        case verifyFull = "verify-full"
    }

    /// `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=…]`, for messages.
    static let form = "postgres://USER@HOST[:PORT]/DBNAME[?sslmode=…]"

    /// The role to log in as (percent-decoded).
    public let user: String
    /// Host name or IP address (IPv6 without brackets).
    public let host: String
    /// TCP port (default 5432).
    public let port: Int
    /// Database name (percent-decoded).
    public let database: String
    /// Default ``SSLMode/prefer``, as libpq.
    public let sslMode: SSLMode
    /// The file whose first line is the password (`database-password-file=`, `--db-password-file`);
    /// nil: none (trust or peer authentication, a client certificate).
    public let passwordFile: String?

    public init(user: String, host: String, port: Int = 5432, database: String, sslMode: SSLMode = .prefer,
                passwordFile: String? = nil) {
        self.user = user
        self.host = host
        self.port = port
        self.database = database
        self.sslMode = sslMode
        self.passwordFile = passwordFile
    }

    /// - Throws: ``ValueError``: see ``StorageLocation/init(_:passwordFile:resolvingPath:field:passwordField:)``.
    init(parsing text: String, passwordFile: String?, field: String, passwordField: String) throws(ValueError) {
        func refuse(_ why: String) -> ValueError {
            ValueError(field: field, "\(why); expected \(Self.form), found \(SafeText.quoted(Self.withoutPassword(text)))")
        }
        var rest = Substring(text[text.range(of: "://")!.upperBound...])
        guard !rest.contains("#") else { throw refuse("a fragment (#…) is not supported") }
        var query: Substring?
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        guard let slash = rest.firstIndex(of: "/") else { throw refuse("the database name is missing") }
        let authority = rest[..<slash], path = rest[rest.index(after: slash)...]
        guard let at = authority.lastIndex(of: "@") else { throw refuse("the user is missing") }
        let userInfo = authority[..<at], hostPort = authority[authority.index(after: at)...]
        guard !userInfo.contains(":") else {
            throw ValueError(field: field, "a password does not belong in the URL (it would show in process lists, shell history and logs): put it in a file named by \(passwordField), and give \(Self.form), found \(SafeText.quoted(Self.withoutPassword(text)))")
        }
        let user = try Self.name(userInfo, "user", refuse)
        var host: Substring, portText: Substring?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw refuse("an IPv6 address must end with ']'") }
            host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw refuse("only :PORT may follow an IPv6 address") }
                portText = after.dropFirst()
            }
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                throw refuse("\(SafeText.quoted(host)) is not an IPv6 address")
            }
        } else if let colon = hostPort.firstIndex(of: ":") {
            host = hostPort[..<colon]
            portText = hostPort[hostPort.index(after: colon)...]
        } else {
            host = hostPort
        }
        guard !host.isEmpty else { throw refuse("the host is missing") }
        guard host.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-._:".unicodeScalars.contains($0)) }) else {
            throw refuse("the host \(SafeText.quoted(host)) is not a host name or IP address")
        }
        var port = 5432
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p), portText.allSatisfy(\.isASCII) else {
                throw refuse("the port must be a number from 1 to 65535")
            }
            port = p
        }
        guard !path.contains("/") else { throw refuse("the path must be one database name") }
        let database = try Self.name(path, "database name", refuse)
        var sslMode = SSLMode.prefer, seen = Set<String>()
        for parameter in (query ?? "").split(separator: "&", omittingEmptySubsequences: true) {
            let parts = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]), value = parts.count > 1 ? String(parts[1]) : ""
            if key == "password" {
                throw ValueError(field: field, "a password does not belong in the URL: put it in a file named by \(passwordField)")
            }
            guard key == "sslmode" else {
                throw refuse("the parameter \(SafeText.quoted(key)) is not supported (only sslmode=)")
            }
            guard seen.insert(key).inserted else { throw refuse("sslmode is given twice") }
            guard let mode = SSLMode(rawValue: value) else {
                throw refuse("sslmode=\(SafeText.escaped(value)) is not one of \(SSLMode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            sslMode = mode
        }
        self.init(user: user, host: String(host), port: port, database: database, sslMode: sslMode,
                  passwordFile: passwordFile)
    }

    /// A percent-decoded user or database name: 1 to 63 bytes (PostgreSQL's identifier length,
    /// NAMEDATALEN - 1), no control characters.
    private static func name(_ raw: Substring, _ what: String, _ refuse: (String) -> ValueError) throws(ValueError) -> String {
        guard !raw.isEmpty else { throw refuse("the \(what) is missing") }
        guard let decoded = String(raw).removingPercentEncoding else { throw refuse("the \(what) has a bad %-escape") }
        guard (1...63).contains(decoded.utf8.count), !decoded.unicodeScalars.contains(where: { SafeText.needsEscape($0) || $0 == "\0" }) else {
            throw refuse("the \(what) must be 1 to 63 bytes without control characters")
        }
        return decoded
    }

    /// `text` with anything between `://` and `@` after a colon replaced by `***`, so an error
    /// about a URL holding a password does not repeat it.
    static func withoutPassword(_ text: String) -> String {
        guard let start = text.range(of: "://")?.upperBound,
              let at = text[start...].firstIndex(where: { $0 == "@" || $0 == "/" }), text[at] == "@",
              let colon = text[start..<at].firstIndex(of: ":") else { return text }
        return String(text[..<text.index(after: colon)]) + "***" + String(text[at...])
    }

    /// The host as written in a URL: IPv6 literals in brackets.
    var hostForURL: String { host.contains(":") ? "[\(host)]" : host }

    /// `postgres://USER@HOST:PORT/DBNAME?sslmode=MODE` (percent-encoded where needed; never a password).
    public var description: String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        let u = user.addingPercentEncoding(withAllowedCharacters: allowed) ?? user
        let d = database.addingPercentEncoding(withAllowedCharacters: allowed) ?? database
        return "postgres://\(u)@\(hostForURL):\(port)/\(d)?sslmode=\(sslMode.rawValue)"
    }

    /// `HOST:PORT/DBNAME`: how messages and health name the database (``StorageHealth/location``).
    public var shown: String { "\(hostForURL):\(port)/\(database)" }

    /// Largest password file read.
    static let maxPasswordFileBytes = 4096

    /// The password: the first line of ``passwordFile`` (without its line end), nil when no file
    /// is named. Refused when others (not the owner or group) may read the file, as libpq
    /// refuses a loose `~/.pgpass`.
    /// - Throws: ``StorageError`` `.failed` naming the file: missing, unreadable, readable by
    ///   others, larger than 4 KiB, or with an empty first line.
    public func readPassword() throws(StorageError) -> Secret? {
        guard let path = passwordFile else { return nil }
        let shown = SafeText.quoted(path)
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw StorageError(.failed, "database password file \(shown): \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw StorageError(.failed, "database password file \(shown): not a regular file")
        }
        guard st.st_mode & 0o007 == 0 else {
            throw StorageError(.failed, "database password file \(shown): others may read it (mode \(String(st.st_mode & 0o777, radix: 8))); chmod o-rwx it")
        }
        guard st.st_size <= Self.maxPasswordFileBytes, let data = FileManager.default.contents(atPath: path) else {
            throw StorageError(.failed, "database password file \(shown): cannot be read, or larger than \(Self.maxPasswordFileBytes) bytes")
        }
        var line = String(decoding: data.prefix { $0 != 0x0A }, as: UTF8.self)
        if line.hasSuffix("\r") { line.removeLast() }
        guard !line.isEmpty else { throw StorageError(.failed, "database password file \(shown): the first line is empty") }
        return Secret(line)
    }
}
