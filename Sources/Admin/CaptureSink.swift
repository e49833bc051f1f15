import Foundation
import ZIPFoundation
#if canImport(Glibc)
import Glibc
#endif

/// Where decrypted captures go: a directory (`custos decrypt`) or one archive (`custos export`).
///
/// Both only ever expose complete files: a directory entry is written under a hidden temporary
/// name and then linked to its final name (never replacing an existing file); an archive is
/// built under a temporary name and linked to its final name by `commit()`. An interrupted run
/// therefore leaves only whole files behind (and, for an archive, nothing).
protocol CaptureSink: AnyObject {
    /// Human-readable destination for messages.
    var destination: String { get }
    /// Adds one file at `relativePath` ("/"-separated, already sanitised). If the name is taken,
    /// a suffix is added before the extension. Returns the path actually used.
    /// - Throws: `AdminError` `.io`.
    func add(_ data: Data, at relativePath: String, compress: Bool) throws -> String
    /// Makes the output visible (archives) — after this, the sink is closed.
    func commit() throws
    /// Drops everything not yet committed (archives); a directory keeps its complete files.
    func abort()
}

/// A directory of files, created if needed (mode 0700: decrypted captures are sensitive).
final class DirectorySink: CaptureSink {
    let root: String
    var destination: String { root }

    /// Creates `root` (and parents) and checks that a file can be created in it.
    /// - Throws: `AdminError.io` when the directory cannot be created or is not writable.
    init(root: String) throws {
        self.root = root
        try ensureDirectory(root, what: "output directory")
        try probeWritable(root, what: "output directory")
    }

    func add(_ data: Data, at relativePath: String, compress: Bool) throws -> String {
        let parts = relativePath.split(separator: "/").map(String.init)
        let dir = ([root] + parts.dropLast()).joined(separator: "/")
        try ensureDirectory(dir, what: "output directory")
        let name = parts.last ?? "file"
        let tmp = dir + "/.\(name).partial-\(getpid())"
        try writeNewFile(tmp, data: data, mode: 0o600)
        defer { unlink(tmp) }
        for attempt in 0..<1000 {
            let candidate = attempt == 0 ? name : suffixed(name, attempt)
            if link(tmp, dir + "/" + candidate) == 0 {
                return (parts.dropLast() + [candidate]).joined(separator: "/")
            }
            let err = errno
            if err != EEXIST {
                throw AdminError(.io, "\(dir)/\(candidate): cannot create output file: \(String(cString: strerror(err)))")
            }
        }
        throw AdminError(.io, "\(dir)/\(name): too many files with this name already")
    }

    func commit() throws {}
    func abort() {}
}

/// A zip archive (PKWARE APPNOTE 6.3, through ZIPFoundation), built as `<path>.partial-PID`
/// and linked to `path` on `commit()`; `abort()` deletes it.
final class ZipSink: CaptureSink {
    let path: String
    private let tmp: String
    private var archive: Archive?
    private var names = Set<String>()
    var destination: String { path }

    /// - Throws: `AdminError` `.usage` when `path` exists, `.io` when its folder is not writable.
    init(path: String) throws {
        self.path = path
        if FileManager.default.fileExists(atPath: path) {
            throw AdminError(.usage, "\(path): exists already; export never overwrites (choose another name)")
        }
        let parent = (path as NSString).deletingLastPathComponent
        let dir = parent.isEmpty ? "." : parent
        try ensureDirectory(dir, what: "archive folder")
        try probeWritable(dir, what: "archive folder")
        tmp = dir + "/." + (path as NSString).lastPathComponent + ".partial-\(getpid())"
        unlink(tmp)
        // Owner-only from the first byte: ZIPFoundation creates the file with the process umask.
        let oldMask = umask(0o077)
        defer { umask(oldMask) }
        do {
            archive = try Archive(url: URL(fileURLWithPath: tmp), accessMode: .create, pathEncoding: nil)
        } catch {
            throw AdminError(.io, "\(tmp): cannot create the zip archive: \(error)")
        }
    }

    func add(_ data: Data, at relativePath: String, compress: Bool) throws -> String {
        guard let archive else { throw AdminError(.io, "\(path): archive already closed") }
        var name = relativePath
        var attempt = 0
        while names.contains(name) {
            attempt += 1
            let parts = relativePath.split(separator: "/").map(String.init)
            name = (parts.dropLast() + [suffixed(parts.last ?? "file", attempt)]).joined(separator: "/")
        }
        names.insert(name)
        do {
            try archive.addEntry(with: name, type: .file, uncompressedSize: Int64(data.count),
                                 modificationDate: Date(), permissions: 0o600,
                                 compressionMethod: compress ? .deflate : .none) { position, size in
                data.subdata(in: Int(position)..<Int(position) + size)
            }
        } catch {
            throw AdminError(.io, "\(tmp): cannot add \(name) to the archive: \(error)")
        }
        return name
    }

    func commit() throws {
        archive = nil  // closes the file; ZIPFoundation keeps the central directory current
        guard link(tmp, path) == 0 else {
            let err = errno
            unlink(tmp)
            throw AdminError(.io, "\(path): cannot create the archive: \(String(cString: strerror(err)))")
        }
        unlink(tmp)
    }

    func abort() {
        archive = nil
        unlink(tmp)
    }
}

/// `name` with `-N` before its extension.
func suffixed(_ name: String, _ n: Int) -> String {
    let ns = name as NSString
    let ext = ns.pathExtension
    let base = ext.isEmpty ? name : ns.deletingPathExtension
    return ext.isEmpty ? "\(base)-\(n)" : "\(base)-\(n).\(ext)"
}

/// Creates `path` and its parents (mode 0700) unless it exists as a directory.
func ensureDirectory(_ path: String, what: String) throws {
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
        guard isDir.boolValue else { throw AdminError(.io, "\(path): \(what) exists and is not a directory") }
        return
    }
    do {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
    } catch {
        throw AdminError(.io, "\(path): cannot create \(what): \((error as NSError).localizedDescription)")
    }
}

/// Checks that a file can be created in `dir` (permissions, read-only file systems, full disks).
func probeWritable(_ dir: String, what: String) throws {
    let probe = dir + "/.custos-write-test-\(getpid())"
    let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
        throw AdminError(.io, "\(dir): \(what) is not writable: \(String(cString: strerror(errno)))")
    }
    close(fd)
    unlink(probe)
}

/// Writes `data` to a new file (`O_EXCL`) with `mode`, `fsync`s it and closes it.
/// - Throws: `AdminError.io` naming the file (`.usage` when it exists already).
func writeNewFile(_ path: String, data: Data, mode: mode_t) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else {
        let err = errno
        if err == EEXIST { throw AdminError(.usage, "\(path): exists already; refusing to overwrite it") }
        throw AdminError(.io, "\(path): cannot create: \(String(cString: strerror(err)))")
    }
    defer { close(fd) }
    do {
        // FileHandle writes it all (partial writes, EINTR) or throws.
        try FileHandle(fileDescriptor: fd, closeOnDealloc: false).write(contentsOf: data)
    } catch {
        unlink(path)
        throw AdminError(.io, "\(path): write failed: \((error as NSError).localizedDescription)")
    }
    if fsync(fd) != 0 {
        let err = errno
        unlink(path)
        throw AdminError(.io, "\(path): fsync failed: \(String(cString: strerror(err)))")
    }
}
