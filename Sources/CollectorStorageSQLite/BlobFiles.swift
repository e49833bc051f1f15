import CollectorStorage
import Foundation

/// Append-only files that hold the bytes of large sealed blobs for ``SQLiteStorage``; the
/// `captures` row keeps the file number, offset and size.
///
/// Why: in WAL mode SQLite writes every byte of a blob twice (WAL frame, then checkpoint) and
/// walks it page by page; a blob file is written once, with one `write(2)` per blob and one
/// `fdatasync(2)` per batch. (SQLite's "Internal Versus External BLOBs" measured reads of blobs
/// above about 100 KB as faster from separate files: https://www.sqlite.org/intern-v-extern-blob.html)
///
/// Layout: directory `DATABASE.blobs/` (mode 0700) beside the database, files `NNNNNNNN.blobs`
/// (mode 0600, decimal number, eight digits), raw sealed-record bytes back to back. A file is
/// appended to until it holds ``maxFileBytes``; the next batch then opens the next number.
///
/// Durability: ``BlobAppender/sync()`` runs before the SQLite commit that makes the rows
/// visible, so an acknowledged blob's bytes are on disk. A crash between the two leaves bytes
/// that no row points to at the end of a file (the agent sends the blob again); they are
/// unused space, never read.
///
/// Errors: ``StorageError`` naming the file or directory: `.corrupt` when stored bytes cannot be
/// read back whole (``read(directory:number:offset:size:)``), `.unavailable` for every failure
/// while appending (a missing, foreign or unsafe directory, ENOSPC, EIO): the batch is not
/// stored, the agent keeps its copy and retries, and it goes through once the directory is fixed.
package enum BlobFiles {
    /// Sealed blobs of at least this many bytes (32 KiB) go to blob files; smaller ones
    /// (keystroke chunks) stay inline in `captures.blob`, one write with the row. The same
    /// threshold as PostgreSQL's `blob-dir=` (``SharedBlobDirectory/minBytes``).
    package static let minBytes = SharedBlobDirectory.minBytes

    /// A blob file is not appended to once it holds this many bytes (1 GiB).
    package static let maxFileBytes = 1 << 30

    package static func fileName(_ number: Int64) -> String { String(format: "%08lld.blobs", number) }

    /// The marker file in a blob directory: the id of the database it belongs to
    /// (`blob_store.id`), one line. It tells an unmounted volume's empty mount point, or another
    /// database's directory, from this database's own.
    package static let markerName = ".custos-blobs"

    /// The highest file number: eight decimal digits.
    package static let maxNumber: Int64 = 99_999_999

    /// The number of a file named like `00000042.blobs` (exactly eight ASCII digits), else nil.
    package static func number(ofFileNamed name: String) -> Int64? {
        let utf8 = Array(name.utf8)
        guard utf8.count == 14, name.hasSuffix(".blobs"), utf8.prefix(8).allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            return nil
        }
        return Int64(name.prefix(8))
    }

    /// Opens a blob file without following a symlink or blocking on a FIFO, and checks that it
    /// is a regular file; returns the descriptor and its size in bytes. Failures are `code`.
    static func openRegular(_ file: String, _ flags: Int32, mode: mode_t = 0,
                            code: StorageError.Code) throws(StorageError) -> (fd: Int32, size: Int64) {
        let fd = open(file, flags | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, mode)
        guard fd >= 0 else {
            let e = errno
            throw StorageError(code, "\(file): cannot open blob file: \(e == ELOOP ? "it is a symbolic link" : String(cString: strerror(e)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw StorageError(code, "\(file): expected a regular blob file")
        }
        return (fd, Int64(st.st_size))
    }

    /// Reads `size` bytes at `offset` of blob file `number` in `directory`.
    /// - Throws: ``StorageError`` `.corrupt` naming the file when it is missing, unreadable
    ///   or ends before the blob does.
    package static func read(directory: String, number: Int64, offset: Int64, size: Int) throws(StorageError) -> Data {
        let file = directory + "/" + fileName(number)
        let (fd, fileSize) = try openRegular(file, O_RDONLY, code: .corrupt)
        defer { close(fd) }
        // The row's offset and size are checked against the file before anything is allocated,
        // so a damaged or edited row cannot ask for gigabytes.
        guard offset >= 0, size >= 0, Int64(size) <= fileSize - offset else {
            throw StorageError(.corrupt, "\(file): cannot read \(size) bytes at offset \(offset): the file ends at byte \(fileSize)")
        }
        let data: Data
        do {
            let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
            try handle.seek(toOffset: UInt64(offset))
            data = try handle.read(upToCount: size) ?? Data()
        } catch {
            throw StorageError(.corrupt, "\(file): cannot read \(size) bytes at offset \(offset): \((error as NSError).localizedDescription)")
        }
        guard data.count == size else {  // cut between the check and the read
            throw StorageError(.corrupt, "\(file): cannot read \(size) bytes at offset \(offset): the file ends at byte \(offset + Int64(data.count))")
        }
        return data
    }
}

