import Foundation

/// Why a value (an agent id, a collector URL, an SPKI pin) was refused. `field` names the
/// config key or argument; the message says what was expected and quotes the value escaped
/// (``SafeText/quoted(_:)``), so it can be shown to a terminal or a log.
public struct ValueError: Error, Sendable, CustomStringConvertible {
    /// The config key or argument the value came from (e.g. `server-url`).
    public let field: String
    /// What was expected, and the escaped value found.
    public let message: String

    public init(field: String, _ message: String) {
        self.field = field
        self.message = message
    }

    public var description: String { "\(field): \(message)" }
}

/// An agent id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, and neither `.` nor `..` (ids name
/// directories on the reviewer's machine). The one validator used by the agent's config, the
/// transport, the collector and `custos agents add`.
public struct AgentID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The validated id.
    public let rawValue: String

    /// - Throws: ``ValueError`` naming `field` when `text` is not a valid id.
    public init(_ text: String, field: String = "agent-id") throws(ValueError) {
        guard Self.isValid(text) else {
            throw ValueError(field: field,
                             "expected 1-64 letters, digits, '.', '_' or '-' (not '.' or '..'), found \(SafeText.quoted(text))")
        }
        rawValue = text
    }

    /// Whether `text` is a valid agent id.
    public static func isValid(_ text: String) -> Bool {
        guard (1...64).contains(text.utf8.count), text != ".", text != ".." else { return false }
        return text.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == 0x2E || c == 0x5F || c == 0x2D
        }
    }

    public var description: String { rawValue }
    public static func < (a: AgentID, b: AgentID) -> Bool { a.rawValue < b.rawValue }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
}

/// The user a capture belongs to: the login name of the graphical session's user, as the agent
/// names it in a sealed session blob's header (docs/FORMAT.md "Sealed session blob"). The one
/// validator for a user name: the agent's session discovery, the blob parser, the storage rows,
/// `custos captures --user` and the per-user folders of `custos decrypt`/`open` all go through it.
///
/// Valid: 1-128 UTF-8 bytes; no character `SafeText` would escape (controls, bidirectional
/// formatting), no `/`, and not `.` or `..` — so a name is always one harmless path component
/// (no traversal), whatever a passwd or directory service holds. Login names of every common
/// form pass (`alice`, `j.doe`, `alice@corp.example`, `CORP\alice`). Two reserved forms are
/// made by the agent itself: ``unknown`` (`?`, no user found for the display) and
/// ``uid(_:)`` (`uid-N`, a uid without a passwd entry).
public struct UserName: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The validated name.
    public let rawValue: String

    /// - Throws: ``ValueError`` naming `field` when `text` is not a valid user name.
    public init(_ text: String, field: String = "user") throws(ValueError) {
        guard Self.isValid(text) else {
            throw ValueError(field: field,
                             "expected a login name of 1-128 UTF-8 bytes without '/', control or bidirectional characters (not '.' or '..'), found \(SafeText.quoted(text))")
        }
        rawValue = text
    }

    /// Whether `text` is a valid user name.
    public static func isValid(_ text: String) -> Bool {
        guard (1...128).contains(text.utf8.count), text != ".", text != ".." else { return false }
        return !text.unicodeScalars.contains { $0 == "/" || SafeText.needsEscape($0) }
    }

    /// No user could be found for the display (`?`: not a login name anyone has).
    public static let unknown = UserName(unchecked: "?")

    /// A uid without a passwd entry (`uid-N`).
    public static func uid(_ uid: UInt32) -> UserName { UserName(unchecked: "uid-\(uid)") }

    private init(unchecked text: String) { rawValue = text }

    public var description: String { rawValue }
    public static func < (a: UserName, b: UserName) -> Bool { a.rawValue < b.rawValue }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
}

/// The collector's address, `https://HOST[:PORT][/]`: scheme `https` only, a host name or an
/// IPv4/IPv6 literal (IPv6 in brackets), no user, path, query or fragment (the API lives at
/// `/v1`; docs/API.md). The one validator used by `--check-config`, `status` and the daemon.
public struct CollectorURL: Hashable, Sendable, CustomStringConvertible {
    /// Host name (lowercase) or IP address, without brackets.
    public let host: String
    /// TCP port (default 443).
    public let port: Int

