import Foundation

/// A dashboard account's name: 1 to 64 characters of `A-Z a-z 0-9 . _ - @`, not `.` or `..` (so an e-mail
/// address fits). The one validator used by `custos admins`, the storage seam and the
/// collector's login.
public struct AdminName: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The validated name.
    public let rawValue: String

    /// - Throws: ``ValueError`` naming `field` when `text` is not a valid name.
    public init(_ text: String, field: String = "--name") throws(ValueError) {
        guard Self.isValid(text) else {
            throw ValueError(field: field, "expected 1-64 letters, digits, '.', '_', '-' or '@' (not '.' or '..'), found \(SafeText.quoted(text))")
        }
        rawValue = text
    }

    /// Whether `text` is a valid account name.
    public static func isValid(_ text: String) -> Bool {
        // Not "." or ".." (as AgentID): a name may become a path segment (an export's folder).
        guard (1...64).contains(text.utf8.count), text != ".", text != ".." else { return false }
        return text.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == 0x2E || c == 0x5F || c == 0x2D || c == 0x40
        }
    }

    public var description: String { rawValue }
    public static func < (a: AdminName, b: AdminName) -> Bool { a.rawValue < b.rawValue }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(text, field: "name") } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
}
