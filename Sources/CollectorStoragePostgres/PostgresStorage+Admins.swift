import CollectorStorage
import CustosBase
import Foundation
import NIOCore
import PostgresNIO

/// Dashboard accounts and sessions (`admin_accounts`, `admin_sessions`; migration 5 `v5-admins`), the
/// failed logins of names that are not accounts and the last accepted TOTP step (migration 6
/// `v6-admin-hardening`).
extension PostgresStorage {
    public func addAdmin(_ account: AdminAccount) async throws(StorageError) {
        try StorageCheck.account(account, context: location)
        let a = account
        let inserted = try await inTransaction("add admin \(a.name)") { conn in
            guard try await conn.query("""
                INSERT INTO admin_accounts (name, role, password_hash, totp_secret, created_at, failed_logins, locked_until,
                                            totp_last_step)
                VALUES (\(a.name.rawValue), \(a.role.rawValue), \(a.passwordHash), \(a.totpSecret),
                        \(timestampMs: a.createdAtMs), \(a.failedLogins), \(a.lockedUntilMs.map { Self.timestamp($0) }),
                        \(a.totpLastStep))
                ON CONFLICT (name) DO NOTHING RETURNING 1
                """, logger: Self.quiet).collect().count > 0 else { return false }
            // The name's failures from before it was an account no longer count.
            try await conn.query("DELETE FROM admin_login_failures WHERE name = \(a.name.rawValue)", logger: Self.quiet)
            return true
        }
        guard inserted else { throw StorageError(.alreadyExists, "\(location): admin \(SafeText.quoted(a.name.rawValue)) exists already") }
    }

    /// A Unix-ms time as a `Date` bound value (for an optional `timestamptz`).
    static func timestamp(_ ms: Int64) -> Date { Date(timeIntervalSince1970: Double(ms) / 1000) }

    static let accountColumns = """
        name, role, password_hash, totp_secret, \(SQLTime.ms("created_at")), failed_logins, \(SQLTime.ms("locked_until")),
        totp_last_step
        """

    static func account(_ row: (String, String, String, String?, Int64, Int, Int64?, Int64?), location: String) throws(StorageError) -> AdminAccount {
        guard let name = try? AdminName(row.0) else {
            throw StorageError(.corrupt, "\(location): admin_accounts holds name \(SafeText.quoted(row.0)), not a valid admin name")
        }
        guard let role = AdminRole(name: row.1) else {
            throw StorageError(.corrupt, "\(location): admin_accounts row \(SafeText.quoted(row.0)) holds role \(SafeText.quoted(row.1))")
        }
        return AdminAccount(name: name, role: role, passwordHash: row.2, totpSecret: row.3, createdAtMs: row.4,
                            failedLogins: row.5, lockedUntilMs: row.6, totpLastStep: row.7)
    }

    public func admin(_ name: AdminName) async throws(StorageError) -> AdminAccount? {
        try await accounts("read admin \(name)", name: name).first
    }

    public func admins() async throws(StorageError) -> [AdminAccount] {
        try await accounts("list admins", name: nil)
    }

    private func accounts(_ what: String, name: AdminName?) async throws(StorageError) -> [AdminAccount] {
        let location = self.location
        return try await withClient(what) { client in
            let rows = if let name {
                try await client.query("SELECT \(unescaped: Self.accountColumns) FROM admin_accounts WHERE name = \(name.rawValue)",
                                       logger: Self.quiet)
            } else {
                try await client.query("SELECT \(unescaped: Self.accountColumns) FROM admin_accounts ORDER BY name", logger: Self.quiet)
            }
            var out: [AdminAccount] = []
            for try await row in rows.decode((String, String, String, String?, Int64, Int, Int64?, Int64?).self) {
                out.append(try Self.account(row, location: location))
            }
            return out
        }
    }

