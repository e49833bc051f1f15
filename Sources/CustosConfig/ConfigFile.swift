import CustosBase
import Foundation

/// An error in a `key=value` configuration file. Its description names the file, the line
/// number (1-based) where there is one, the key, and what was expected.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    /// The file the error is about.
    public let file: String
    /// The 1-based line number, when the error is about one line.
    public let line: Int?
    /// The key involved, when there is one.
    public let key: String?
    /// What was wrong and what was expected.
    public let message: String

    public init(file: String, line: Int? = nil, key: String? = nil, _ message: String) {
        self.file = file; self.line = line; self.key = key; self.message = message
    }

    public var description: String {
        var where_ = file
        if let line { where_ += ":\(line)" }
        if let key { return "\(where_): \(key): \(message)" }
        return "\(where_): \(message)"
    }
}

/// One key a configuration file may hold: its name, type, default and meaning.
/// The agent's and collector's schemas are lists of these; `config.cfg.sample` is checked
/// against them by a test.
public struct ConfigKey: Sendable {
    /// The key as written in the file, e.g. `enable-encryption`.
    public let name: String
    /// The value's type in words, e.g. `bool`, `integer 0...9`, `path`.
    public let type: String
    /// The default as written in the file, or nil when the key has no default.
    public let defaultValue: String?
    /// Whether the key may appear more than once (e.g. `server-pin`).
    public let repeatable: Bool
    /// One-paragraph meaning, used in the sample file.
    public let doc: String

    public init(_ name: String, type: String, default defaultValue: String?, repeatable: Bool = false, doc: String) {
        self.name = name; self.type = type; self.defaultValue = defaultValue; self.repeatable = repeatable; self.doc = doc
    }
}

/// A parsed `key=value` file.
///
/// Syntax (shared by `config.cfg` and `collector.cfg`):
/// - UTF-8; a leading byte-order mark is ignored; LF or CRLF line ends.
/// - Whitespace around key and value is trimmed; blank lines are ignored.
/// - Only whole lines whose first non-blank character is `#` or `;` are comments; a `#`
///   inside a value is part of the value.
/// - Every other line is `key=value` (split at the first `=`). An unknown key, a duplicate
///   of a non-repeatable key, or a line without `=` or with an empty key is an error naming
///   the line number.
public struct ConfigFile: Sendable {
    /// One `key=value` line.
    public struct Entry: Sendable, Equatable {
        public let key: String
        public let value: String
        public let line: Int
    }

    /// The path the text came from (used in errors and to resolve relative paths).
    public let path: String
    /// The entries in file order.
    public let entries: [Entry]

    /// Parses `text` against `schema`. Throws `ConfigError` naming `path` and the line.
    public init(text: String, path: String, schema: [ConfigKey]) throws(ConfigError) {
        self.path = path
        var body = Substring(text)
        if body.hasPrefix("\u{FEFF}") { body = body.dropFirst() }
        let known = Dictionary(schema.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var seen: [String: Int] = [:]
        var entries: [Entry] = []
        // Split on LF only, then strip a trailing CR: Swift treats "\r\n" as one Character,
        // so splitting on "\n" alone would miss CRLF lines.
        let lines = body.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false)
        for (index, scalars) in lines.enumerated() {
            let number = index + 1
            var raw = String(String.UnicodeScalarView(scalars))
            if raw.hasSuffix("\r") { raw.removeLast() }
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            guard let eq = line.firstIndex(of: "=") else {
                // Never echo the line: it may be a secret written without '=' (`agent-token SECRET`).
                // Name the key only when the line starts with one of the schema's own names.
                let first = line.prefix { !$0.isWhitespace && $0 != ":" }
                if let spec = schema.first(where: { $0.name == first }) {
                    throw ConfigError(file: path, line: number, key: spec.name,
                                      "expected \(spec.name)=VALUE, found a line without '=' (its text is not shown)")
                }
                throw ConfigError(file: path, line: number, "expected key=value, found a line without '=' (its text is not shown)")
            }
            if let bad = line.unicodeScalars.first(where: { $0.properties.generalCategory == .control && $0 != "\t" }) {
                throw ConfigError(file: path, line: number,
                                  "control character U+\(String(bad.value, radix: 16, uppercase: true)) in the line; expected printable text")
            }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            guard !key.isEmpty else {
                throw ConfigError(file: path, line: number, "expected a key before '='")
            }
            guard let spec = known[key] else {
                let names = schema.map(\.name).joined(separator: ", ")
                throw ConfigError(file: path, line: number, key: SafeText.escaped(key), "unknown key (known keys: \(names))")
            }
            if let first = seen[key], !spec.repeatable {
                throw ConfigError(file: path, line: number, key: key, "duplicate key (first set on line \(first))")
            }
            seen[key] = seen[key] ?? number
            entries.append(Entry(key: key, value: value, line: number))
        }
        self.entries = entries
    }

