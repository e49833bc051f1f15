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
