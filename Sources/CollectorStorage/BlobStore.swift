import CustosBase
import Envelope
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where the bytes of one large sealed blob are kept outside its `captures` row: the collector
/// instance whose file holds them, the file's number, the offset and the size (bytes). Stored as
/// text in the nullable `captures.blob_ref` column (``text``): `INSTANCE:FILE:OFFSET:SIZE`, e.g.
/// `0f3c…9a:1:65536:204800`.
///
/// One validator: ``init(instance:file:offset:size:context:)`` (``init(text:context:)`` parses and
/// then calls it), so a reference read back from the database is checked as strictly as a new one.
public struct BlobRef: Sendable, Hashable, CustomStringConvertible {
    /// The random id of the collector instance that wrote the file: 32 lowercase hex digits.
    public let instance: String
    /// The file's number among that instance's files: 1 ... ``SharedBlobDirectory/maxNumber``.
    public let file: Int64
    /// Where the blob starts in the file (bytes, ≥ 0).
    public let offset: Int64
    /// The blob's length (bytes, 1 ... 2^31).
    public let size: Int64

    /// - Throws: ``StorageError`` `.corrupt` starting with `context` (the row or file that gave
    ///   the values) when the instance id is not 32 lowercase hex digits, the file number is
    ///   outside 1 ... 99,999,999, the offset is negative, or the size is outside 1 ... 2^31.
    public init(instance: String, file: Int64, offset: Int64, size: Int64, context: String) throws(StorageError) {
        guard Self.isInstanceID(instance) else {
            throw StorageError(.corrupt, "\(context): blob reference: expected an instance id of 32 lowercase hex digits, found \(SafeText.quoted(instance))")
        }
        guard (1...SharedBlobDirectory.maxNumber).contains(file) else {
            throw StorageError(.corrupt, "\(context): blob reference: file number \(file) is outside 1...\(SharedBlobDirectory.maxNumber)")
        }
        guard offset >= 0, (1...Int64(1 << 31)).contains(size), offset <= Int64.max - size else {
            throw StorageError(.corrupt, "\(context): blob reference: expected offset ≥ 0 and size 1...\(1 << 31) bytes, found offset \(offset), size \(size)")
        }
        self.instance = instance
        self.file = file
        self.offset = offset
        self.size = size
    }

    /// Parses ``text`` (`INSTANCE:FILE:OFFSET:SIZE`, decimal numbers).
    /// - Throws: ``StorageError`` `.corrupt` starting with `context` for text of another form, or
    ///   values ``init(instance:file:offset:size:context:)`` refuses.
    public init(text: String, context: String) throws(StorageError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 4, parts.dropFirst().allSatisfy({ !$0.isEmpty && $0.utf8.count <= 19 && $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }),
              let file = Int64(parts[1]), let offset = Int64(parts[2]), let size = Int64(parts[3]) else {
            throw StorageError(.corrupt, "\(context): blob reference: expected INSTANCE:FILE:OFFSET:SIZE, found \(SafeText.quoted(text))")
        }
        try self.init(instance: String(parts[0]), file: file, offset: offset, size: size, context: context)
    }

    /// `INSTANCE:FILE:OFFSET:SIZE`, what `captures.blob_ref` holds.
    public var text: String { "\(instance):\(file):\(offset):\(size)" }
    public var description: String { text }

    /// The file's name in the blob directory: `INSTANCE-NNNNNNNN.blobs`.
    public var fileName: String { SharedBlobDirectory.fileName(instance: instance, number: file) }

    /// Whether `text` is 32 lowercase hex digits (an instance id).
    public static func isInstanceID(_ text: String) -> Bool {
        text.utf8.count == 32 && text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }
}

/// What ``CollectorStorage/checkBlobDirectory()`` found.
public enum BlobDirectoryCheck: Sendable, Equatable {
    /// No blob directory is configured and none is needed: no row points into a blob file (or
    /// the backend keeps its blob files itself, beside its database: SQLite).
    case notUsed
    /// The configured directory can be used: it exists, is a directory not writable by group or
    /// others, and its marker names this database (or it has none yet, and this database never
    /// marked one: the first large blob writes it).
    case ready
    /// Rows point into blob files, but no blob directory is configured: their bytes cannot be
    /// read. The caller says which option names it (`blob-dir=`, `--db-blob-dir`, `--from-blob-dir`).
    case needed
    /// The configured directory cannot be used, and why (escaped, naming it): missing, not a
    /// directory, writable by group or others, another database's marker, or no marker although
    /// this database marked one (an unmounted volume).
    case unusable(String)
}

