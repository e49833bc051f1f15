#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Why ``BoundedFile`` did not return a file's bytes: the path is already escaped for logs.
public enum BoundedFileError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `open`, `fstat` or `read` failed (a symbolic link: `open` with `O_NOFOLLOW` fails with ELOOP).
    case system(SystemCallError)
    /// Not a regular file (a FIFO, device, directory, socket): `kind` names what it is.
    case notRegular(path: String, kind: String)
    /// Larger than the limit (`size` and `limit` in bytes, `size` as `fstat` reports it: a
    /// sparse file counts its apparent size).
    case tooLarge(path: String, size: Int64, limit: Int)
    /// Owned by another user than the one required (`owner` is the file's uid).
    case wrongOwner(path: String, owner: UInt32, required: UInt32)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .notRegular(let path, let kind): return "\(SafeText.quoted(path)) is \(kind), not a regular file"
        case .tooLarge(let path, let size, let limit):
            return "\(SafeText.quoted(path)) is \(size) bytes, more than the \(limit) bytes allowed; not read"
        case .wrongOwner(let path, let owner, let required):
            return "\(SafeText.quoted(path)) belongs to uid \(owner), not uid \(required); not read"
        }
    }
}

/// Reads files that someone else controls (a user's cookie file, another process's
/// `/proc/PID/environ`) without letting their size or type decide how much memory or time the
/// reader spends: opened with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` (a symbolic link, a FIFO
/// that would block, a device are refused; man 2 open), checked with `fstat` on the descriptor
/// (no race with a rename), and never read past a limit.
public enum BoundedFile {
    /// The bytes of the regular file at `path`, at most `maxBytes` of them; with `owner`, only
    /// when the open file belongs to that uid (checked on the descriptor, not the path).
    /// - Throws: ``BoundedFileError`` `.notRegular` for anything but a regular file, `.tooLarge`
    ///   when `fstat` reports more than `maxBytes` (nothing is read), `.wrongOwner`, `.system`
    ///   when a call fails.
    public static func regular(_ path: String, maxBytes: Int, owner: UInt32? = nil) throws(BoundedFileError) -> [UInt8] {
        let fd = try open(path)
        var st = stat()
        do { try syscall("fstat", path) { fstat(fd.rawValue, &st) } } catch { throw .system(error) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notRegular(path: SafeText.escaped(path), kind: kind(st.st_mode)) }
        if let owner, st.st_uid != owner { throw .wrongOwner(path: SafeText.escaped(path), owner: st.st_uid, required: owner) }
        guard st.st_size <= Int64(maxBytes) else {
            throw .tooLarge(path: SafeText.escaped(path), size: Int64(st.st_size), limit: maxBytes)
        }
        return try read(fd, path, upTo: Int(st.st_size))
    }

    /// The first bytes of a file whose size `stat` does not report (procfs files such as
    /// `/proc/PID/environ` show size 0), at most `maxBytes`; `truncated` when there was more.
    /// - Throws: ``BoundedFileError`` `.system` when a call fails, `.notRegular` for anything but
    ///   a regular file.
    public static func prefix(_ path: String, maxBytes: Int) throws(BoundedFileError) -> (bytes: [UInt8], truncated: Bool) {
        let fd = try open(path)
        var st = stat()
        do { try syscall("fstat", path) { fstat(fd.rawValue, &st) } } catch { throw .system(error) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notRegular(path: SafeText.escaped(path), kind: kind(st.st_mode)) }
        let bytes = try read(fd, path, upTo: maxBytes + 1)
        return bytes.count > maxBytes ? (Array(bytes.prefix(maxBytes)), true) : (bytes, false)
    }

    private static func open(_ path: String) throws(BoundedFileError) -> FileDescriptor {
        do {
            let raw = try syscall("open", path) { Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) }
            return FileDescriptor(takingOwnership: raw)
        } catch { throw .system(error) }
    }

    /// Reads until end of file or `limit` bytes.
    private static func read(_ fd: FileDescriptor, _ path: String, upTo limit: Int) throws(BoundedFileError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: limit)
        var total = 0
        while total < limit {
            let n: Int
            do {
                n = try syscall("read", path) {
                    out.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress! + total, limit - total) }
                }
            } catch { throw .system(error) }
            if n == 0 { break }
            total += n
        }
        out.removeSubrange(total...)
        return out
    }

    private static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        case S_IFLNK: return "a symbolic link"
        default: return "not a regular file"
        }
    }
}
