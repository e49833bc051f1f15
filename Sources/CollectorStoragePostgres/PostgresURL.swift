import CustosBase
import Foundation

/// Where a PostgreSQL database is: `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=MODE][&sslrootcert=PATH]`
/// (`postgresql://` too), the libpq URI form (PostgreSQL docs, "Connection Strings") without
/// a password: the password is given separately (``readPasswordFile(_:field:)``), so that it
/// is never in a config line, a process list, a log line or an error.
///
/// `HOST` is a name, an IPv4 address or a bracketed IPv6 address; `PORT` defaults to 5432;
/// `USER` and `DBNAME` may be percent-encoded. `sslmode` is one of
/// - `disable`: no TLS (a server on this host or a private network you trust),
/// - `require`: TLS, the server's certificate not checked (encrypts; no defence against an
///   active man in the middle),
/// - `verify-full` (the default): TLS with the certificate checked against `sslrootcert` (a
///   PEM file of CA certificates) or the system's trust store, and `HOST` against its names.
/// The libpq modes `allow`, `prefer` and `verify-ca` are refused (the first two fall back to
/// plain text silently).
public struct PostgresURL: Sendable, Equatable, CustomStringConvertible {
    public enum SSLMode: String, Sendable, CaseIterable {
        case disable
        case require
        case verifyFull = "verify-full"
    }

    public var user: String
    public var host: String
    public var port: Int
    public var database: String
    public var sslMode: SSLMode
    /// CA certificates (PEM) for `verify-full`; nil: the system's trust store.
    public var sslRootCert: String?

    public init(user: String, host: String, port: Int = 5432, database: String, sslMode: SSLMode = .verifyFull,
                sslRootCert: String? = nil) {
        self.user = user
        self.host = host
        self.port = port
        self.database = database
        self.sslMode = sslMode
        self.sslRootCert = sslRootCert
    }

    /// Whether `text` names a PostgreSQL database (starts with `postgres://` or `postgresql://`)
    /// rather than a SQLite file.
    public static func isPostgresURL(_ text: String) -> Bool {
        text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }

