import CustosBase
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Releasing the bytes of expired blobs from a shared blob directory (docs/STORAGE.md
/// "Retention", "Releasing blob bytes"): ranges are erased (``erase(_:zeroOnly:)``), and a file
/// that no row points into any more is deleted once its owner no longer appends to it
/// (``deleteFiles(_:quietMs:modifiedBeforeMs:nowMs:)``). Any instance may do it, for the files
/// of every instance: erasing a range never conflicts with the owner's appends (see
/// ``erase(_:zeroOnly:)``), and a file is deleted only once its owner has moved past it.
extension SharedBlobDirectory {
    /// What ``erase(_:zeroOnly:)`` did.
    public struct ErasureReport: Sendable {
        /// The references whose bytes are erased now: punched, zeroed, past their file's end,
        /// or in a file that is gone. Each file's erasures are durable (`fdatasync`).
        public var erased: [BlobRef] = []
        /// Bytes erased (punched or overwritten).
        public var bytes: Int64 = 0
        /// Of ``erased``, the ranges overwritten with zeros (a file system without hole punching).
        public var zeroed = 0
        /// Ranges left as they were, and why (escaped): a file that cannot be opened or written.
        public var problems: [String] = []
        /// For each file touched, by name: when it was last modified before this call erased
        /// anything in it (Unix ms), for ``deleteFiles(_:quietMs:modifiedBeforeMs:nowMs:)``.
        public var modifiedBeforeMs: [String: Int64] = [:]
    }

    /// What became of a file given to ``deleteFiles(_:quietMs:modifiedBeforeMs:nowMs:)``.
    public enum FileFate: Sendable, Equatable {
        /// Deleted now.
        case deleted
        /// It was not there (deleted before).
        case absent
        /// Kept, and why: its owner may still append to it, or it changed too recently.
        case kept(String)
    }

    /// The name of the marker an instance leaves when it stops (``finish()``): `INSTANCE.ended`.
    public static func endedName(instance: String) -> String { instance + ".ended" }

    /// Erases the bytes `refs` point to (``BlobErasure``: a hole punched, or zeros written where
    /// the file system cannot punch), file by file, each file made durable (`fdatasync`) before
    /// its references count as erased. The files may be any instance's, one being appended to
    /// at the same moment: a range lies wholly before its file's end (its bytes were appended
    /// and synced before its row committed); the owner only ever appends at the end
    /// (`O_APPEND`), and a punched hole keeps the file's size and every offset, so the two never
    /// touch the same byte and the owner's next offset does not move.
    /// - Parameter zeroOnly: write zeros even where holes can be punched (for tests of that path).
    /// - Throws: ``StorageError`` `.unavailable` when the directory fails its check (missing,
    ///   writable by others, no marker, or another database's marker): nothing is erased, so
    ///   another database's files are never touched.
    public func erase(_ refs: [BlobRef], zeroOnly: Bool = false) async throws(StorageError) -> ErasureReport {
        if refs.isEmpty { return ErasureReport() }
        let result = await withCheckedContinuation { (done: CheckedContinuation<Result<ErasureReport, StorageError>, Never>) in
            DispatchQueue.global().async {
                done.resume(returning: Result { () throws(StorageError) in try self.eraseNow(refs, zeroOnly: zeroOnly) })
            }
        }
        return try result.get()
    }

    /// Deletes each of `files` that its owner no longer appends to and that changed more than
    /// `quietMs` ago; the caller has checked that no row points into it. An owner no longer
    /// appends to file N once it made a later file (`INSTANCE-M.blobs`, M > N: it never goes
    /// back) or left its end marker (``finish()``). The quiet time covers a batch appended to
    /// the file just before its owner moved on, whose transaction has not committed its rows yet
    /// (it commits within the operation timeout, or never). "Changed" is the file's modification
    /// time, or for a file erased in this run its time before that (`modifiedBeforeMs`, by file
    /// name). The file is opened first, so an NFS client revalidates its attributes
    /// (close-to-open consistency). When the last file of an ended instance goes, so does its
    /// end marker.
    /// - Parameters:
    ///   - files: (instance id, file number) pairs.
    ///   - nowMs: Unix ms now (this host's clock; the file times are the file server's).
    /// - Returns: one ``FileFate`` per file, in order.
    /// - Throws: ``StorageError`` `.unavailable` when the directory fails its check or cannot be
    ///   listed: nothing is deleted.
    public func deleteFiles(_ files: [(instance: String, number: Int64)], quietMs: Int64, modifiedBeforeMs: [String: Int64],
                            nowMs: Int64) async throws(StorageError) -> [FileFate] {
        if files.isEmpty { return [] }
        let result = await withCheckedContinuation { (done: CheckedContinuation<Result<[FileFate], StorageError>, Never>) in
            DispatchQueue.global().async {
                done.resume(returning: Result { () throws(StorageError) in
                    try self.deleteFilesNow(files, quietMs: quietMs, modifiedBeforeMs: modifiedBeforeMs, nowMs: nowMs)
                })
            }
        }
        return try result.get()
    }

    /// Stops appending (later ``put(_:)`` calls fail `.unavailable`), closes this instance's file
    /// and, when it made any, leaves its end marker `INSTANCE.ended`, which tells a releasing
    /// instance that its last file will not grow any more. Best effort (a marker that cannot be
    /// written leaves that file until an operator removes it); calling it twice does nothing.
    public func finish() async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            writeQueue.async {
                let (fd, number, already) = self.writer.withLock { w in
                    defer { w.finished = true; w.fd = -1 }
                    return (w.fd, w.number, w.finished)
                }
                if fd >= 0 { Glibc.close(fd) }
                if !already && number > 0 {
                    let marker = self.directory + "/" + Self.endedName(instance: self.instance)
                    let mfd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
                    if mfd >= 0 {
                        _ = fsync(mfd)
                        Glibc.close(mfd)
                        Self.syncDirectory(self.directory)
                    }
                }
                done.resume()
            }
        }
    }

    // MARK: Blocking parts (on Dispatch queues)

    private func eraseNow(_ refs: [BlobRef], zeroOnly: Bool) throws(StorageError) -> ErasureReport {
        try checkDirectory(mayCreateMarker: false)
        var report = ErasureReport()
        var byFile: [String: [BlobRef]] = [:]
        var order: [String] = []
        for ref in refs {
            if byFile[ref.fileName] == nil { order.append(ref.fileName) }
            byFile[ref.fileName, default: []].append(ref)
        }
        for name in order {
            let ranges = byFile[name]!
            let path = directory + "/" + name
            let shown = SafeText.escaped(path)
            let fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
            if fd < 0 {
                let e = errno
                if e == ENOENT {  // deleted already (by an earlier run, or by hand): nothing left to erase
                    report.erased += ranges
                } else {
                    report.problems.append("\(shown): cannot open blob file to erase \(ranges.count) expired ranges: \(e == ELOOP ? "it is a symbolic link" : String(cString: strerror(e)))")
                }
                continue
            }
            defer { Glibc.close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                report.problems.append("\(shown): expected a regular blob file; \(ranges.count) expired ranges left in it")
                continue
            }
            report.modifiedBeforeMs[name] = Self.modifiedMs(st)
            var erased: [BlobRef] = [], bytes: Int64 = 0, zeroed = 0
            do throws(SystemCallError) {
                for ref in ranges {
                    let (method, n) = try BlobErasure.erase(fd: fd, path: path, offset: ref.offset, length: ref.size, zeroOnly: zeroOnly)
                    erased.append(ref)
                    bytes += n
                    if method == .zeroed { zeroed += 1 }
                }
                try syscall("fdatasync", path) { fdatasync(fd) }
            } catch {
                report.problems.append("\(shown): cannot erase expired ranges: \(error.description); \(ranges.count) ranges kept for the next run")
                continue
            }
            report.erased += erased
            report.bytes += bytes
            report.zeroed += zeroed
        }
        return report
    }

    private func deleteFilesNow(_ files: [(instance: String, number: Int64)], quietMs: Int64,
                                modifiedBeforeMs: [String: Int64], nowMs: Int64) throws(StorageError) -> [FileFate] {
        try checkDirectory(mayCreateMarker: false)
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw StorageError(.unavailable, "\(shownDirectory): cannot list the blob directory: \(SafeText.escaped((error as NSError).localizedDescription))")
        }
        // Each instance's highest file number on disk, and the instances that ended.
        var highest: [String: Int64] = [:], ended = Set<String>()
        for name in names {
            if name.hasSuffix(".ended"), BlobRef.isInstanceID(String(name.dropLast(6))) { ended.insert(String(name.dropLast(6))) }
            guard name.hasSuffix(".blobs"), name.utf8.count == 32 + 1 + 8 + 6 else { continue }
            let instance = String(name.prefix(32)), digits = name.dropFirst(33).prefix(8)
            guard BlobRef.isInstanceID(instance), let n = Int64(digits) else { continue }
            highest[instance] = max(highest[instance] ?? 0, n)
        }
        let (ownNumber, ownFinished) = writer.withLock { ($0.number, $0.finished) }
        var fates: [FileFate] = []
        var deletedAny = false, touched = Set<String>()
        for (instance, number) in files {
            let name = Self.fileName(instance: instance, number: number)
            let path = directory + "/" + name
            let movedOn = (highest[instance] ?? 0) > number || ended.contains(instance)
                || (instance == self.instance && (ownNumber > number || ownFinished))
            guard movedOn else {
                fates.append(.kept("its writer (instance \(instance)) may still append to it"))
                continue
            }
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
            if fd < 0 {
                let e = errno
                fates.append(e == ENOENT ? .absent : .kept("cannot open it: \(String(cString: strerror(e)))"))
                continue
            }
            var st = stat()
            let statted = fstat(fd, &st) == 0
            Glibc.close(fd)
            guard statted, (st.st_mode & S_IFMT) == S_IFREG else {
                fates.append(.kept("not a regular file"))
                continue
            }
            let changed = min(Self.modifiedMs(st), modifiedBeforeMs[name] ?? Int64.max)
            guard nowMs - changed >= quietMs else {
                fates.append(.kept("changed \(max(0, nowMs - changed) / 1000) s ago, less than the quiet time of \(quietMs / 1000) s"))
                continue
            }
            if unlink(path) == 0 || errno == ENOENT {
                fates.append(.deleted)
                deletedAny = true
                touched.insert(instance)
            } else {
                fates.append(.kept("cannot delete it: \(String(cString: strerror(errno)))"))
            }
        }
        // An ended instance whose files are all gone no longer needs its end marker.
        for instance in touched where ended.contains(instance) {
            let left = (try? FileManager.default.contentsOfDirectory(atPath: directory))?
                .contains { $0.hasPrefix(instance + "-") && $0.hasSuffix(".blobs") } ?? true
            if !left { _ = unlink(directory + "/" + Self.endedName(instance: instance)) }
        }
        if deletedAny { Self.syncDirectory(directory) }
        return fates
    }

    /// A file's modification time, Unix ms.
    static func modifiedMs(_ st: stat) -> Int64 {
        Int64(st.st_mtim.tv_sec) * 1000 + Int64(st.st_mtim.tv_nsec) / 1_000_000
    }
}