    /// Reads and parses the file at `path`. Throws `ConfigError` when it cannot be read or
    /// is not valid UTF-8, or when parsing fails.
    public init(contentsOf path: String, schema: [ConfigKey]) throws(ConfigError) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw ConfigError(file: path, "is a directory; expected a key=value config file")
        }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ConfigError(file: path, "cannot read the file: \(Self.reason(error))")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            let line = data.split(separator: 0x0A, omittingEmptySubsequences: false)
                .firstIndex { String(data: Data($0), encoding: .utf8) == nil }.map { $0 + 1 }
            throw ConfigError(file: path, line: line, "the file is not valid UTF-8 text")
        }
        try self.init(text: text, path: path, schema: schema)
    }

    /// The last value of `key`, or nil when it is absent.
    public func value(_ key: String) -> Entry? { entries.last { $0.key == key } }

    /// Every value of a repeatable key, in file order.
    public func values(_ key: String) -> [Entry] { entries.filter { $0.key == key } }

    /// The folder holding the file, used to resolve relative paths in values.
    public var directory: String { (path as NSString).deletingLastPathComponent }

    /// `value` as an absolute path: kept when it starts with `/`, else taken relative to the
    /// folder holding this file.
    public func resolvePath(_ value: String) -> String {
        if value.hasPrefix("/") { return value }
        let dir = directory.isEmpty ? FileManager.default.currentDirectoryPath : directory
        let base = dir.hasPrefix("/") ? dir : FileManager.default.currentDirectoryPath + "/" + dir
        return URL(fileURLWithPath: base).appendingPathComponent(value).standardizedFileURL.path
    }

    // MARK: Typed readers (each error names the file, line and key)

    /// Parses a boolean: `1/0`, `true/false`, `yes/no` (case-insensitive). Anything else is an error.
    public func bool(_ key: String, default fallback: Bool) throws(ConfigError) -> Bool {
        guard let e = value(key) else { return fallback }
        switch e.value.lowercased() {
        case "1", "true", "yes": return true
        case "0", "false", "no": return false
        default:
            throw ConfigError(file: path, line: e.line, key: key,
                              "expected 1/0, true/false or yes/no, found \(Self.quoted(e.value))")
        }
    }

    /// Parses a base-10 integer within `range`.
    public func int(_ key: String, default fallback: Int, in range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard let e = value(key) else { return fallback }
        guard let n = Int(e.value), range.contains(n) else {
            throw ConfigError(file: path, line: e.line, key: key,
                              "expected a whole number from \(range.lowerBound) to \(range.upperBound), found \(Self.quoted(e.value))")
        }
        return n
    }

    /// A non-empty string value, or nil when absent. An empty value is an error.
    public func string(_ key: String) throws(ConfigError) -> String? {
        guard let e = value(key) else { return nil }
        guard !e.value.isEmpty else {
            throw ConfigError(file: path, line: e.line, key: key, "expected a value, found an empty one")
        }
        return e.value
    }

    /// A path value resolved against the file's folder, or `fallback` (also resolved) when absent.
    public func path(_ key: String, default fallback: String?) throws(ConfigError) -> String? {
        guard let v = try string(key) ?? fallback else { return nil }
        return resolvePath(v)
    }

    /// A value for an error message: cut to 60 characters and escaped (``SafeText/quoted(_:)``).
    static func quoted(_ s: String) -> String {
        s.count > 60 ? SafeText.quoted(String(s.prefix(60)) + "…") : SafeText.quoted(s)
    }

    static func reason(_ error: any Error) -> String {
        let ns = error as NSError
        if let under = ns.userInfo[NSUnderlyingErrorKey] as? NSError, under.domain == NSPOSIXErrorDomain,
           let code = POSIXErrorCode(rawValue: Int32(under.code)) {
            return String(cString: strerror(code.rawValue))
        }
        return ns.localizedDescription
    }
}
