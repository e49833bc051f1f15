#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call: the function, the errno and its text (man 3 strerror), and what it
/// was applied to (a path, a descriptor's role).
public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The system call or libc function, e.g. `open`.
    public let function: String
    /// The errno value.
    public let errno: Int32
    /// What the call was applied to, e.g. a path; already safe for logs (escaped).
    public let subject: String?

    public init(function: String, errno: Int32, subject: String? = nil) {
        self.function = function
        self.errno = errno
        self.subject = subject.map { SafeText.escaped($0) }
    }

    /// `strerror(errno)`.
    public var reason: String { String(cString: strerror(errno)) }

    public var description: String {
        "\(function)(\(subject ?? "")) failed: \(reason) (errno \(errno))"
    }
}

/// Calls a system function returning -1 (or a negative value) with `errno` set on failure:
/// retries on `EINTR`, throws ``SystemCallError`` naming `function` and `subject` otherwise.
/// `EBADF` and `EFAULT` are programming errors and trap, as in swift-nio's syscall wrappers.
@discardableResult
public func syscall<T: FixedWidthInteger>(_ function: String, _ subject: String? = nil,
                                          _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let e = errno
        if e == EINTR { continue }
        precondition(e != EBADF && e != EFAULT, "\(function)(\(subject ?? "")): \(e == EBADF ? "EBADF" : "EFAULT") is a bug")
        throw SystemCallError(function: function, errno: e, subject: subject)
    }
}

/// An owned file descriptor: closed exactly once, when the last reference goes (deinit).
public final class FileDescriptor: Sendable {
    private let fd: Int32

    /// Takes ownership of `fd` (≥ 0).
    public init(takingOwnership fd: Int32) {
        precondition(fd >= 0)
        self.fd = fd
    }

    /// The raw descriptor, valid while this object lives. Do not close it.
    public var rawValue: Int32 { fd }

    deinit { _ = close(fd) }
}
