import CollectorStorage
import CustosBase
import Envelope
import Foundation
import GRDB

/// Reads one row's columns into typed values, never trapping: a value of the wrong type or form
/// (text typed by hand in `sqlite3`, a damaged file) throws ``StorageError`` `.corrupt` naming the
/// database, the table, the row and the column, with the value escaped (``SafeText``).
///
/// GRDB's typed `row["column"]` subscripts trap on a value they cannot convert; every column
/// read from a stored row goes through here instead.
struct RowReader {
    let row: Row
    /// The database file, for messages.
    let database: String
    let table: String
    /// How the row is named in messages, e.g. `blob_id '0a1b…'` or `id 3`.
    let rowName: String

    init(_ row: Row, database: String, table: String, key: String) {
        self.row = row
        self.database = database
        self.table = table
        let value: DatabaseValue = row[key]
        rowName = "\(key) \(Self.shown(value))"
    }

    /// A stored value as text for a message: quoted and escaped, cut at 80 characters.
    static func shown(_ value: DatabaseValue) -> String {
        switch value.storage {
        case .null: "NULL"
        case .int64(let i): String(i)
        case .double(let d): String(d)
        case .string(let s): SafeText.quoted(s.count > 80 ? s.prefix(80) + "…" : s)
        case .blob(let b): "a blob of \(b.count) bytes"
        }
    }

    func corrupt(_ column: String, _ expected: String) -> StorageError {
        let value: DatabaseValue = row[column]
        return StorageError(.corrupt, "\(SafeText.escaped(database)): \(table) row \(rowName): column \(column) holds \(Self.shown(value)), expected \(expected)")
    }

    func int(_ column: String) throws(StorageError) -> Int64 {
        guard let v = Int64.fromDatabaseValue(row[column]) else { throw corrupt(column, "an integer") }
        return v
    }

    /// An integer, or nil for NULL.
    func optionalInt(_ column: String) throws(StorageError) -> Int64? {
        let value: DatabaseValue = row[column]
        if value.isNull { return nil }
        guard let v = Int64.fromDatabaseValue(value) else { throw corrupt(column, "an integer or NULL") }
        return v
    }

    func text(_ column: String) throws(StorageError) -> String {
        guard let v = String.fromDatabaseValue(row[column]) else { throw corrupt(column, "text") }
        return v
    }

    /// Text, or nil for NULL.
    func optionalText(_ column: String) throws(StorageError) -> String? {
        let value: DatabaseValue = row[column]
        if value.isNull { return nil }
        guard let v = String.fromDatabaseValue(value) else { throw corrupt(column, "text or NULL") }
        return v
    }

    func bytes(_ column: String) throws(StorageError) -> Data {
        guard let v = Data.fromDatabaseValue(row[column]) else { throw corrupt(column, "a blob") }
        return v
    }

    /// A SQL boolean: 1/0 as written by this code or `true`/`false` in the seed's statement
    /// (SQLite stores the keywords as 1/0); text `'true'`/`'false'` typed by hand is read too.
    func flag(_ column: String) throws(StorageError) -> Bool {
        let value: DatabaseValue = row[column]
        switch value.storage {
        case .int64(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s):
            if ["1", "true", "yes", "t", "y"].contains(s.lowercased()) { return true }
            if ["0", "false", "no", "f", "n"].contains(s.lowercased()) { return false }
        case .null, .blob: break
        }
        throw corrupt(column, "a boolean (1/0, true/false)")
    }

    func agentID(_ column: String) throws(StorageError) -> AgentID {
        guard let text = String.fromDatabaseValue(row[column]), let id = try? AgentID(text) else {
            throw corrupt(column, "an agent id (1-64 of A-Z a-z 0-9 . _ -)")
        }
        return id
    }

    /// A ``UserName`` or NULL (a plain blob's row).
    func optionalUserName(_ column: String) throws(StorageError) -> UserName? {
        guard let text = try optionalText(column) else { return nil }
        guard let name = try? UserName(text) else { throw corrupt(column, "a user name (1-128 bytes, no '/' or control characters) or NULL") }
        return name
    }

    func id<Kind: IdentifierKind>(_ column: String, _: Kind.Type) throws(StorageError) -> FixedLengthID<Kind> {
        guard let text = String.fromDatabaseValue(row[column]), let id = FixedLengthID<Kind>(hex: text) else {
            throw corrupt(column, "\(Kind.byteCount * 2) hex digits")
        }
        return id
    }

    /// An id, or nil for NULL.
    func optionalID<Kind: IdentifierKind>(_ column: String, _ kind: Kind.Type) throws(StorageError) -> FixedLengthID<Kind>? {
        let value: DatabaseValue = row[column]
        if value.isNull { return nil }
        return try id(column, kind)
    }

    func kind(_ column: String) throws(StorageError) -> CaptureKind {
        guard let text = String.fromDatabaseValue(row[column]), let kind = CaptureKind(name: text) else {
            throw corrupt(column, "a capture kind (\(CaptureKind.allCases.map(\.name).joined(separator: ", ")))")
        }
        return kind
    }
}