    /// Parses a URL of the form above.
    /// - Throws: ``ValueError`` naming `field` and what was expected; a password in the URL is
    ///   refused without being repeated.
    public init(_ text: String, field: String = "database") throws(ValueError) {
        let expected = "expected postgres://USER@HOST[:PORT]/DBNAME[?sslmode=disable|require|verify-full]"
        guard let schemeEnd = text.range(of: "://"),
              ["postgres", "postgresql"].contains(String(text[..<schemeEnd.lowerBound])) else {
            throw ValueError(field: field, "\(expected), found \(SafeText.quoted(text))")
        }
        var rest = Substring(text[schemeEnd.upperBound...])
        var query = Substring("")
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        guard let slash = rest.firstIndex(of: "/") else {
            throw ValueError(field: field, "no database name: \(expected)")
        }
        let authority = rest[..<slash]
        let path = rest[rest.index(after: slash)...]
        guard let at = authority.lastIndex(of: "@") else {
            throw ValueError(field: field, "no user name: \(expected)")
        }
        let userInfo = authority[..<at]
        if userInfo.contains(":") {
            // Never echo the text: it holds a password.
            throw ValueError(field: field, "the URL holds a password: put the password in the password file (database-password-file), not in the URL")
        }
        guard let user = String(userInfo).removingPercentEncoding, !user.isEmpty else {
            throw ValueError(field: field, "no user name: \(expected)")
        }
        var hostPort = authority[authority.index(after: at)...]
        var host: String
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else {
                throw ValueError(field: field, "unclosed '[' in the host of \(SafeText.quoted(text))")
            }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            hostPort = hostPort[hostPort.index(after: close)...]
            if !hostPort.isEmpty && !hostPort.hasPrefix(":") {
                throw ValueError(field: field, "expected ':PORT' after the IPv6 address in \(SafeText.quoted(text))")
            }
        } else {
            let colon = hostPort.lastIndex(of: ":") ?? hostPort.endIndex
            host = String(hostPort[..<colon])
            hostPort = hostPort[colon...]
        }
        guard !host.isEmpty, host.unicodeScalars.allSatisfy({ $0.isASCII && !SafeText.needsEscape($0) && $0 != " " }) else {
            throw ValueError(field: field, "no valid host: \(expected), found \(SafeText.quoted(text))")
        }
        var port = 5432
        if hostPort.hasPrefix(":") {
            guard let p = Int(hostPort.dropFirst()), (1...65535).contains(p) else {
                throw ValueError(field: field, "port must be 1-65535, found \(SafeText.quoted(String(hostPort.dropFirst())))")
            }
            port = p
        }
        guard let database = String(path).removingPercentEncoding, !database.isEmpty, !database.contains("/") else {
            throw ValueError(field: field, "no database name: \(expected), found \(SafeText.quoted(text))")
        }
        var sslMode = SSLMode.verifyFull
        var rootCert: String?
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0])
            let value = parts.count > 1 ? (String(parts[1]).removingPercentEncoding ?? "") : ""
            switch key {
            case "sslmode":
                guard let mode = SSLMode(rawValue: value) else {
                    throw ValueError(field: field, "sslmode must be disable, require or verify-full, found \(SafeText.quoted(value))")
                }
                sslMode = mode
            case "sslrootcert":
                guard value.hasPrefix("/") else {
                    throw ValueError(field: field, "sslrootcert must be an absolute path, found \(SafeText.quoted(value))")
                }
                rootCert = value
            case "password":
                throw ValueError(field: field, "the URL holds a password: put the password in the password file (database-password-file), not in the URL")
            default:
                throw ValueError(field: field, "unknown parameter \(SafeText.quoted(key)) (known: sslmode, sslrootcert)")
            }
        }
        if rootCert != nil && sslMode != .verifyFull {
            throw ValueError(field: field, "sslrootcert is only used with sslmode=verify-full")
        }
        self.init(user: user, host: host, port: port, database: database, sslMode: sslMode, sslRootCert: rootCert)
    }

    /// `host:port/dbname`, the name errors and health use (never a password).
    public var location: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return SafeText.escaped("\(h):\(port)/\(database)")
    }

    /// The URL in canonical form (no password: there is none).
    public var description: String {
        let h = host.contains(":") ? "[\(host)]" : host
        let allowed = CharacterSet.urlUserAllowed.subtracting(CharacterSet(charactersIn: ":@/"))
        let u = user.addingPercentEncoding(withAllowedCharacters: allowed) ?? user
        let d = database.addingPercentEncoding(withAllowedCharacters: allowed) ?? database
        var s = "postgres://\(u)@\(h):\(port)/\(d)?sslmode=\(sslMode.rawValue)"
        if let sslRootCert { s += "&sslrootcert=\(sslRootCert)" }
        return s
    }

    /// The password in file `path`: its first line, without the line end. The file must not be
    /// readable by others (mode `o-r`): it is a secret, like `~/.pgpass` (libpq refuses a
    /// group- or world-readable one; group-readable is allowed here so a service's group can
    /// read a root-owned file).
    /// - Throws: ``ValueError`` naming `field` and the file (never its content).
    public static func readPasswordFile(_ path: String, field: String = "database-password-file") throws(ValueError) -> Secret {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw ValueError(field: field, "cannot read \(SafeText.quoted(path)): \(String(cString: strerror(errno)))")
        }
        if st.st_mode & 0o004 != 0 {
            throw ValueError(field: field, "\(SafeText.quoted(path)) is readable by every user (mode \(String(st.st_mode & 0o777, radix: 8))): chmod o-r it")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValueError(field: field, "cannot read \(SafeText.quoted(path))")
        }
        // Up to the first line end (LF or CR LF), by scalars: "\r\n" is one Character.
        let scalars = String(decoding: data, as: UTF8.self).unicodeScalars.prefix { $0 != "\n" && $0 != "\r" }
        let password = String(String.UnicodeScalarView(scalars))
        guard !password.isEmpty else {
            throw ValueError(field: field, "\(SafeText.quoted(path)) is empty: expected the password on its first line")
        }
        return Secret(password)
    }
}
