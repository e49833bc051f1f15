import CustosBase
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A directory that decrypted output is written into, opened once and then reached only through
/// its descriptor: every file and subdirectory is made with `openat`/`mkdirat`/`linkat`
/// relative to it (man 2 openat), with `O_NOFOLLOW` and `O_EXCL`, so a symbolic link planted
/// at any name inside it is refused (never followed) and nothing is written outside it.
///
/// `path` serves messages only; after opening, the directory is never looked up by path again,
/// so renaming or replacing a path component cannot redirect the output either.
/// Not thread-safe: one decrypt or export run uses it from one thread.
final class OutputDirectory {
    /// The path as given (plus the subdirectories below it), for messages.
    let path: String
    /// The open directory (`O_RDONLY | O_DIRECTORY | O_NOFOLLOW`).
    let fd: FileDescriptor

    private init(path: String, fd: FileDescriptor) {
        self.path = path
        self.fd = fd
    }

    /// Opens `path` as a private output directory (`custos decrypt --out`, `custos open`),
    /// creating it with mode 0700 (and missing parents) when it does not exist.
    ///
    /// An existing directory must be a directory itself (not a symbolic link to one), owned by
    /// the effective user, and writable by nobody else (no group/other write bit); a looser mode
    /// than 0700 (e.g. 0755) is tightened to 0700 with `fchmod` and `log` says so.
    /// - Parameters:
    ///   - what: names the directory in messages, e.g. "output directory".
    ///   - log: one line of status text (the tightened mode).
    /// - Throws: `AdminError` `.usage` (a symbolic link, another owner, writable by others: the
    ///   message says why and how to fix it), `.io` (cannot create or open it).
    static func openPrivate(_ path: String, what: String, log: (String) -> Void) throws -> OutputDirectory {
        let flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
        var raw: Int32?
        var failure: SystemCallError?
        do { raw = try syscall("open", path) { open(path, flags) } } catch { failure = error }
        if let missing = failure, missing.errno == ENOENT {
            let parent = (path as NSString).deletingLastPathComponent
            if !parent.isEmpty, !FileManager.default.fileExists(atPath: parent) {
                do {
                    try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true,
                                                            attributes: [.posixPermissions: 0o700])
                } catch {
                    throw AdminError(.io, "\(parent): cannot create the folder of the \(what): \((error as NSError).localizedDescription)")
                }
            }
            do {
                do { try syscall("mkdir", path) { mkdir(path, 0o700) } } catch where error.errno == EEXIST {}
                raw = try syscall("open", path) { open(path, flags) }
                failure = nil
            } catch { failure = error }
        }
        guard let raw else {
            let error = failure!
            var st = stat()
            if lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFLNK {
                throw AdminError(.usage, "\(path): \(what) is a symbolic link; custos writes decrypted captures only into a real directory (give the directory it points to, or another --out)")
            }
            if error.errno == ENOTDIR || (lstat(path, &st) == 0 && st.st_mode & S_IFMT != S_IFDIR) {
                throw AdminError(.io, "\(path): \(what) exists and is not a directory")
            }
            throw AdminError(.io, "\(path): cannot \(error.function == "mkdir" ? "create" : "open") \(what): \(error.reason)")
        }
        let dir = OutputDirectory(path: path, fd: FileDescriptor(takingOwnership: raw))
        try dir.checkPrivate(what: what, log: log)
        return dir
    }

    /// Opens the folder an output file goes into (`custos export --out FILE.zip`, `custos open
    /// --out FILE`, `custos seal --out FILE`): `path`'s parent, "." when it has none. Symbolic
    /// links in the folder's own path are followed (the user named it); the file is then made
    /// relative to it with `O_NOFOLLOW`. A folder that group or others can write is refused
    /// unless it has the sticky bit (as /tmp has: others cannot remove or replace our files).
    /// - Throws: `AdminError` `.io` (missing, not a directory), `.usage` (writable by others).
    static func openFolder(of path: String, what: String) throws -> (folder: OutputDirectory, name: String) {
        let name = (path as NSString).lastPathComponent
        guard !name.isEmpty, name != ".", name != "..", !path.hasSuffix("/") else {
            throw AdminError(.usage, "\(path): expected a file name for the \(what)")
        }
        let parent = (path as NSString).deletingLastPathComponent
        let folderPath = parent.isEmpty ? "." : parent
        let raw: Int32
        do { raw = try syscall("open", folderPath) { open(folderPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } } catch {
            throw AdminError(.io, "\(folderPath): cannot open the folder of the \(what): \(error.reason)")
        }
        let folder = OutputDirectory(path: folderPath, fd: FileDescriptor(takingOwnership: raw))
        let st = try folder.status()
        if st.st_mode & 0o022 != 0, st.st_mode & S_ISVTX == 0 {
            throw AdminError(.usage, "\(folderPath): the folder of the \(what) has mode \(octal(st.st_mode)): group or others can write it (and it has no sticky bit), so they could replace the file; choose a folder only you can write, or chmod go-w it")
        }
        return (folder, name)
    }

    /// `fstat` of the open directory.
    func status() throws -> stat {
        var st = stat()
        do { try syscall("fstat", path) { fstat(fd.rawValue, &st) } } catch {
            throw AdminError(.io, "\(path): cannot read its status: \(error.reason)")
        }
        return st
    }

    /// The ownership and mode rule of ``openPrivate(_:what:log:)``.
    private func checkPrivate(what: String, log: (String) -> Void) throws {
        let st = try status()
        let me = geteuid()
        if st.st_uid != me {
            throw AdminError(.usage, "\(path): \(what) is owned by \(userName(st.st_uid)), not by you (\(userName(me))); decrypted captures go only into a directory you own: choose another --out, or chown it to yourself")
        }
        if st.st_mode & 0o022 != 0 {
            throw AdminError(.usage, "\(path): \(what) has mode \(octal(st.st_mode)): group or others can write it, so they could plant links or replace files in it; run chmod 700 on it (and check its contents), or choose another --out")
        }
        if st.st_mode & 0o077 != 0 {
            do { try syscall("fchmod", path) { fchmod(fd.rawValue, 0o700) } } catch {
                throw AdminError(.io, "\(path): cannot tighten \(what) from mode \(octal(st.st_mode)) to 0700: \(error.reason)")
            }
            log("note: \(path): \(what) had mode \(octal(st.st_mode)); tightened to 0700 so only you can read the decrypted captures")
        }
    }

    /// Opens subdirectory `name` (one path component), creating it with mode 0700 when missing.
    /// The same rule as ``openPrivate(_:what:log:)`` applies to an existing one.
    /// - Throws: `AdminError` `.usage` naming it when it is a symbolic link (or another file),
    ///   `.io` when it cannot be made.
    func subdirectory(_ name: String, log: (String) -> Void) throws -> OutputDirectory {
        let full = path + "/" + name
        try checkComponent(name)
        let raw: Int32
        do {
            do { try syscall("mkdirat", full) { mkdirat(fd.rawValue, name, 0o700) } } catch where error.errno == EEXIST {}
            raw = try syscall("openat", full) { openat(fd.rawValue, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        } catch {
            try refuseIfLink(name)
            throw AdminError(.io, "\(full): cannot \(error.function == "mkdirat" ? "create" : "open") output subdirectory: \(error.reason)")
        }
        let sub = OutputDirectory(path: full, fd: FileDescriptor(takingOwnership: raw))
        try sub.checkPrivate(what: "output subdirectory", log: log)
        return sub
    }

    /// Creates a new file `name` (one component) with `mode` (`O_CREAT | O_EXCL | O_NOFOLLOW`),
    /// writes all of `data`, `fsync`s it.
    /// - Throws: `AdminError` `.usage` when `name` exists (a planted link is named as one),
    ///   `.io` when it cannot be written (the partial file is removed).
    func writeNewFile(_ name: String, data: Data, mode: mode_t) throws {
        let file = try createFile(name, mode: mode)
        do {
            try writeAll(data, to: file, name: name)
            try syscall("fsync", path + "/" + name) { fsync(file.rawValue) }
        } catch {
            remove(name)
            throw AdminError(.io, "\(path)/\(name): cannot write: \(error.reason)")
        }
    }

    /// Writes all of `data` to `file` (retrying short writes and `EINTR`).
    func writeAll(_ data: Data, to file: FileDescriptor, name: String) throws(SystemCallError) {
        var done = 0
        while done < data.count {
            done += try syscall("write", path + "/" + name) {
                data[(data.startIndex + done)...].withUnsafeBytes { buf in
                    Glibc.write(file.rawValue, buf.baseAddress!, buf.count)
                }
            }
        }
    }

    /// Creates a new empty file `name` with `mode`; see ``writeNewFile(_:data:mode:)``.
    func createFile(_ name: String, mode: mode_t) throws -> FileDescriptor {
        try checkComponent(name)
        let raw: Int32
        do {
            raw = try syscall("openat", path + "/" + name) {
                openat(fd.rawValue, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
            }
        } catch {
            try refuseIfLink(name)
            if error.errno == EEXIST { throw AdminError(.usage, "\(path)/\(name): exists already; refusing to overwrite it") }
            throw AdminError(.io, "\(path)/\(name): cannot create: \(error.reason)")
        }
        return FileDescriptor(takingOwnership: raw)
    }

    /// Gives the complete file `tmp` the name `name` as well (`linkat`, which never replaces
    /// an existing name and never follows a link there).
    /// - Returns: false when `name` exists already as a regular file or directory.
    /// - Throws: `AdminError` `.usage` when `name` is a symbolic link, `.io` for other failures.
    func link(_ tmp: String, as name: String) throws -> Bool {
        try checkComponent(name)
        do {
            try syscall("linkat", path + "/" + name) { linkat(fd.rawValue, tmp, fd.rawValue, name, 0) }
            return true
        } catch {
            try refuseIfLink(name)
            if error.errno == EEXIST { return false }
            throw AdminError(.io, "\(path)/\(name): cannot create: \(error.reason)")
        }
    }

    /// Removes the name `name` (`unlinkat`; a symbolic link itself, never its target).
    func remove(_ name: String) { _ = unlinkat(fd.rawValue, name, 0) }

    /// The status of `name` without following a link (`fstatat` with `AT_SYMLINK_NOFOLLOW`),
    /// nil when it does not exist.
    func entryStatus(_ name: String) -> stat? {
        var st = stat()
        return fstatat(fd.rawValue, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? st : nil
    }

    /// Writes the directory's entries to disk (`fsync` on the directory).
    func sync() { _ = fsync(fd.rawValue) }

    /// - Throws: `AdminError.usage` naming `name` when it is a symbolic link.
    private func refuseIfLink(_ name: String) throws {
        if let st = entryStatus(name), st.st_mode & S_IFMT == S_IFLNK {
            throw AdminError(.usage, "\(path)/\(name): is a symbolic link; refusing to write through it (custos did not make it: check who planted it). Nothing was written outside \(path)")
        }
    }

    /// A name made by `OutputNaming` is one component; anything else is a bug here.
    private func checkComponent(_ name: String) throws {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/") else {
            throw AdminError(.io, "\(path): '\(name)' is not a single file name component")
        }
    }
}

/// `0755`.
func octal(_ mode: mode_t) -> String { "0" + String(mode & 0o7777, radix: 8) }

/// `alice (uid 1000)`, or `uid 1000` when the user database has no name for it.
func userName(_ uid: uid_t) -> String {
    if let pw = getpwuid(uid), let name = pw.pointee.pw_name { return "\(String(cString: name)) (uid \(uid))" }
    return "uid \(uid)"
}