/// Appends blobs to the newest blob file for one SQLite write transaction. Use from inside
/// that transaction (an IMMEDIATE one, so one writer at a time across processes): ``append(_:)``
/// for each blob, then ``sync()`` before the commit, or ``rollback()`` when the transaction
/// fails. The file descriptor is closed when the appender is released.
package final class BlobAppender {
    package let directory: String
    /// The file appended to (its number in `directory`).
    package let number: Int64
    private let fd: Int32
    private let startSize: Int64
    private var size: Int64

    /// Opens the blob file to append to, or creates the next one (creating the directory,
    /// mode 0700, first).
    ///
    /// `referenced` is the highest file number any `captures` row points to and the end (bytes)
    /// of its last blob. The file appended to is the highest number on disk or in the database;
    /// it is reused only while it holds every referenced byte and less than ``BlobFiles/maxFileBytes``,
    /// so a file that was lost, cut short or restored from an older backup is never written over:
    /// new blobs go to a new number and the rows of the damaged file keep failing to read (each
    /// error names the file) until the agent's re-sent copy repairs them.
    /// - Throws: ``StorageError`` `.unavailable` naming the directory or file: not a directory,
    ///   writable by group or others, missing or without this database's marker while rows
    ///   point into it, numbers exhausted, or an `open`/`mkdir` failure. A newest
    ///   file that is a symlink, a FIFO or anything but a regular file is skipped, never written.
    package init(directory: String, storeID: String, referenced: (number: Int64, end: Int64)?) throws(StorageError) {
        self.directory = directory
        let marker = directory + "/" + BlobFiles.markerName
        var st = stat()
        if stat(directory, &st) != 0 {
            if let referenced {
                throw StorageError(.unavailable, "\(directory): the blob directory is missing, but rows point into blob file \(referenced.number); restore it (or mount its volume) — large blobs are refused until then")
            }
            guard errno == ENOENT, mkdir(directory, 0o700) == 0 || errno == EEXIST else {
                throw StorageError(.unavailable, "\(directory): cannot create the blob directory: \(String(cString: strerror(errno)))")
            }
            Self.syncDirectory((directory as NSString).deletingLastPathComponent)
        } else if (st.st_mode & S_IFMT) != S_IFDIR {
            throw StorageError(.unavailable, "\(directory): expected the blob directory, found something else")
        } else if st.st_mode & 0o022 != 0 {
            throw StorageError(.unavailable, "\(directory): the blob directory must not be writable by group or others (mode \(String(st.st_mode & 0o7777, radix: 8)); expected 0700)")
        }
        // The marker: whose directory this is.
        if let text = try? String(contentsOfFile: marker, encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard id == storeID else {
                throw StorageError(.unavailable, "\(marker): this blob directory belongs to another database (id \(id), this database's is \(storeID)); large blobs are refused")
            }
        } else if let referenced {
            throw StorageError(.unavailable, "\(directory): no \(BlobFiles.markerName) marker, but rows point into blob file \(referenced.number): is its volume unmounted, or the directory replaced? Large blobs are refused until the right directory is back")
        } else {
            do {
                try Data((storeID + "\n").utf8).write(to: URL(fileURLWithPath: marker), options: .withoutOverwriting)
            } catch {
                throw StorageError(.unavailable, "\(marker): cannot write the blob directory marker: \(error)")
            }
            _ = chmod(marker, 0o600)
            Self.syncDirectory(directory)
        }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw StorageError(.unavailable, "\(directory): cannot list the blob directory: \(error)")
        }
        var number = max(names.compactMap(BlobFiles.number(ofFileNamed:)).max() ?? 0, referenced?.number ?? 0)
        var opened: (fd: Int32, size: Int64)?
        if number > 0, let candidate = try? BlobFiles.openRegular(directory + "/" + BlobFiles.fileName(number), O_WRONLY | O_APPEND, code: .unavailable) {
            let mustHold = referenced?.number == number ? referenced!.end : 0
            if candidate.size >= mustHold && candidate.size < BlobFiles.maxFileBytes {
                opened = candidate
            } else {
                close(candidate.fd)
            }
        }
        while opened == nil {
            number += 1
            guard number <= BlobFiles.maxNumber else {
                throw StorageError(.unavailable, "\(directory): blob file numbers are exhausted (\(BlobFiles.maxNumber))")
            }
            let file = directory + "/" + BlobFiles.fileName(number)
            do {
                opened = try BlobFiles.openRegular(file, O_WRONLY | O_APPEND | O_CREAT | O_EXCL, mode: 0o600, code: .unavailable)
            } catch {
                var lst = stat()
                guard lstat(file, &lst) == 0 else { throw error }
                continue  // a stray file, FIFO or symlink took this number: never write to it
            }
            Self.syncDirectory(directory)  // the new name survives a power cut with the bytes
        }
        self.number = number
        fd = opened!.fd
        startSize = opened!.size
        size = startSize
    }

    deinit { close(fd) }

    package var filePath: String { directory + "/" + BlobFiles.fileName(number) }

    /// Appends `blob`; returns its offset in the file (bytes).
    /// - Throws: ``StorageError`` `.unavailable` naming the file (ENOSPC, EIO, …).
    package func append(_ blob: Data) throws(StorageError) -> Int64 {
        let offset = size
        size += Int64(blob.count)  // on failure, at most this much was written: rollback() cuts it
        do {
            // FileHandle writes it all (partial writes, EINTR) or throws.
            try FileHandle(fileDescriptor: fd, closeOnDealloc: false).write(contentsOf: blob)
        } catch {
            throw StorageError(.unavailable, "\(filePath): cannot append a blob of \(blob.count) bytes: \((error as NSError).localizedDescription)")
        }
        return offset
    }

    /// Makes every appended byte durable (`fdatasync`); call before the SQLite commit.
    /// - Throws: ``StorageError`` `.unavailable` naming the file.
    package func sync() throws(StorageError) {
        guard size > startSize else { return }
        guard fdatasync(fd) == 0 else {
            throw StorageError(.unavailable, "\(filePath): fdatasync failed: \(String(cString: strerror(errno)))")
        }
    }

    /// Cuts the file back to its size before this transaction (best effort: the bytes are
    /// unreferenced either way).
    package func rollback() {
        if size > startSize { _ = ftruncate(fd, off_t(startSize)) }
        size = startSize
    }

    static func syncDirectory(_ path: String) {
        let dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { return }
        _ = fsync(dfd)
        close(dfd)
    }
}
