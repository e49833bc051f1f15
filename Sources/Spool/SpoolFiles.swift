import CSysShim
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// File-system side of the spool: the directory (0700), the files (0600), the
/// single-writer lock, sizes, free space, and moving a bad database aside.
struct SpoolFiles: Sendable {
    let directory: String
    var databasePath: String { directory + "/spool.db" }
    var walPath: String { databasePath + "-wal" }
    var shmPath: String { databasePath + "-shm" }
    var lockPath: String { directory + "/spool.lock" }

    /// Creates the directory with mode 0700 when it is missing (parents too, 0700).
    /// An existing directory is left as it is.
    func createDirectory() throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) {
            guard isDir.boolValue else {
                throw SpoolError(.io, "spool directory \(directory) exists but is not a directory")
            }
            return
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw SpoolError(.io, "cannot create spool directory \(directory) (mode 0700): \(error)")
        }
    }

    /// Creates the database file 0600 if it is missing (SQLite then creates `-wal` and
    /// `-shm` with the database file's mode) and tightens existing files to 0600.
    func prepareFiles() throws {
        let fd = open(databasePath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw SpoolError(.io, "cannot create spool database \(databasePath): \(errnoText())")
        }
        close(fd)
        for path in [databasePath, walPath, shmPath] where FileManager.default.fileExists(atPath: path) {
            if chmod(path, 0o600) != 0 {
                throw SpoolError(.io, "cannot set mode 0600 on \(path): \(errnoText())")
            }
        }
    }

    /// Takes the exclusive advisory lock (`flock(2)`) that makes this the only writer.
    /// The kernel drops it when the process dies, so a crashed agent never blocks a restart.
    /// - Returns: the lock file descriptor (close it to release).
    func lockWriter() throws -> Int32 {
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SpoolError(.io, "cannot open lock file \(lockPath): \(errnoText())") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let err = errno
            close(fd)
            if err == EWOULDBLOCK {
                throw SpoolError(.alreadyOpen, "spool \(directory) is already open for writing by another process "
                                 + "or another Spool (lock file \(lockPath) is held)")
            }
            throw SpoolError(.io, "cannot lock \(lockPath): \(String(cString: strerror(err)))")
        }
        return fd
    }

    /// Size in bytes of `path`, 0 when it does not exist.
    ///
    /// Asks `statx(2)` for the size only: `stat(2)` would mark the file's timestamps as
    /// queried, and with Linux's multigrain timestamps (6.13+) SQLite's next write would
    /// then dirty the inode, so each commit's `fdatasync` would also write the inode
    /// (measured: about a third more time per 200-byte enqueue).
    static func size(_ path: String) -> Int64 {
        max(0, custos_file_size(path))
    }

    var databaseBytes: Int64 { Self.size(databasePath) }
    var walBytes: Int64 { Self.size(walPath) }

    /// Bytes available to an unprivileged user on the spool's filesystem (`statvfs(3)` f_bavail).
    /// Root may use the reserved blocks too, but the spool leaves them for the system.
    var availableBytes: Int64? {
        var vfs = statvfs()
        guard statvfs(directory, &vfs) == 0 else { return nil }
        return Int64(vfs.f_bavail) * Int64(vfs.f_frsize)
    }

    /// Renames the database (and its WAL) to `spool.db.<reason>-<UTC timestamp>` so it is
    /// kept for forensics, and removes the derived `-shm`.
    /// - Returns: the new path of the database file.
    func moveAside(reason: String) throws -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        var aside = "\(databasePath).\(reason)-\(formatter.string(from: Date()))"
        var n = 1
        while FileManager.default.fileExists(atPath: aside) {
            n += 1
            aside = "\(databasePath).\(reason)-\(formatter.string(from: Date()))-\(n)"
        }
        if rename(databasePath, aside) != 0 {
            throw SpoolError(.io, "cannot move \(databasePath) aside to \(aside): \(errnoText())")
        }
        if FileManager.default.fileExists(atPath: walPath) {
            _ = rename(walPath, aside + "-wal")
        }
        _ = unlink(shmPath)
        _ = unlink(databasePath + "-journal")
        return aside
    }
}

func errnoText() -> String { String(cString: strerror(errno)) }
