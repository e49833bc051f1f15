import Foundation

/// A pattern a window's class or title is matched against (`sensitive-window-class=`,
/// `exclude-window-class=`, `exclude-window-title=`): written as plain text it matches exactly
/// (the whole string, case-sensitive); written between slashes, `/…/`, it is a regular
/// expression (ICU syntax, as `NSRegularExpression`: https://unicode-org.github.io/icu/userguide/strings/regexp.html)
/// that matches when it is found anywhere in the string (anchor it with `^…$` for the whole
/// string; `(?i)` ignores case). The one validator of those keys.
public struct WindowPattern: Sendable, Hashable, CustomStringConvertible {
    /// The pattern as written (`KeePassXC`, `/^Bank .* - Firefox$/`).
    public let text: String
    private let regex: NSRegularExpression?

    /// - Throws: ``ValueError`` naming `field` for an empty pattern, `//`, or a regular expression
    ///   that does not compile (Foundation gives no reason to quote).
    public init(_ text: String, field: String) throws(ValueError) {
        guard !text.isEmpty else { throw ValueError(field: field, "expected a window class or title, or /regular expression/, found nothing") }
        self.text = text
        guard text.count >= 2, text.hasPrefix("/"), text.hasSuffix("/") else {
            regex = nil
            return
        }
        let body = String(text.dropFirst().dropLast())
        guard !body.isEmpty else { throw ValueError(field: field, "expected a regular expression between the slashes, found //") }
        do {
            regex = try NSRegularExpression(pattern: body)
        } catch {
            // swift-corelibs-foundation's error carries only the pattern (NSInvalidValue), not
            // ICU's status or offset, and its text is the generic "The operation could not be
            // completed": left out.
            throw ValueError(field: field, "\(SafeText.quoted(text)) is not a valid regular expression "
                             + "(ICU syntax: https://unicode-org.github.io/icu/userguide/strings/regexp.html)")
        }
    }

    /// Whether this is a `/regular expression/` (else an exact match).
    public var isRegularExpression: Bool { regex != nil }

    /// Whether `value` matches: equal to the text, or the regular expression found in it.
    public func matches(_ value: String) -> Bool {
        guard let regex else { return value == text }
        return regex.firstMatch(in: value, range: NSRange(value.startIndex..., in: value)) != nil
    }

    public var description: String { text }
    public static func == (a: WindowPattern, b: WindowPattern) -> Bool { a.text == b.text }
    public func hash(into hasher: inout Hasher) { hasher.combine(text) }
}
