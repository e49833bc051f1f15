import CollectorStorage
import CustosBase
import Foundation

/// Where a PostgreSQL database is, and where its password is kept: the one type for it, read
/// from `database=` + `database-password-file=` (collector.cfg) and `--db` + `--db-password-file`
/// (`custos`) through `StorageLocation`, and used by ``PostgresStorage``.
///
/// The URL is `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=MODE][&sslrootcert=PATH]`
/// (`postgresql://` too): libpq's URI form (https://www.postgresql.org/docs/15/libpq-connect.html#LIBPQ-CONNSTRING)
/// without a password. The password is never part of the URL (it would show in process lists,
/// shell history, config backups and logs): it is the first line of the file named by
/// ``passwordFile``, read at open by ``readPassword()``.
///
/// `HOST` is a name, an IPv4 address or a bracketed IPv6 address; `PORT` defaults to 5432;
/// `USER` and `DBNAME` may be percent-encoded (1 to 63 bytes each, PostgreSQL's identifier
/// length). `sslmode` (``SSLMode``) defaults to `verify-full`.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    /// How TLS is used to reach the server. libpq's `allow` and `prefer` are refused (they fall
    /// back to plain text without saying so), and `verify-ca` too (it accepts any certificate of
    /// the CA, whatever host it names).
    public enum SSLMode: String, Sendable, CaseIterable {
        /// No TLS: a server on this host or on a network you trust.
        case disable
        /// TLS or no connection; the server's certificate is not checked (encrypts, but no
        /// defence against an active man in the middle).
        case require
        /// TLS; the certificate must chain to ``PostgresLocation/sslRootCert`` (or the system's
        /// trust store) and name `HOST`. The default.
        case verifyFull = "verify-full"
    }

    /// `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=…]`, for messages.
    public static let form = "postgres://USER@HOST[:PORT]/DBNAME[?sslmode=disable|require|verify-full][&sslrootcert=PATH]"

    /// The role to log in as (percent-decoded).
    public let user: String
    /// Host name or IP address (IPv6 without brackets).
    public let host: String
    /// TCP port (default 5432).
    public let port: Int
    /// Database name (percent-decoded).
    public let database: String
    /// Default ``SSLMode/verifyFull``.
    public let sslMode: SSLMode
    /// A PEM file of CA certificates for `verify-full`; nil: the system's trust store.
    public let sslRootCert: String?
    /// The file whose first line is the password (`database-password-file=`, `--db-password-file`);
    /// nil: none (the server trusts this client without a password).
    public let passwordFile: String?

    public init(user: String, host: String, port: Int = 5432, database: String, sslMode: SSLMode = .verifyFull,
                sslRootCert: String? = nil, passwordFile: String? = nil) {
        self.user = user
        self.host = host
        self.port = port
        self.database = database
        self.sslMode = sslMode
        self.sslRootCert = sslRootCert
        self.passwordFile = passwordFile
    }

    /// Parses a `postgres://` or `postgresql://` URL of the form above.
    /// - Parameters:
    ///   - passwordFile: the `database-password-file=` / `--db-password-file` value.
    ///   - resolvingPath: turns a relative path (the password file, `sslrootcert`) into the one
    ///     to use (collector.cfg: against its folder; the CLI: as given).
    ///   - field, passwordField: the config key or option names used in errors.
    /// - Throws: ``ValueError`` naming `field` and what was expected: another scheme; a
    ///   password (in the user part or as `password=`; never repeated); no user, host or
    ///   database name; a name of more than 63 bytes or with control characters; a port outside
    ///   1–65535; a path of more than one segment; a fragment; a parameter other than `sslmode`
    ///   and `sslrootcert`, or one given twice; an `sslmode` other than ``SSLMode``'s (saying
    ///   why `prefer`, `allow` and `verify-ca` are refused and what to use); `sslrootcert`
    ///   without `sslmode=verify-full`.
    public init(_ text: String, passwordFile: String? = nil, resolvingPath: (String) -> String = { $0 },
                field: String = "database", passwordField: String = "database-password-file") throws(ValueError) {
        func refuse(_ why: String) -> ValueError {
            ValueError(field: field, "\(why); expected \(Self.form), found \(SafeText.quoted(Self.withoutPassword(text)))")
        }
        guard let schemeEnd = text.range(of: "://"),
              ["postgres", "postgresql"].contains(text[..<schemeEnd.lowerBound].lowercased()) else {
            throw refuse("not a PostgreSQL URL")
        }
        var rest = Substring(text[schemeEnd.upperBound...])
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
        var sslMode = SSLMode.verifyFull, rootCert: String?, seen = Set<String>()
        for parameter in (query ?? "").split(separator: "&", omittingEmptySubsequences: true) {
            let parts = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]), raw = parts.count > 1 ? String(parts[1]) : ""
            if key == "password" {
                throw ValueError(field: field, "a password does not belong in the URL: put it in a file named by \(passwordField)")
            }
            guard key == "sslmode" || key == "sslrootcert" else {
                throw refuse("the parameter \(SafeText.quoted(key)) is not supported (only sslmode= and sslrootcert=)")
            }
            guard seen.insert(key).inserted else { throw refuse("\(key) is given twice") }
            guard let value = raw.removingPercentEncoding else { throw refuse("\(key) has a bad %-escape") }
            if key == "sslrootcert" {
                guard !value.isEmpty, !value.unicodeScalars.contains(where: { SafeText.needsEscape($0) || $0 == "\0" }) else {
                    throw refuse("sslrootcert must be the path of a PEM file of CA certificates")
                }
                rootCert = resolvingPath(value)
                continue
            }
            switch value {
            case "prefer", "allow":
                throw refuse("sslmode=\(value) is not supported: it falls back to an unencrypted connection without saying so; use sslmode=verify-full (TLS, the server's certificate and name checked; add sslrootcert=PATH for a private CA), require (TLS, certificate not checked) or disable (no TLS, for a network you trust)")
            case "verify-ca":
                throw refuse("sslmode=verify-ca is not supported: it accepts any certificate of the CA whatever host it names; use sslmode=verify-full (with sslrootcert=PATH for a private CA)")
            default:
                guard let mode = SSLMode(rawValue: value) else {
                    throw refuse("sslmode=\(SafeText.escaped(value)) is not one of \(SSLMode.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                sslMode = mode
            }
        }
        if rootCert != nil && sslMode != .verifyFull {
            throw refuse("sslrootcert is only used with sslmode=verify-full")
        }
        self.init(user: user, host: String(host), port: port, database: database, sslMode: sslMode,
                  sslRootCert: rootCert, passwordFile: passwordFile.map(resolvingPath))
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

    /// `postgres://USER@HOST:PORT/DBNAME?sslmode=MODE[&sslrootcert=PATH]` (percent-encoded
    /// where needed; never a password: there is none). Parses back to an equal value, but for
    /// ``passwordFile``.
    public var description: String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        let u = user.addingPercentEncoding(withAllowedCharacters: allowed) ?? user
        let d = database.addingPercentEncoding(withAllowedCharacters: allowed) ?? database
        var s = "postgres://\(u)@\(hostForURL):\(port)/\(d)?sslmode=\(sslMode.rawValue)"
        if let sslRootCert {
            let pathAllowed = allowed.union(CharacterSet(charactersIn: "/"))
            s += "&sslrootcert=\(sslRootCert.addingPercentEncoding(withAllowedCharacters: pathAllowed) ?? sslRootCert)"
        }
        return s
    }

    /// `HOST:PORT/DBNAME` (escaped): how health names the database (``StorageHealth/location``).
    public var shown: String { SafeText.escaped("\(hostForURL):\(port)/\(database)") }

    /// `USER@HOST:PORT/DBNAME` (escaped): how errors name the database and the role.
    public var named: String { SafeText.escaped("\(user)@\(hostForURL):\(port)/\(database)") }

    /// Largest password file read.
    public static let maxPasswordFileBytes = 4096

    /// The password: the first line of ``passwordFile`` (``readPasswordFile(_:)``), nil when no
    /// file is named.
    /// - Throws: ``StorageError`` `.failed`: see ``readPasswordFile(_:)``.
    public func readPassword() throws(StorageError) -> Secret? {
        try passwordFile.map { path throws(StorageError) in try Self.readPasswordFile(path) }
    }

    /// The password in file `path`: its first line, without the line end (LF or CR LF). The
    /// file is a secret, like libpq's `~/.pgpass`: it must be a regular file that others (not
    /// the owner or its group) may neither read nor write (`chmod o-rwx`; group access is
    /// allowed so a service's group can read a root-owned file), of at most
    /// ``maxPasswordFileBytes`` bytes.
    /// - Throws: ``StorageError`` `.failed` naming the file (never its content): missing or
    ///   unreadable (with the system's reason), not a regular file, open to others (with its
    ///   mode and the `chmod` to run), too large, or with an empty first line.
    public static func readPasswordFile(_ path: String) throws(StorageError) -> Secret {
        let shown = SafeText.quoted(path)
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw StorageError(.failed, "database password file \(shown): \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw StorageError(.failed, "database password file \(shown): not a regular file")
        }
        if let problem = SecretFileMode.problem(mode: st.st_mode, shown: shown) {
            throw StorageError(.failed, "database password file \(shown): \(problem)")
        }
        guard st.st_size <= maxPasswordFileBytes, let data = FileManager.default.contents(atPath: path) else {
            throw StorageError(.failed, "database password file \(shown): cannot be read, or larger than \(maxPasswordFileBytes) bytes")
        }
        var line = String(decoding: data.prefix { $0 != 0x0A }, as: UTF8.self)
        if line.hasSuffix("\r") { line.removeLast() }
        guard !line.isEmpty else { throw StorageError(.failed, "database password file \(shown): the first line is empty; expected the password there") }
        return Secret(line)
    }
}