    public func removeAdmin(_ name: AdminName) async throws(StorageError) {
        // The sessions go with the account (ON DELETE CASCADE).
        let deleted = try await withClient("remove admin \(name)") { client in
            try await client.query("DELETE FROM admin_accounts WHERE name = \(name.rawValue) RETURNING 1", logger: Self.quiet)
                .collect().count > 0
        }
        guard deleted else { throw StorageError(.notFound, "\(location): no admin \(SafeText.quoted(name.rawValue))") }
    }

    public func setAdminRole(_ name: AdminName, role: AdminRole) async throws(StorageError) {
        let updated = try await withClient("set the role of admin \(name)") { client in
            try await client.query("UPDATE admin_accounts SET role = \(role.rawValue) WHERE name = \(name.rawValue) RETURNING 1",
                                   logger: Self.quiet).collect().count > 0
        }
        guard updated else { throw StorageError(.notFound, "\(location): no admin \(SafeText.quoted(name.rawValue))") }
    }

    public func setAdminPassword(_ name: AdminName, passwordHash: String, totpSecret: String??) async throws(StorageError) {
        try StorageCheck.text(passwordHash, "password hash of \(name)", context: location)
        if case .some(.some(let s)) = totpSecret { try StorageCheck.text(s, "TOTP secret of \(name)", context: location) }
        let updated = try await inTransaction("set the password of admin \(name)") { conn in
            guard try await conn.query("""
                UPDATE admin_accounts SET password_hash = \(passwordHash), failed_logins = 0, locked_until = NULL
                WHERE name = \(name.rawValue) RETURNING 1
                """, logger: Self.quiet).collect().count > 0 else { return false }
            if case .some(let secret) = totpSecret {
                try await conn.query("UPDATE admin_accounts SET totp_secret = \(secret), totp_last_step = NULL WHERE name = \(name.rawValue)",
                                     logger: Self.quiet)
            }
            try await conn.query("DELETE FROM admin_sessions WHERE admin = \(name.rawValue)", logger: Self.quiet)
            return true
        }
        guard updated else { throw StorageError(.notFound, "\(location): no admin \(SafeText.quoted(name.rawValue))") }
    }

    public func recordFailedLogin(_ name: AdminName, nowMs: Int64, maxFailures: Int, lockMs: Int64) async throws(StorageError) -> LoginFailure {
        try StorageCheck.time(nowMs, "login time", context: location)
        let rule = FailureCount(nowMs: nowMs, maxFailures: maxFailures, lockMs: lockMs)
        let cap = AdminLoginLimits.maxUnknownNames
        let location = self.location
        let counted = try await inTransaction("count a failed login of \(name)") { conn -> (Int, Int64?)? in
            // Right-hand sides see the row as it was (SQL UPDATE semantics): one statement, so
            // failures on several instances at once all count.
            var account: (Int, Int64?)?
            for try await row in try await conn.query("""
                UPDATE admin_accounts SET \(failureCount: rule, table: "admin_accounts")
                WHERE name = \(name.rawValue)
                RETURNING failed_logins, \(unescaped: SQLTime.ms("locked_until"))
                """, logger: Self.quiet).decode((Int, Int64?).self) { account = row }
            if let account { return account }
            // Not an account: the same count in admin_login_failures (the upsert's DO UPDATE
            // sees the stored row as `f`).
            var out: (Int, Int64?)?
            for try await row in try await conn.query("""
                INSERT INTO admin_login_failures AS f (name, failed_logins, locked_until, last_failure)
                VALUES (\(name.rawValue), 1, CASE WHEN 1 >= \(maxFailures) THEN \(timestampMs: rule.untilMs) END, \(timestampMs: nowMs))
                ON CONFLICT (name) DO UPDATE SET \(failureCount: rule, table: "f"), last_failure = \(timestampMs: nowMs)
                RETURNING failed_logins, \(unescaped: SQLTime.ms("locked_until"))
                """, logger: Self.quiet).decode((Int, Int64?).self) { out = row }
            // Bounded: past the cap, the unlocked names whose last failure is oldest go.
            try await conn.query("""
                DELETE FROM admin_login_failures WHERE name IN (
                    SELECT name FROM admin_login_failures
                    WHERE locked_until IS NULL OR locked_until <= \(timestampMs: nowMs)
                    ORDER BY last_failure
                    LIMIT GREATEST(0, (SELECT count(*) FROM admin_login_failures) - \(cap)))
                """, logger: Self.quiet)
            return out
        }
        guard let counted else { throw StorageError(.failed, "\(location): counting a failed login of \(name) returned no row") }
        return LoginFailure(failures: counted.0, lockedUntilMs: counted.1.flatMap { $0 > nowMs ? $0 : nil })
    }

