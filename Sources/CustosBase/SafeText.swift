/// The one place where text from outside (the network, a database row, a record header, a
/// config file) is made safe for a terminal, a log line or a file name.
///
/// Escaped: C0 and C1 controls and DEL (ECMA-48 §5: they start escape sequences), the
/// bidirectional formatting characters of Unicode UAX #9 §2 (U+061C, U+200E, U+200F,
/// U+202A–U+202E, U+2066–U+2069; they reorder what follows, e.g. `exe.txt` shown as `txt.exe`),
/// the line and paragraph separators U+2028/U+2029 and the BOM/zero-width no-break space U+FEFF.
/// Each is written `\u{XX}` (hexadecimal code point).
///
/// Escaping is idempotent (`escaped(escaped(x)) == escaped(x)`): a message escaped where it is
/// made and again where it is printed reads the same. The price: a literal `\u{1B}` in the
/// data looks like an escaped ESC. It is harmless text either way; no control reaches the sink.
public enum SafeText {
    /// Whether `scalar` is escaped by ``escaped(_:)``.
    public static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F: true
        case 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069, 0x2028, 0x2029, 0xFEFF: true
        default: false
        }
    }

    /// `text` with every control and bidi control escaped (see the type's comment). Plain text
    /// comes back unchanged.
    public static func escaped(_ text: some StringProtocol) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return String(text) }
        var out = String.UnicodeScalarView()
        for s in text.unicodeScalars {
            if needsEscape(s) {
                out.append(contentsOf: "\\u{\(String(s.value, radix: 16, uppercase: true))}".unicodeScalars)
            } else {
                out.append(s)
            }
        }
        return String(out)
    }

    /// ``escaped(_:)`` for a raw value shown as it is (a cell of a listing), with every backslash
    /// doubled first: a `\u{1B}` typed into the data shows as `\\u{1B}`, told apart from an
    /// escaped ESC (`\u{1B}`). Not idempotent, unlike ``escaped(_:)``: apply it once, to the raw
    /// value, never to text that is escaped already (a message).
    public static func escapedVerbatim(_ text: some StringProtocol) -> String {
        escaped(text.split(separator: "\\", omittingEmptySubsequences: false).joined(separator: "\\\\"))
    }

    /// Bytes that should be UTF-8 text, escaped: invalid sequences become U+FFFD first.
    public static func escaped(utf8 bytes: some Collection<UInt8>) -> String {
        escaped(String(decoding: bytes, as: UTF8.self))
    }

    /// `'text'` escaped, for messages that quote a value.
    public static func quoted(_ text: some StringProtocol) -> String { "'\(escaped(text))'" }

    /// A file name component made from `text`: controls and bidi controls removed (not
    /// escaped: a reviewer's file manager shows names raw), `/` and NUL replaced by `_`,
    /// empty, `.` and `..` replaced by `_`, and cut to at most `maxBytes` UTF-8 bytes
    /// (NAME_MAX is 255 on Linux; man 3 readdir) at a character boundary.
    public static func fileNameComponent(_ text: some StringProtocol, maxBytes: Int = 200) -> String {
        var out = String.UnicodeScalarView()
        var bytes = 0
        for s in text.unicodeScalars where !needsEscape(s) {
            let c: Unicode.Scalar = s == "/" ? "_" : s
            let n = String(c).utf8.count
            if bytes + n > maxBytes { break }
            bytes += n
            out.append(c)
        }
        let name = String(out)
        return name.isEmpty || name == "." || name == ".." ? "_" : name
    }
}
