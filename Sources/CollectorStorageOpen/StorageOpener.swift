import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Foundation

/// The one way the collector and `custos` open storage: from a ``StorageLocation`` to the
/// backend that serves it, seen only as `any CollectorStorage`.
public enum StorageOpener {
    /// Opens the storage at `location` (creating a SQLite file and bringing its schema up to
    /// date when needed); the caller owns it and calls `close()` when done.
    ///
    /// The backend's blocking open (SQLite: open and migrate) runs on a Dispatch queue, not on
    /// the Swift concurrency pool.
    /// - Parameter createIfMissing: false for commands that only read or append to an existing
    ///   database (`custos … list`, `decrypt`, `export`): a SQLite file that does not exist is
    ///   then `.notFound` instead of created.
    /// - Throws: ``StorageError`` naming the database: `.notFound` (see `createIfMissing`),
    ///   the backend's errors (`SQLiteStorage.init(path:blobDirectory:busyTimeout:)`), and
    ///   `.failed` for a PostgreSQL location while this build has no PostgreSQL backend.
    public static func open(_ location: StorageLocation, createIfMissing: Bool = true) async throws(StorageError) -> any CollectorStorage {
        switch location {
        case .sqlite(let path):
            if !createIfMissing, !FileManager.default.fileExists(atPath: path) {
                throw StorageError(.notFound, "\(SafeText.escaped(path)): collector database does not exist")
            }
            let result = await withCheckedContinuation { (done: CheckedContinuation<Result<SQLiteStorage, StorageError>, Never>) in
                DispatchQueue.global().async {
                    done.resume(returning: Result { () throws(StorageError) in try SQLiteStorage(path: path) })
                }
            }
            return try result.get()
        case .postgres(let location):
            // The one place the PostgreSQL backend (CollectorStoragePostgres) plugs in.
            throw StorageError(.failed, "\(location.shown): this build's PostgreSQL backend is not wired yet; use a SQLite file path for the database")
        }
    }
}
