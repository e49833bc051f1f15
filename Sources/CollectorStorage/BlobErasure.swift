import CSysShim
import CustosBase
#if canImport(Glibc)
import Glibc
#endif

/// How the bytes of one range of a blob file were erased (``BlobErasure/erase(fd:path:offset:length:zeroOnly:)``).
public enum BlobErasureMethod: Sendable, Equatable {
    /// A hole was punched (`fallocate(2)` `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`): the
    /// file system freed the blocks; the range reads as zeros.
    case punched
    /// The file system cannot punch holes (`EOPNOTSUPP`, e.g. NFS before 4.2, some FUSE file
    /// systems): zeros were written over the range instead.
    case zeroed
    /// The range lies past the file's end (a file cut short): nothing was there to erase.
    case beyondEnd
}

/// Erasing the sealed bytes of expired blobs from blob files: the one mechanism both backends
/// use (the SQLite backend's `DATABASE.blobs/` files, PostgreSQL's `blob-dir=` files), so that
/// after retention the bytes cannot be read back from the files, whoever holds them and the
/// private key. What stays on the medium below the file system (an SSD's remapped blocks, a
/// snapshot, a backup) is outside its reach: docs/STORAGE.md "Retention".
///
/// Blocking: call from a Dispatch queue, never the Swift concurrency pool.
public enum BlobErasure {
    /// Zeros written at once by the fallback (1 MiB).
    static let zeroChunk = 1 << 20

    /// Erases `length` bytes at `offset` (bytes) of the open file `fd` so that they read back as
    /// zeros: a hole punched (`fallocate(2)`, via CSysShim's `custos_punch_hole`; the size and
    /// every other byte's offset are unchanged, so an appender of the file is not disturbed),
    /// or, where the file system cannot punch holes (or `zeroOnly`), zeros written over the
    /// range (`pwrite(2)`). The range is clipped to the file's size: a file cut short is never
    /// extended. Does not sync: call `fdatasync(2)` once after a file's ranges.
    /// - Parameter path: the file, for messages.
    /// - Returns: how, and how many bytes were erased.
    /// - Throws: ``SystemCallError`` naming the call and `path` for any other failure (EIO,
    ///   EROFS, ENOSPC while zeroing on a copy-on-write file system …).
    public static func erase(fd: Int32, path: String, offset: Int64, length: Int64,
                             zeroOnly: Bool = false) throws(SystemCallError) -> (method: BlobErasureMethod, bytes: Int64) {
        var st = stat()
        try syscall("fstat", path) { fstat(fd, &st) }
        let end = min(offset + length, Int64(st.st_size))
        guard offset >= 0, end > offset else { return (.beyondEnd, 0) }
        let count = end - offset
        if !zeroOnly {
            do {
                try syscall("fallocate", path) { custos_punch_hole(fd, offset, count) }
                return (.punched, count)
            } catch where error.errno == EOPNOTSUPP || error.errno == ENOSYS {
                // Fall through: write zeros.
            }
        }
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: zeroChunk, alignment: 16)
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: zeroChunk)
        defer { zeros.deallocate() }
        var done: Int64 = 0
        while done < count {
            let n = Int(min(Int64(zeroChunk), count - done))
            let written = try syscall("pwrite", path) { pwrite(fd, zeros, n, off_t(offset + done)) }
            guard written > 0 else { throw SystemCallError(function: "pwrite", errno: EIO, subject: path) }
            done += Int64(written)
        }
        return (.zeroed, count)
    }
}
