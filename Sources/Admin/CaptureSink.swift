import CustosBase
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

/// A directory of files (`custos decrypt --out DIR`), reached only through an
/// ``OutputDirectory``: opened once, created with mode 0700 when missing, refused when it is a
/// symbolic link, another user's or writable by others, tightened to 0700 when looser.
/// Every subdirectory and file is created relative to it with `O_NOFOLLOW`/`O_EXCL`, so a
/// planted symbolic link at any component is refused by name and nothing lands outside DIR.
final class DirectorySink: CaptureSink {
    let root: OutputDirectory
    private var subdirectories: [String: OutputDirectory] = [:]
    private let log: (String) -> Void
    var destination: String { root.path }

    /// Opens (or creates) `root` and checks that a file can be created in it.
    /// - Parameter log: one line of status text (a tightened mode).
    /// - Throws: `AdminError` `.usage` (see ``OutputDirectory/openPrivate(_:what:log:)``),
    ///   `.io` when the directory cannot be created or is not writable.
    init(root path: String, log: @escaping (String) -> Void) throws {
        self.log = log
        root = try OutputDirectory.openPrivate(path, what: "output directory", log: log)
        // Read-only file systems and full disks show here, before the audit record and the key.
        let probe = ".custos-write-test-\(getpid())"
        root.remove(probe)
        do { _ = try root.createFile(probe, mode: 0o600) } catch let e as AdminError {
            throw AdminError(.io, "\(path): output directory is not writable: \(e.message)")
        }
        root.remove(probe)
    }

    /// The open directory `parts` below the root, each level created or opened once.
    private func directory(_ parts: ArraySlice<String>) throws -> OutputDirectory {
        var dir = root
        var key = ""
        for part in parts {
            key += "/" + part
            if let known = subdirectories[key] { dir = known; continue }
            dir = try dir.subdirectory(part, log: log)
            subdirectories[key] = dir
        }
        return dir
    }

    func add(_ data: Data, at relativePath: String, compress: Bool) throws -> String {
        let parts = relativePath.split(separator: "/").map(String.init)
        let dir = try directory(parts.dropLast())
        let name = parts.last ?? "file"
        let tmp = ".\(name).partial-\(getpid())"
        try dir.writeNewFile(tmp, data: data, mode: 0o600)
        defer { dir.remove(tmp) }
        for attempt in 0..<1000 {
            let candidate = attempt == 0 ? name : suffixed(name, attempt)
            if try dir.link(tmp, as: candidate) {
                return (parts.dropLast() + [candidate]).joined(separator: "/")
            }
        }
        throw AdminError(.io, "\(dir.path)/\(name): too many files with this name already")
    }

    func commit() throws {
        for dir in subdirectories.values { dir.sync() }
        root.sync()
    }
    func abort() {}
}

/// A zip archive (PKWARE APPNOTE 6.3, through ZIPFoundation), built as a hidden
/// `.<name>.partial-PID` next to `path` and linked to `path` on `commit()`; `abort()` deletes it.
///
/// Both names are made relative to the folder opened once (``OutputDirectory/openFolder(of:what:)``)
/// with `O_CREAT | O_EXCL | O_NOFOLLOW` and `linkat`: a symbolic link planted at `path` or at
/// the temporary name is refused, never followed. ZIPFoundation opens files by path, so it is
/// given `/proc/self/fd/N` of the file already created: the same inode, whatever the names do.
final class ZipSink: CaptureSink {
    let path: String
    private let folder: OutputDirectory
    private let name: String
    private let tmp: String
    private var file: FileDescriptor?
    private var archive: Archive?
    private var names = Set<String>()
    var destination: String { path }

    /// - Throws: `AdminError` `.usage` when `path` exists (or is a symbolic link) or its folder
    ///   is writable by others, `.io` when its folder is not writable.
    init(path: String) throws {
        self.path = path
        (folder, name) = try OutputDirectory.openFolder(of: path, what: "archive")
        if let st = folder.entryStatus(name) {
            if st.st_mode & S_IFMT == S_IFLNK {
                throw AdminError(.usage, "\(path): is a symbolic link; export never writes through one (choose another name)")
            }
            throw AdminError(.usage, "\(path): exists already; export never overwrites (choose another name)")
        }
        tmp = ".\(name).partial-\(getpid())"
        folder.remove(tmp)
        let file: FileDescriptor
        do { file = try folder.createFile(tmp, mode: 0o600) } catch let e as AdminError {
            throw AdminError(.io, "\(folder.path): archive folder is not writable: \(e.message)")
        }
        self.file = file
        do {
            // An empty archive: the end of central directory record alone (APPNOTE 4.3.16).
            try folder.writeAll(Data([0x50, 0x4b, 0x05, 0x06] + [UInt8](repeating: 0, count: 18)), to: file, name: tmp)
            archive = try Archive(url: URL(fileURLWithPath: "/proc/self/fd/\(file.rawValue)"), accessMode: .update,
                                  pathEncoding: nil)
        } catch {
            folder.remove(tmp)
            throw AdminError(.io, "\(folder.path)/\(tmp): cannot create the zip archive: \(error)")
        }
    }

    func add(_ data: Data, at relativePath: String, compress: Bool) throws -> String {
        guard let archive else { throw AdminError(.io, "\(path): archive already closed") }
        var entry = relativePath
        var attempt = 0
        while names.contains(entry) {
            attempt += 1
            let parts = relativePath.split(separator: "/").map(String.init)
            entry = (parts.dropLast() + [suffixed(parts.last ?? "file", attempt)]).joined(separator: "/")
        }
        names.insert(entry)
        do {
            try archive.addEntry(with: entry, type: .file, uncompressedSize: Int64(data.count),
                                 modificationDate: Date(), permissions: 0o600,
                                 compressionMethod: compress ? .deflate : .none) { position, size in
                data.subdata(in: Int(position)..<Int(position) + size)
            }
        } catch {
            throw AdminError(.io, "\(folder.path)/\(tmp): cannot add \(entry) to the archive: \(error)")
        }
        return entry
    }

    func commit() throws {
        archive = nil  // closes ZIPFoundation's stream; it keeps the central directory current
        defer { folder.remove(tmp); file = nil }
        if let file {
            do { try syscall("fsync", tmp) { fsync(file.rawValue) } } catch {
                throw AdminError(.io, "\(path): cannot write the archive to disk: \(error.reason)")
            }
        }
        guard try folder.link(tmp, as: name) else {
            throw AdminError(.usage, "\(path): appeared while the archive was written; export never overwrites (choose another name)")
        }
        folder.sync()
    }

    func abort() {
        archive = nil
        file = nil
        folder.remove(tmp)
    }
}

/// `name` with `-N` before its extension.
func suffixed(_ name: String, _ n: Int) -> String {
    let ns = name as NSString
    let ext = ns.pathExtension
    let base = ext.isEmpty ? name : ns.deletingPathExtension
    return ext.isEmpty ? "\(base)-\(n)" : "\(base)-\(n).\(ext)"
}