    public func loginLockedUntil(_ name: AdminName, nowMs: Int64) async throws(StorageError) -> Int64? {
        try StorageCheck.time(nowMs, "login time", context: location)
        let until = try await withClient("read the login lock of \(name)") { client -> Int64? in
            // An account's own lock if it is one, else the name's.
            var out: Int64?
            for try await (locked) in try await client.query("""
                SELECT CASE WHEN EXISTS (SELECT 1 FROM admin_accounts WHERE name = \(name.rawValue))
                            THEN (SELECT \(unescaped: SQLTime.ms("locked_until")) FROM admin_accounts WHERE name = \(name.rawValue))
                            ELSE (SELECT \(unescaped: SQLTime.ms("locked_until")) FROM admin_login_failures WHERE name = \(name.rawValue))
                       END
                """, logger: Self.quiet).decode((Int64?).self) { out = locked }
            return out
        }
        return until.flatMap { $0 > nowMs ? $0 : nil }
    }

    public func recordSuccessfulLogin(_ name: AdminName) async throws(StorageError) {
        _ = try await withClient("clear failed logins of admin \(name)") { client in
            try await client.query("""
                UPDATE admin_accounts SET failed_logins = 0, locked_until = NULL
                WHERE name = \(name.rawValue) AND (failed_logins <> 0 OR locked_until IS NOT NULL)
                """, logger: Self.quiet).collect().count
        }
    }

    public func acceptTOTPStep(_ name: AdminName, step: Int64) async throws(StorageError) -> Bool {
        try await withClient("record the TOTP step of admin \(name)") { client in
            try await client.query("""
                UPDATE admin_accounts SET totp_last_step = \(step)
                WHERE name = \(name.rawValue) AND (totp_last_step IS NULL OR totp_last_step < \(step))
                RETURNING 1
                """, logger: Self.quiet).collect().count == 1
        }
    }

    public func createSession(admin: AdminName, tokenHash: Data, nowMs: Int64) async throws(StorageError) {
        try StorageCheck.tokenHash(tokenHash, context: location)
        try StorageCheck.time(nowMs, "session time", context: location)
        let hash = ByteBuffer(bytes: tokenHash)
        let inserted = try await withClient("create a session of admin \(admin)") { client in
            try await client.query("""
                INSERT INTO admin_sessions (token_hash, admin, created_at, last_seen)
                SELECT \(hash), name, \(timestampMs: nowMs), \(timestampMs: nowMs) FROM admin_accounts WHERE name = \(admin.rawValue)
                RETURNING 1
                """, logger: Self.quiet).collect().count > 0
        }
        guard inserted else { throw StorageError(.notFound, "\(location): no admin \(SafeText.quoted(admin.rawValue))") }
    }

