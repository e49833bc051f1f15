import Foundation

/// Append-only files that hold the bytes of large sealed blobs for ``SQLiteCollectorStore``; the
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
enum BlobFiles {
    /// A blob file is not appended to once it holds this many bytes (1 GiB).
    static let maxFileBytes = 1 << 30

    static func fileName(_ number: Int64) -> String {
        let digits = String(number)
        return String(repeating: "0", count: max(0, 8 - digits.count)) + digits + ".blobs"
    }

    static func number(ofFileNamed name: String) -> Int64? {
        guard name.hasSuffix(".blobs"), name.count == 14 else { return nil }
        return Int64(name.prefix(8))
    }

    /// Reads `size` bytes at `offset` of blob file `number` in `directory`.
    /// - Throws: ``CollectorError`` `.database` naming the file when it is missing, unreadable
    ///   or ends before the blob does.
    static func read(directory: String, number: Int64, offset: Int64, size: Int) throws(CollectorError) -> Data {
        let file = directory + "/" + fileName(number)
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CollectorError(.database, "\(file): cannot open blob file: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        // The row's offset and size are checked against the file before anything is allocated,
        // so a damaged or edited row cannot ask for gigabytes.
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw CollectorError(.database, "\(file): cannot stat blob file: \(String(cString: strerror(errno)))")
        }
        guard offset >= 0, size >= 0, Int64(size) <= Int64(st.st_size) - offset else {
            throw CollectorError(.database, "\(file): cannot read \(size) bytes at offset \(offset): the file ends at byte \(st.st_size)")
        }
        var data = Data(count: size)
        var done = 0
        var failure: Int32 = 0
        data.withUnsafeMutableBytes { raw in
            while done < size {
                let n = pread(fd, raw.baseAddress! + done, size - done, off_t(offset) + off_t(done))
                if n > 0 { done += n; continue }
                if n < 0 && errno == EINTR { continue }
                failure = n < 0 ? errno : 0
                break
            }
        }
        guard done == size else {
            let why = failure != 0 ? String(cString: strerror(failure)) : "the file ends at byte \(offset + Int64(done))"
            throw CollectorError(.database, "\(file): cannot read \(size) bytes at offset \(offset): \(why)")
        }
        return data
    }
}

/// Appends blobs to the newest blob file for one SQLite write transaction. Use from inside
/// that transaction (an IMMEDIATE one, so one writer at a time across processes): ``append(_:)``
/// for each blob, then ``sync()`` before the commit, or ``rollback()`` when the transaction
/// fails. The file descriptor is closed when the appender is released.
final class BlobAppender {
    let directory: String
    /// The file appended to (its number in `directory`).
    let number: Int64
    private let fd: Int32
    private let startSize: Int64
    private var size: Int64

    /// Opens the newest blob file of `directory` for appending, or creates the next one
    /// (creating the directory, mode 0700, first).
    /// - Throws: ``CollectorError`` `.database` naming the directory or file.
    init(directory: String) throws(CollectorError) {
        self.directory = directory
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) {
            guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
                throw CollectorError(.database, "\(directory): cannot create the blob directory: \(String(cString: strerror(errno)))")
            }
            Self.syncDirectory((directory as NSString).deletingLastPathComponent)
        } else if !isDirectory.boolValue {
            throw CollectorError(.database, "\(directory): expected the blob directory, found a file")
        }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw CollectorError(.database, "\(directory): cannot list the blob directory: \(error)")
        }
        var number = names.compactMap(BlobFiles.number(ofFileNamed:)).max() ?? 0
        var fd: Int32 = -1
        var st = stat()
        if number > 0 {
            fd = open(directory + "/" + BlobFiles.fileName(number), O_WRONLY | O_APPEND | O_CLOEXEC)
            if fd >= 0, fstat(fd, &st) == 0, st.st_size < BlobFiles.maxFileBytes {
                // keep appending to it
            } else {
                if fd >= 0 { close(fd) }
                fd = -1
            }
        }
        if fd < 0 {
            number += 1
            let file = directory + "/" + BlobFiles.fileName(number)
            fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                throw CollectorError(.database, "\(file): cannot create blob file: \(String(cString: strerror(errno)))")
            }
            Self.syncDirectory(directory)  // the new name survives a power cut with the bytes
            st.st_size = 0
        }
        self.number = number
        self.fd = fd
        startSize = Int64(st.st_size)
        size = startSize
    }

    deinit { close(fd) }

    var filePath: String { directory + "/" + BlobFiles.fileName(number) }

    /// Appends `blob`; returns its offset in the file (bytes).
    /// - Throws: ``CollectorError`` `.database` naming the file (ENOSPC, EIO, …).
    func append(_ blob: Data) throws(CollectorError) -> Int64 {
        let offset = size
        var failure: Int32 = 0
        let written = blob.withUnsafeBytes { raw -> Int in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n > 0 { done += n; continue }
                if n < 0 && errno == EINTR { continue }
                failure = n < 0 ? errno : ENOSPC
                break
            }
            return done
        }
        size += Int64(written)
        guard failure == 0 else {
            throw CollectorError(.database, "\(filePath): cannot append a blob of \(blob.count) bytes: \(String(cString: strerror(failure)))")
        }
        return offset
    }

    /// Makes every appended byte durable (`fdatasync`); call before the SQLite commit.
    /// - Throws: ``CollectorError`` `.database` naming the file.
    func sync() throws(CollectorError) {
        guard size > startSize else { return }
        guard fdatasync(fd) == 0 else {
            throw CollectorError(.database, "\(filePath): fdatasync failed: \(String(cString: strerror(errno)))")
        }
    }

    /// Cuts the file back to its size before this transaction (best effort: the bytes are
    /// unreferenced either way).
    func rollback() {
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
