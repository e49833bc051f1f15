#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The one rule for a file holding a secret (a PostgreSQL password, an admin's password): like
/// libpq's `~/.pgpass`, others (not the owner or its group) may neither read nor write it
/// (`chmod o-rwx`); group access is allowed so a service's group can read a root-owned file.
public enum SecretFileMode {
    /// Why a file of mode `mode` (`st_mode`) may not hold a secret, nil when it may:
    /// `others may read or write it (mode 644); run chmod o-rwx 'FILE'`, `shown` being the file
    /// as messages name it (escaped by the caller, ``SafeText/quoted(_:)``).
    public static func problem(mode: mode_t, shown: String) -> String? {
        guard mode & 0o007 != 0 else { return nil }
        return "others may read or write it (mode \(String(mode & 0o777, radix: 8))); run chmod o-rwx \(shown)"
    }
}