/// Where a backend keeps the bytes of large sealed blobs outside its rows.
///
/// Contract: ``put(_:)`` makes every byte durable before it returns, so the caller may then
/// commit rows pointing at them (a crash in between leaves unreferenced bytes, never a row
/// without bytes); a referenced range is never changed, so a reference stays valid until its
/// row is deleted. Only then may its bytes be erased (retention: ``SharedBlobDirectory/erase(_:zeroOnly:)``).
public protocol BlobStore: Sendable {
    /// Appends `blobs` (each non-empty) and makes them durable; one reference per blob, in order.
    /// - Throws: ``StorageError`` `.unavailable` naming the directory or file (missing,
    ///   foreign or unmounted directory, ENOSPC, EIO): nothing of the batch may be referenced;
    ///   the caller stores nothing and the agent retries.
    func put(_ blobs: [Data]) async throws(StorageError) -> [BlobRef]
    /// The bytes `ref` points to (any instance's file).
    /// - Throws: ``StorageError`` `.corrupt` naming the file when it is missing, unreadable or
    ///   ends before the blob does.
    func read(_ ref: BlobRef) async throws(StorageError) -> Data
}

/// A ``BlobStore`` in one directory that several collector instances may share (an NFS mount):
/// each instance appends only to files named with its own random instance id,
/// `INSTANCE-NNNNNNNN.blobs` (mode 0600; eight decimal digits), so no two instances ever write
/// the same file; any instance reads any file.
///
/// The directory must exist (it is not created: an unmounted volume's mount point must not be
/// filled) and must not be writable by group or others. Its marker file `.custos-blobs` holds the
/// id of the database it belongs to; ``put(_:)`` refuses a directory whose marker names another
/// database, and one without a marker unless the caller allows the marker to be written (the
/// database has never used a blob directory: ``put(_:)`` with `mayCreateMarker`).
///
/// Durability: one `write(2)` per blob and one `fdatasync(2)` per batch, before ``put(_:)``
/// returns. A file is appended to until it holds ``maxFileBytes``. Blocking file I/O runs on a
/// Dispatch queue (writes on one serial queue per store, so batches of one instance append one
/// after the other), never on the Swift concurrency pool.
public final class SharedBlobDirectory: BlobStore {
    /// The directory, as configured (`blob-dir=`).
    public let directory: String
    /// This instance's random id: 32 lowercase hex digits, in the name of every file it writes.
    public let instance: String
    /// The database's id, the marker's content.
    public let storeID: String

    /// Sealed blobs of at least this many bytes (32 KiB) go to blob files; smaller ones stay in
    /// the row (the same threshold as the SQLite backend's blob files).
    public static let minBytes = 32 * 1024
    /// A file is not appended to once it holds this many bytes (1 GiB).
    public static let maxFileBytes: Int64 = 1 << 30
    /// The highest file number: eight decimal digits.
    public static let maxNumber: Int64 = 99_999_999
    /// The marker file's name (as the SQLite backend's blob directory).
    public static let markerName = ".custos-blobs"

    public static func fileName(instance: String, number: Int64) -> String {
        instance + "-" + String(format: "%08lld", number) + ".blobs"
    }