    public func session(tokenHash: Data, nowMs: Int64, limits: SessionLimits) async throws(StorageError) -> AdminSession? {
        guard tokenHash.count == 32 else { return nil }
        try StorageCheck.time(nowMs, "session time", context: location)
        let hash = ByteBuffer(bytes: tokenHash)
        let location = self.location
        let found: (String, String, Int64, Int64)? = try await withClient("look up a session") { client in
            let rows = try await client.query("""
                SELECT s.admin, a.role, \(unescaped: SQLTime.ms("s.created_at")), \(unescaped: SQLTime.ms("s.last_seen"))
                FROM admin_sessions s JOIN admin_accounts a ON a.name = s.admin
                WHERE s.token_hash = \(hash) AND s.last_seen > \(timestampMs: nowMs - limits.idleMs)
                  AND s.created_at > \(timestampMs: nowMs - limits.maxMs)
                """, logger: Self.quiet)
            var out: (String, String, Int64, Int64)?
            for try await row in rows.decode((String, String, Int64, Int64).self) { out = row }
            return out
        }
        guard let found else { return nil }
        guard let name = try? AdminName(found.0), let role = AdminRole(name: found.1) else {
            throw StorageError(.corrupt, "\(location): admin_sessions row of \(SafeText.quoted(found.0)) names an account that does not parse")
        }
        var session = AdminSession(admin: name, role: role, createdAtMs: found.2, lastSeenMs: found.3)
        if nowMs - found.3 >= limits.touchMs {
            _ = try await withClient("refresh a session") { client in
                try await client.query("""
                    UPDATE admin_sessions SET last_seen = \(timestampMs: nowMs)
                    WHERE token_hash = \(hash) AND last_seen < \(timestampMs: nowMs)
                    """, logger: Self.quiet).collect().count
            }
            session.lastSeenMs = nowMs
        }
        return session
    }

    public func deleteSession(tokenHash: Data) async throws(StorageError) {
        let hash = ByteBuffer(bytes: tokenHash)
        _ = try await withClient("delete a session") { client in
            try await client.query("DELETE FROM admin_sessions WHERE token_hash = \(hash)", logger: Self.quiet).collect().count
        }
    }

    public func deleteExpiredSessions(nowMs: Int64, limits: SessionLimits) async throws(StorageError) -> Int {
        try StorageCheck.time(nowMs, "session time", context: location)
        return try await withClient("delete expired sessions") { client in
            try await client.query("""
                DELETE FROM admin_sessions
                WHERE last_seen <= \(timestampMs: nowMs - limits.idleMs) OR created_at <= \(timestampMs: nowMs - limits.maxMs)
                RETURNING 1
                """, logger: Self.quiet).collect().count
        }
    }
}

/// The failed-login rule's values (``PostgresStorage/recordFailedLogin(_:nowMs:maxFailures:lockMs:)``).
struct FailureCount {
    let nowMs: Int64
    let maxFailures: Int
    let lockMs: Int64
    var untilMs: Int64 { nowMs + lockMs }
}

extension PostgresQuery.StringInterpolation {
    /// The new `failed_logins` and `locked_until` of a failed login, as a SET list over the
    /// row's old values (`table`: the name or alias they are read through): the one rule for
    /// accounts and other names alike. A failure after a lock ended counts from 1; the count
    /// reaching `maxFailures` locks until now + `lockMs`.
    mutating func appendInterpolation(failureCount rule: FailureCount, table: String) {
        appendLiteral("failed_logins = CASE WHEN \(table).locked_until IS NOT NULL AND \(table).locked_until <= ")
        appendInterpolation(timestampMs: rule.nowMs)
        appendLiteral(" THEN 1 ELSE \(table).failed_logins + 1 END, locked_until = CASE WHEN \(table).locked_until IS NOT NULL AND \(table).locked_until <= ")
        appendInterpolation(timestampMs: rule.nowMs)
        appendLiteral(" THEN (CASE WHEN 1 >= ")
        appendInterpolation(rule.maxFailures)
        appendLiteral(" THEN ")
        appendInterpolation(timestampMs: rule.untilMs)
        appendLiteral(" END) WHEN \(table).failed_logins + 1 >= ")
        appendInterpolation(rule.maxFailures)
        appendLiteral(" THEN ")
        appendInterpolation(timestampMs: rule.untilMs)
        appendLiteral(" ELSE \(table).locked_until END")
    }
}
