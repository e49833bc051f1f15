import CollectorStorage
import CollectorStoragePostgres
import CollectorStorageSQLite
import CustosBase
import Foundation
import Logging

/// The one way the collector and `custos` open storage: from a ``StorageLocation`` to the
/// backend that serves it, seen only as `any CollectorStorage`.
///
/// A storage is a `Service` whose `run()` must be running while it is used (PostgreSQL's
/// connection pool and `LISTEN` connection live in it). Two ways to get one, so that is never
/// forgotten:
/// - ``withStorage(_:createIfMissing:blobDirectory:logger:_:)``: for a command or a test — runs `run()` in a
///   child task for the duration of the closure, then closes the storage;
/// - ``openService(_:createIfMissing:blobDirectory:logger:)``: for a long-lived owner with a
///   swift-service-lifecycle `ServiceGroup` (the collector), which puts the storage first in
///   its group so it starts before and stops after the HTTP server. A call made while `run()`
///   is not running fails `.unavailable` saying "run() is not running".
public enum StorageOpener {
    /// Opens the storage at `location`, runs its `run()` in a child task, brings its schema up
    /// to date (``prepare(_:)``), calls `body` with it, and closes it when `body` returns or
    /// throws (waiting for `run()` to end).
    /// - Throws: ``StorageError`` from ``openService(_:createIfMissing:blobDirectory:logger:)`` or
    ///   ``prepare(_:)`` (before `body` runs), or what `body` throws.
    public static func withStorage<T>(
        _ location: StorageLocation, createIfMissing: Bool = true, blobDirectory: String? = nil,
        logger: Logger = Logger(label: "custos.storage"),
        _ body: (any CollectorStorage) async throws -> T
    ) async throws -> T {
        let storage = try await openService(location, createIfMissing: createIfMissing, blobDirectory: blobDirectory, logger: logger)
        let runner = Task { try await storage.run() }
        func finish() async {
            await storage.close()
            _ = await runner.result
        }
        do {
            try await prepare(storage)
            let result = try await body(storage)
            await finish()
            return result
        } catch {
            await finish()
            throw error
        }
    }

    /// Opens the storage at `location` without running it: the caller must run its `run()`
    /// (e.g. first in its `ServiceGroup`) while it uses it, and call `close()` at the end.
    /// Prefer ``withStorage(_:createIfMissing:blobDirectory:logger:_:)`` where a closure fits.
    ///
    /// - SQLite: opens the file (creating it and bringing its schema up to date when needed);
    ///   this blocking open runs on a Dispatch queue, not on the Swift concurrency pool.
    /// - PostgreSQL: reads the password file (``PostgresLocation/readPassword()``) and sets up
    ///   TLS; no connection is made here — the schema is brought up to date by ``prepare(_:)``
    ///   or the first call.
    /// - Parameter createIfMissing: false for commands that only read or append to an existing
    ///   database (`custos … list`, `decrypt`, `export`): a SQLite file that does not exist is
    ///   then `.notFound` instead of created, and so is a file with no collector schema
    ///   (``SQLiteStorage/checkCollectorSchema(path:)``: it is never migrated into one). (A
    ///   PostgreSQL database is never created.)
    /// - Parameter blobDirectory: `blob-dir=`, PostgreSQL only: the shared directory of blob
    ///   files (`PostgresStorage.Configuration.blobDirectory`); nil: blobs stay in the table.
    ///   (A SQLite database keeps its blob files beside it.)
    /// - Throws: ``StorageError`` naming the database: `.notFound` (see `createIfMissing`),
    ///   SQLite's errors (`SQLiteStorage.init(path:blobDirectory:busyTimeout:)`), and `.failed`
    ///   for a PostgreSQL password file that is missing, open to others or empty, or an
    ///   unreadable `sslrootcert`.
    public static func openService(_ location: StorageLocation, createIfMissing: Bool = true, blobDirectory: String? = nil,
                                   logger: Logger = Logger(label: "custos.storage")) async throws(StorageError) -> any CollectorStorage {
        switch location {
        case .sqlite(let path):
            if !createIfMissing, !FileManager.default.fileExists(atPath: path) {
                throw StorageError(.notFound, "\(SafeText.escaped(path)): collector database does not exist")
            }
            let result = await withCheckedContinuation { (done: CheckedContinuation<Result<SQLiteStorage, StorageError>, Never>) in
                DispatchQueue.global().async {
                    done.resume(returning: Result { () throws(StorageError) in
                        if !createIfMissing { try SQLiteStorage.checkCollectorSchema(path: path) }
                        return try SQLiteStorage(path: path)
                    })
                }
            }
            return try result.get()
        case .postgres(let location):
            let password: Secret?
            do { password = try location.readPassword() } catch {
                throw StorageError(error.code, "\(location.named): \(error.message)")
            }
            return try PostgresStorage(.init(location: location, password: password, blobDirectory: blobDirectory), logger: logger)
        }
    }

    /// Connects and brings the schema up to date now, so a wrong password, an unknown
    /// database, a TLS failure or a newer schema is reported at once rather than at the first
    /// call. SQLite's schema is brought up to date when it opens: nothing to do. `run()` must be
    /// running.
    /// - Throws: ``StorageError``: `.unavailable` (the database cannot be reached now: retry),
    ///   `.failed` (login refused, no such database, TLS, newer schema).
    public static func prepare(_ storage: any CollectorStorage) async throws(StorageError) {
        if let postgres = storage as? PostgresStorage { try await postgres.prepare() }
    }
}
