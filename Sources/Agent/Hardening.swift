import CSysShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Process hardening applied once at agent start, before any key exists:
/// - `prctl(PR_SET_DUMPABLE, 0)` — no core dumps and no ptrace by non-root (`man 2 prctl`);
/// - `RLIMIT_CORE` 0 (`man 2 setrlimit`);
/// - `umask(077)` so every file the agent creates (spool, recordings) is private.
/// Key memory itself is locked by `Envelope` (`mlock`, where RLIMIT_MEMLOCK allows).
public enum Hardening {
    /// What was applied, for `--check-config` and the start-up log line.
    public struct Report: Sendable, CustomStringConvertible {
        public var dumpableOff: Bool
        public var coreLimitZero: Bool
        public var umask: mode_t
        public var description: String {
            "dumpable=\(dumpableOff ? "off" : "ON (prctl failed)") core-limit=\(coreLimitZero ? "0" : "unchanged") umask=\(String(umask, radix: 8))"
        }
    }

    /// Applies the measures above; never throws (a failure is reported, not fatal).
    @discardableResult
    public static func apply() -> Report {
        let dump = custos_set_dumpable(0) == 0 && custos_get_dumpable() == 0
        var lim = rlimit(rlim_cur: 0, rlim_max: 0)
        let core = setrlimit(Int32(RLIMIT_CORE.rawValue), &lim) == 0
        _ = umask(0o077)
        return Report(dumpableOff: dump, coreLimitZero: core, umask: 0o077)
    }
}

/// Keeps the agent's resident set small (goal: < 40 MB at 1920×1080; `Benchmarks/agent.sh`).
///
/// A changed 1920×1080 frame passes through buffers of 0.5–2 MiB (PNG output, payload,
/// ciphertext). glibc's dynamic mmap threshold (mallopt(3)) rises to the size of the first
/// such buffer freed, after which they come from the thread arenas and stay resident (about
/// 5–6 MiB per capturing thread, measured with /proc/PID/smaps). Fixing the threshold at
/// 128 KiB maps them fresh and unmaps them on free; `trim()` after a capture round returns
/// what the arenas still hold.
public enum MemoryPolicy {
    /// Applies the malloc settings; call once at start, before the capture threads run.
    /// - Returns: whether glibc accepted them.
    @discardableResult
    public static func apply() -> Bool {
        custos_malloc_tune(128 * 1024, 256 * 1024) == 1
    }

    /// Returns free heap memory to the kernel (`malloc_trim(3)`); cheap at one frame per seconds.
    public static func trim() {
        _ = custos_malloc_trim()
    }
}
