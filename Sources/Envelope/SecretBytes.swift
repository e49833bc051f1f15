#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A fixed-size buffer for secrets (DEKs, passphrases, private key DER).
///
/// The bytes live in their own anonymous `mmap(2)` pages, which are `mlock(2)`'d where the
/// platform allows (so they are never swapped out) and excluded from core dumps
/// (`MADV_DONTDUMP`). `deinit` overwrites them with zeros before unmapping. The contents never
/// appear in `description`.
///
/// `@unchecked Sendable`: the pointer is owned by this object alone and freed only in `deinit`;
/// the bytes are written only during `init` (and by `withUnsafeMutableBytes`, which callers use
/// before sharing the object), so concurrent readers see immutable memory.
public final class SecretBytes: @unchecked Sendable, CustomStringConvertible {
    private let base: UnsafeMutableRawPointer
    private let mappedSize: Int
    /// Number of secret bytes (may be 0).
    public let count: Int
    /// Whether `mlock` succeeded (false where RLIMIT_MEMLOCK forbids it).
    public let isLocked: Bool

    /// A zero-filled secret of `count` bytes.
    public init(count: Int) {
        precondition(count >= 0)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let size = max(page, (count + page - 1) / page * page)
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              p != MAP_FAILED else {
            fatalError("SecretBytes: mmap of \(size) bytes failed (errno \(errno))")
        }
        base = p
        mappedSize = size
        self.count = count
        #if os(Linux)
        _ = madvise(p, size, MADV_DONTDUMP)
        #endif
        isLocked = mlock(p, size) == 0
    }

    /// A secret holding a copy of `bytes`. The caller should wipe its own copy.
    public convenience init(copying bytes: some Collection<UInt8>) {
        self.init(count: bytes.count)
        var i = 0
        let p = base.assumingMemoryBound(to: UInt8.self)
        for b in bytes { p[i] = b; i += 1 }
    }

    /// `count` bytes from the system CSPRNG.
    public static func random(count: Int) -> SecretBytes {
        let s = SecretBytes(count: count)
        var rng = SystemRandomNumberGenerator()
        let p = s.base.assumingMemoryBound(to: UInt8.self)
        var i = 0
        while i < count {
            var word = rng.next()
            Swift.withUnsafeBytes(of: &word) { w in
                for b in w where i < count { p[i] = b; i += 1 }
            }
        }
        return s
    }

    deinit {
        memset_s_portable(base, mappedSize)
        munlock(base, mappedSize)
        munmap(base, mappedSize)
    }

    /// Calls `body` with the secret bytes. Do not let the pointer escape.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Calls `body` with writable secret bytes; for filling a secret before it is shared.
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: base, count: count))
    }

    /// Overwrites the bytes with zeros now (also done in `deinit`).
    public func wipe() { memset_s_portable(base, mappedSize) }

    public var description: String { "SecretBytes(\(count) bytes)" }
}

/// Zeroes `count` bytes at `p` in a way the optimizer cannot drop (`explicit_bzero(3)`).
@inline(never)
func memset_s_portable(_ p: UnsafeMutableRawPointer, _ count: Int) {
    #if os(Linux)
    explicit_bzero(p, count)
    #else
    _ = memset_s(p, count, 0, count)
    #endif
}