    /// - Throws: ``ValueError`` naming `field` and what was expected.
    public init(_ text: String, field: String = "server-url") throws(ValueError) {
        let expected = "expected https://HOST[:PORT] (no path, query or user), found \(SafeText.quoted(text))"
        guard let url = URLComponents(string: text), url.scheme?.lowercased() == "https",
              var host = url.host, !host.isEmpty else {
            throw ValueError(field: field, expected)
        }
        guard url.path.isEmpty || url.path == "/" else {
            throw ValueError(field: field, "a path is not supported (the API lives at /v1); \(expected)")
        }
        guard url.query == nil, url.fragment == nil, url.user == nil, url.password == nil else {
            throw ValueError(field: field, expected)
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard host.unicodeScalars.allSatisfy({ $0.isASCII && !SafeText.needsEscape($0) && $0 != " " }) else {
            throw ValueError(field: field, expected)
        }
        let port = url.port ?? 443
        guard (1...65535).contains(port) else {
            throw ValueError(field: field, "port \(port) is outside 1-65535; \(expected)")
        }
        // Host names are case-insensitive (RFC 3986 §3.2.2): one spelling, so the same
        // collector compares equal however it was written.
        self.host = host.lowercased()
        self.port = port
    }

    /// `https://HOST:PORT` (IPv6 literals in brackets).
    public var description: String { "https://\(hostForHeader):\(port)" }

    /// The host as written in a URL or a `Host:` header: IPv6 literals in brackets.
    public var hostForHeader: String { host.contains(":") ? "[\(host)]" : host }

    /// Whether the host is an IP literal (then no SNI is sent; RFC 6066 §3).
    public var hostIsIPAddress: Bool {
        host.contains(":") || host.split(separator: ".", omittingEmptySubsequences: false).count == 4
            && host.allSatisfy { $0.isNumber || $0 == "." }
    }
}

/// An SPKI pin: the SHA-256 of a certificate's DER SubjectPublicKeyInfo, written
/// `sha256/BASE64` (the RFC 7469 §2.4 pin-sha256 value, as in `curl --pinnedpubkey`).
///
/// Compute one with
/// `openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64`.
public struct SPKIPin: Hashable, Sendable, CustomStringConvertible {
    /// The 32-byte SHA-256 digest.
    public let digest: [UInt8]

    /// Parses `sha256/BASE64` (44 base64 characters for 32 bytes); surrounding blanks are ignored.
    /// - Throws: ``ValueError`` naming `field`.
    public init(_ text: String, field: String = "server-pin") throws(ValueError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("sha256/"),
              let bytes = Data(base64Encoded: String(trimmed.dropFirst("sha256/".count))),
              bytes.count == 32 else {
            throw ValueError(field: field, "expected sha256/ followed by the base64 of 32 bytes, found \(SafeText.quoted(text))")
        }
        digest = Array(bytes)
    }

    /// A pin from its 32-byte digest.
    public init(digest: [UInt8]) {
        precondition(digest.count == 32, "an SPKI pin is a SHA-256 digest (32 bytes)")
        self.digest = digest
    }

    /// `sha256/BASE64`.
    public var description: String { "sha256/" + Data(digest).base64EncodedString() }
}

/// A secret string (an agent token, a password): its description is `<redacted>`, so string
/// interpolation, `dump` and log metadata never show it. Read ``revealed`` where the secret is used.
public struct Secret: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The secret itself. Use it only where it is sent or compared.
    public let revealed: String

    public init(_ value: String) { revealed = value }

    public var isEmpty: Bool { revealed.isEmpty }
    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
    public var customMirror: Mirror { Mirror(self, children: []) }
}

/// Unix milliseconds as people read them: `2026-11-30T23:59:01.123Z` (RFC 3339 in UTC, with
/// milliseconds). The one text form of a time in listings, messages and file layouts.
public func isoTime(unixMs ms: Int64) -> String {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    f.timeZone = TimeZone(identifier: "UTC")
    return f.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
}