    /// A new random instance id (16 bytes from the system CSPRNG, hex).
    public static func newInstanceID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }

    struct Writer {
        var number: Int64 = 0
        var fd: Int32 = -1
        var size: Int64 = 0
        /// Set by ``finish()``: no more appends; the end marker is written.
        var finished = false
    }
    let writer = Mutex(Writer())
    let writeQueue: DispatchQueue

    /// No I/O here. - Throws: `.invalidArgument` when `instance` is not 32 lowercase hex digits
    /// or `storeID` is empty or holds a line break.
    public init(directory: String, instance: String, storeID: String) throws(StorageError) {
        guard BlobRef.isInstanceID(instance) else {
            throw StorageError(.invalidArgument, "\(SafeText.escaped(directory)): blob store instance id must be 32 lowercase hex digits, found \(SafeText.quoted(instance))")
        }
        guard !storeID.isEmpty, !storeID.contains(where: \.isNewline) else {
            throw StorageError(.invalidArgument, "\(SafeText.escaped(directory)): the database id for the blob directory marker is empty or holds a line break")
        }
        self.directory = directory
        self.instance = instance
        self.storeID = storeID
        writeQueue = DispatchQueue(label: "custos.blobs.\(instance)")
    }

    deinit {
        let fd = writer.withLock { $0.fd }
        if fd >= 0 { Glibc.close(fd) }
    }

    public func put(_ blobs: [Data]) async throws(StorageError) -> [BlobRef] {
        try await put(blobs, mayCreateMarker: false)
    }

    /// ``put(_:)``; with `mayCreateMarker`, a directory without a marker gets one (the caller
    /// knows that the database has never referenced a blob file).
    /// - Throws: ``StorageError`` `.unavailable` naming the directory or file: missing, not a
    ///   directory, writable by group or others, marker of another database, no marker (and
    ///   `mayCreateMarker` false: "is its volume unmounted?"), numbers exhausted, or a failed
    ///   `open`, `write` or `fdatasync`. Bytes appended before a failure are cut off again
    ///   (best effort; they are unreferenced either way).
    public func put(_ blobs: [Data], mayCreateMarker: Bool) async throws(StorageError) -> [BlobRef] {
        if blobs.isEmpty { return [] }
        let result = await withCheckedContinuation { (done: CheckedContinuation<Result<[BlobRef], StorageError>, Never>) in
            writeQueue.async {
                done.resume(returning: Result { () throws(StorageError) in try self.appendAndSync(blobs, mayCreateMarker: mayCreateMarker) })
            }
        }
        return try result.get()
    }

    public func read(_ ref: BlobRef) async throws(StorageError) -> Data {
        let result = await withCheckedContinuation { (done: CheckedContinuation<Result<Data, StorageError>, Never>) in
            DispatchQueue.global().async {
                done.resume(returning: Result { () throws(StorageError) in try self.readNow(ref) })
            }
        }
        return try result.get()
    }

    // MARK: Blocking parts (on Dispatch queues)

    var shownDirectory: String { SafeText.escaped(directory) }

    /// Checks what a blob directory must be whatever its marker says: it exists, is a directory
    /// (a symbolic link to one is followed), and is not writable by group or others. Only
    /// `stat(2)`; no database needed (the collector checks `blob-dir=` so before it connects).
    /// - Throws: ``StorageError`` `.unavailable` naming the directory and what is expected.
    public static func checkPlace(_ directory: String) throws(StorageError) {
        let shown = SafeText.escaped(directory)
        var st = stat()
        guard stat(directory, &st) == 0 else {
            let e = errno
            throw StorageError(.unavailable, "\(shown): the blob directory (blob-dir=) \(e == ENOENT ? "does not exist: create it (mode 0700) or mount its volume" : "cannot be read: \(String(cString: strerror(e)))"); large blobs are refused until then")
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw StorageError(.unavailable, "\(shown): expected the blob directory (blob-dir=), found something else")
        }
        guard st.st_mode & 0o022 == 0 else {
            throw StorageError(.unavailable, "\(shown): the blob directory (blob-dir=) must not be writable by group or others (mode \(String(st.st_mode & 0o7777, radix: 8)); expected 0700)")
        }
    }

    /// Checks the directory and its marker without writing anything, off the concurrency pool:
    /// what a collector does at start and a `custos` command before it reads or copies.
    /// - Parameter markerMayBeMissing: whether a directory without a marker is fine (the
    ///   database has never marked one: it gets its marker with the first large blob).
    /// - Throws: ``StorageError`` `.unavailable` naming the directory: ``checkPlace(_:)``'s
    ///   refusals, another database's marker, or no marker where one is expected ("is its
    ///   volume unmounted?").
    public func check(markerMayBeMissing: Bool) async throws(StorageError) {
        let result = await withCheckedContinuation { (done: CheckedContinuation<Result<Void, StorageError>, Never>) in
            DispatchQueue.global().async {
                done.resume(returning: Result { () throws(StorageError) in
                    try self.checkDirectory(mayCreateMarker: markerMayBeMissing, writeMarker: false)
                })
            }
        }
        try result.get()
    }

    /// Checks the directory and its marker, writing the marker when it is absent, allowed
    /// (`mayCreateMarker`) and `writeMarker`.
    func checkDirectory(mayCreateMarker: Bool, writeMarker: Bool = true) throws(StorageError) {
        try Self.checkPlace(directory)
        let marker = directory + "/" + Self.markerName
        if let text = try? String(contentsOfFile: marker, encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard id == storeID else {
                throw StorageError(.unavailable, "\(SafeText.escaped(marker)): this blob directory (blob-dir=) belongs to another database (id \(SafeText.quoted(id)), this database's is \(storeID)); large blobs are refused")
            }
            return
        }
        guard mayCreateMarker else {
            throw StorageError(.unavailable, "\(shownDirectory): no \(Self.markerName) marker, but this database has used a blob directory (blob-dir=) before: is its volume unmounted, or the directory replaced? Large blobs are refused until the right directory is back")
        }
        guard writeMarker else { return }
        do {
            try Data((storeID + "\n").utf8).write(to: URL(fileURLWithPath: marker), options: .withoutOverwriting)
        } catch {
            // Another instance may have written it at the same moment: read it again.
            if let text = try? String(contentsOfFile: marker, encoding: .utf8),
               text.trimmingCharacters(in: .whitespacesAndNewlines) == storeID { return }
            throw StorageError(.unavailable, "\(SafeText.escaped(marker)): cannot write the blob directory marker: \(SafeText.escaped((error as NSError).localizedDescription))")
        }
        _ = chmod(marker, 0o600)
        Self.syncDirectory(directory)
    }

    private func appendAndSync(_ blobs: [Data], mayCreateMarker: Bool) throws(StorageError) -> [BlobRef] {
        if writer.withLock({ $0.finished }) {
            throw StorageError(.unavailable, "\(shownDirectory): blob files of instance \(instance) are closed (the storage is closing)")
        }
        try checkDirectory(mayCreateMarker: mayCreateMarker)
        try openFile()
        let (fd, number, start) = writer.withLock { ($0.fd, $0.number, $0.size) }
        let file = SafeText.escaped(directory + "/" + Self.fileName(instance: instance, number: number))
        var size = start
        var refs: [BlobRef] = []
        refs.reserveCapacity(blobs.count)
        do throws(StorageError) {
            for blob in blobs {
                guard !blob.isEmpty else {
                    throw StorageError(.invalidArgument, "\(file): a blob to store is empty")
                }
                do {
                    try FileHandle(fileDescriptor: fd, closeOnDealloc: false).write(contentsOf: blob)
                } catch {
                    throw StorageError(.unavailable, "\(file): cannot append a blob of \(blob.count) bytes: \(SafeText.escaped((error as NSError).localizedDescription))")
                }
                refs.append(try BlobRef(instance: instance, file: number, offset: size, size: Int64(blob.count), context: file))
                size += Int64(blob.count)
            }
            guard fdatasync(fd) == 0 else {
                throw StorageError(.unavailable, "\(file): fdatasync failed: \(String(cString: strerror(errno)))")
            }
        } catch {
            _ = ftruncate(fd, off_t(start))  // best effort; the bytes are unreferenced either way
            throw error
        }
        writer.withLock { $0.size = size }
        return refs
    }

    /// Opens this instance's current file, or the next one when there is none yet, it is full,
    /// or its name no longer leads to it (the directory was replaced or remounted).
    private func openFile() throws(StorageError) {
        var w = writer.withLock { $0 }
        if w.fd >= 0 {
            var byPath = stat(), byFD = stat()
            let path = directory + "/" + Self.fileName(instance: instance, number: w.number)
            if w.size < Self.maxFileBytes, stat(path, &byPath) == 0, fstat(w.fd, &byFD) == 0,
               byPath.st_ino == byFD.st_ino, byPath.st_dev == byFD.st_dev {
                return
            }
            Glibc.close(w.fd)
            w.fd = -1
        }
        while w.fd < 0 {
            w.number += 1
            guard w.number <= Self.maxNumber else {
                throw StorageError(.unavailable, "\(shownDirectory): blob file numbers of instance \(instance) are exhausted (\(Self.maxNumber))")
            }
            let path = directory + "/" + Self.fileName(instance: instance, number: w.number)
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
            if fd < 0 {
                let e = errno
                if e == EEXIST { continue }  // never write a file this instance did not create
                writer.withLock { $0 = Writer(number: w.number - 1, fd: -1, size: 0) }
                throw StorageError(.unavailable, "\(SafeText.escaped(path)): cannot create blob file: \(String(cString: strerror(e)))")
            }
            Self.syncDirectory(directory)  // the new name survives a power cut with the bytes
            w.fd = fd
            w.size = 0
        }
        writer.withLock { $0 = w }
    }

    private func readNow(_ ref: BlobRef) throws(StorageError) -> Data {
        let path = directory + "/" + ref.fileName
        let file = SafeText.escaped(path)
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else {
            let e = errno
            throw StorageError(.corrupt, "\(file): cannot open blob file for blob reference \(ref): \(e == ELOOP ? "it is a symbolic link" : String(cString: strerror(e)))")
        }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw StorageError(.corrupt, "\(file): expected a regular blob file")
        }
        // Checked against the file before anything is allocated: a damaged row cannot ask for gigabytes.
        guard ref.size <= Int64(st.st_size) - ref.offset else {
            throw StorageError(.corrupt, "\(file): cannot read \(ref.size) bytes at offset \(ref.offset): the file ends at byte \(st.st_size)")
        }
        var data = Data(count: Int(ref.size))
        var done = 0
        let count = Int(ref.size)
        while done < count {
            let n = data.withUnsafeMutableBytes { buf in
                pread(fd, buf.baseAddress! + done, count - done, off_t(ref.offset) + off_t(done))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw StorageError(.corrupt, "\(file): cannot read \(ref.size) bytes at offset \(ref.offset): \(n == 0 ? "the file ends at byte \(ref.offset + Int64(done))" : String(cString: strerror(errno)))")
            }
            done += n
        }
        return data
    }

    static func syncDirectory(_ path: String) {
        let dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { return }
        _ = fsync(dfd)
        Glibc.close(dfd)
    }
}
