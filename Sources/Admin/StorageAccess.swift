import ArgumentParser
import CollectorStorage
import CollectorStorageOpen
import CustosBase
import Foundation
import Logging

/// `--db` and `--db-password-file`: the collector storage a command works on, one
/// `StorageLocation` (a SQLite file path, or `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=…]`
/// with the password in the file). Shared by every command that opens the storage.
struct DatabaseOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Collector database: a SQLite file, or postgres://USER@HOST[:PORT]/DBNAME[?sslmode=MODE].",
                               valueName: "path-or-url"))
    var db: String
    @Option(help: ArgumentHelp("File whose first line is the PostgreSQL password (never part of --db).", valueName: "file"))
    var dbPasswordFile: String?

    func validate() throws { _ = try location() }

    /// - Throws: `ValidationError` (exit 2) naming the option and what was expected.
    func location() throws -> StorageLocation { try storageLocation(db, passwordFile: dbPasswordFile) }
}

/// The help of `--db-blob-dir` (`decrypt`, `export`, `dashboard`).
let dbBlobDirHelp = ArgumentHelp("The blob directory of a postgres:// --db (its collectors' blob-dir=), to read blobs kept in blob files.",
                                 valueName: "dir")

/// The one check of a blob-directory option (`--db-blob-dir`, `--from-blob-dir`, `--to-blob-dir`)
/// at parse time: it goes with a postgres:// database only (a SQLite database keeps its blob
/// files beside it). Whether the directory can be used is checked once the database is open
/// (``checkBlobDirectory(_:name:option:)``).
/// - Throws: `ValidationError` (exit 2) naming `option`.
func validateBlobDirectoryOption(_ dir: String?, _ option: String, for location: StorageLocation) throws {
    if dir != nil, case .sqlite = location {
        throw ValidationError("\(option) is for a postgres:// database only; a SQLite database keeps its blob files beside it")
    }
}

/// `--db TEXT` (and `--db-password-file`) as a ``StorageLocation``.
/// - Throws: `ValidationError` (exit 2) naming the option and what was expected.
func storageLocation(_ text: String, passwordFile: String?, field: String = "--db",
                     passwordField: String = "--db-password-file") throws -> StorageLocation {
    do {
        return try StorageLocation(text, passwordFile: passwordFile, field: field, passwordField: passwordField)
    } catch {
        throw ValidationError(error.description)
    }
}

/// Opens the storage at `location` (``StorageOpener/withStorage(_:createIfMissing:blobDirectory:logger:_:)``:
/// its `run()` runs while `body` does; the schema is brought up to date first), runs `body`
/// with it and closes it (also when `body` throws).
/// - Parameter createIfMissing: false for commands that list, decrypt or export: a SQLite file
///   that does not exist, or has no collector schema, is then an error instead of a new empty
///   database. True (`admins add`, `agents add`, `keys register`, `db migrate --to`): a new
///   database is made and a note says so on standard error.
/// - Throws: `AdminError` (``AdminError/fromStorage(_:)``) when it cannot be opened or reached
///   (the message names the database; a PostgreSQL login refused names `user@host:port/db`);
///   what `body` throws.
/// - Parameter blobDirectory: a PostgreSQL database's blob directory (`blob-dir=`), needed to
///   read or write blobs kept in blob files; nil: blobs in the table only.
func withStorage<T>(_ location: StorageLocation, createIfMissing: Bool, blobDirectory: String? = nil,
                    _ body: (any CollectorStorage) async throws -> T) async throws -> T {
    var opened = false
    var creating = false
    if createIfMissing, case .sqlite(let path) = location, !FileManager.default.fileExists(atPath: path) { creating = true }
    do {
        // No log lines from the storage in a command's output: its errors are thrown, with the
        // database named, and the collector-only notices (the KEK change listener) do not apply.
        let quiet = Logger(label: "custos.storage") { _ in SwiftLogNoOpLogHandler() }
        return try await StorageOpener.withStorage(location, createIfMissing: createIfMissing,
                                                   blobDirectory: blobDirectory, logger: quiet) { storage in
            opened = true
            if creating, case .sqlite(let path) = location {
                // As `agents add` and `keys register` do on a new install (before the collector's
                // first start); said, so a mistyped --db does not go unnoticed.
                printError("note: \(SafeText.escaped(path)) did not exist: created a new, empty collector database")
            }
            return try await body(storage)
        }
    } catch let error as StorageError where !opened {
        throw AdminError.fromStorage(error)
    }
}

/// Runs one storage call, turning its ``StorageError`` into an ``AdminError`` (exit 2).
func storageCall<T>(_ call: () async throws(StorageError) -> T) async throws(AdminError) -> T {
    do { return try await call() } catch { throw AdminError.fromStorage(error) }
}

/// The one shape of an audited admin change (`hold add`, `hold remove`, `hold list`, `keys
/// register`, `agents add`): one storage `call`, then one audit record `action` by `actor` whose
/// detail `detail` makes from the call's result. Returns the result.
/// - Parameter required: whether a failed append fails the command (exit 2; a change must be
///   audited), or is ignored (best effort: a listing, or a change whose result must still reach
///   the admin, such as a new agent's token shown once).
/// - Throws: `AdminError` (``AdminError/fromStorage(_:)``) from the call, or from the append
///   when `required`.
func audited<T>(_ storage: any CollectorStorage, action: String, actor: String = loginUser(), required: Bool = true,
                _ call: () async throws -> T, detail: (T) -> String) async throws -> T {
    let result = try await call()
    let text = detail(result)
    if required {
        _ = try await storageCall { () throws(StorageError) in try await storage.appendAudit(actor: actor, action: action, detail: text) }
    } else {
        _ = try? await storage.appendAudit(actor: actor, action: action, detail: text)
    }
    return result
}

/// ``audited(_:action:actor:required:_:detail:)`` on the storage at `location`, opened for the
/// call and closed after it (``withStorage(_:createIfMissing:blobDirectory:_:)``).
func withAuditedCall<T>(_ location: StorageLocation, createIfMissing: Bool = false, action: String, required: Bool = true,
                        _ call: (any CollectorStorage) async throws -> T, detail: (T) -> String) async throws -> T {
    let actor = loginUser()
    return try await withStorage(location, createIfMissing: createIfMissing) { storage in
        try await audited(storage, action: action, actor: actor, required: required, { try await call(storage) }, detail: detail)
    }
}

/// Checks, before a command reads or copies anything, that the blob directory it was given for
/// `storage` can be used, or that it needs none (``CollectorStorage/checkBlobDirectory()``).
/// - Parameters:
///   - name: the database as messages name it.
///   - option: the option that names its blob directory (`--db-blob-dir`, `--from-blob-dir`,
///     `--to-blob-dir`).
/// - Throws: `AdminError` `.usage` (exit 2): the database keeps large blobs in blob files but
///   `option` was not given ("pass --db-blob-dir DIR"), or the directory cannot be used (missing,
///   writable by others, another database's marker, no marker: an unmounted volume), naming
///   `option` and the directory.
func checkBlobDirectory(_ storage: any CollectorStorage, name: String, option: String) async throws {
    switch try await storageCall({ () throws(StorageError) in try await storage.checkBlobDirectory() }) {
    case .notUsed, .ready:
        return
    case .needed:
        throw AdminError(.usage, "\(name) keeps large blobs in blob files (its collectors' blob-dir=): pass \(option) DIR, the directory they use")
    case .unusable(let why):
        throw AdminError(.usage, "\(option): \(why)")
    }
}
