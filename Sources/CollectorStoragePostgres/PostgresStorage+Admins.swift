import CollectorStorage
import CustosBase
import Foundation
import NIOCore
import PostgresNIO

/// Dashboard accounts and sessions (`admin_accounts`, `admin_sessions`; migration 5 `v5-admins`).
extension PostgresStorage {
    public func addAdmin(_ account: AdminAccount) async throws(StorageError) {
        try StorageCheck.account(account, context: location)
        let a = account
        let inserted = try await withClient("add admin \(a.name)") { client in
            try await client.query("""
                INSERT INTO admin_accounts (name, role, password_hash, totp_secret, created_at, failed_logins, locked_until)
                VALUES (\(a.name.rawValue), \(a.role.rawValue), \(a.passwordHash), \(a.totpSecret),
                        \(timestampMs: a.createdAtMs), \(a.failedLogins), \(a.lockedUntilMs.map { Self.timestamp($0) }))
                ON CONFLICT (name) DO NOTHING RETURNING 1
                """, logger: Self.quiet).collect().count > 0
        }
        guard inserted else { throw StorageError(.alreadyExists, "\(location): admin \(SafeText.quoted(a.name.rawValue)) exists already") }
    }

    /// A Unix-ms time as a `Date` bound value (for an optional `timestamptz`).
    static func timestamp(_ ms: Int64) -> Date { Date(timeIntervalSince1970: Double(ms) / 1000) }

    static let accountColumns = """
        name, role, password_hash, totp_secret, \(SQLTime.ms("created_at")), failed_logins, \(SQLTime.ms("locked_until"))
        """

    static func account(_ row: (String, String, String, String?, Int64, Int, Int64?), location: String) throws(StorageError) -> AdminAccount {
        guard let name = try? AdminName(row.0) else {
            throw StorageError(.corrupt, "\(location): admin_accounts holds name \(SafeText.quoted(row.0)), not a valid admin name")
        }
        guard let role = AdminRole(name: row.1) else {
            throw StorageError(.corrupt, "\(location): admin_accounts row \(SafeText.quoted(row.0)) holds role \(SafeText.quoted(row.1))")
        }
        return AdminAccount(name: name, role: role, passwordHash: row.2, totpSecret: row.3, createdAtMs: row.4,
                            failedLogins: row.5, lockedUntilMs: row.6)
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
            for try await row in rows.decode((String, String, String, String?, Int64, Int, Int64?).self) {
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
                try await conn.query("UPDATE admin_accounts SET totp_secret = \(secret) WHERE name = \(name.rawValue)", logger: Self.quiet)
            }
            try await conn.query("DELETE FROM admin_sessions WHERE admin = \(name.rawValue)", logger: Self.quiet)
            return true
        }
        guard updated else { throw StorageError(.notFound, "\(location): no admin \(SafeText.quoted(name.rawValue))") }
    }

    public func recordFailedLogin(_ name: AdminName, nowMs: Int64, maxFailures: Int, lockMs: Int64) async throws(StorageError) -> LoginFailure? {
        try StorageCheck.time(nowMs, "login time", context: location)
        let until = nowMs + lockMs
        return try await withClient("count a failed login of admin \(name)") { client in
            // Right-hand sides see the row as it was (SQL UPDATE semantics): one statement, so
            // failures on several instances at once all count.
            let rows = try await client.query("""
                UPDATE admin_accounts SET
                    failed_logins = CASE WHEN locked_until IS NOT NULL AND locked_until <= \(timestampMs: nowMs) THEN 1
                                         ELSE failed_logins + 1 END,
                    locked_until = CASE
                        WHEN locked_until IS NOT NULL AND locked_until <= \(timestampMs: nowMs)
                            THEN (CASE WHEN 1 >= \(maxFailures) THEN \(timestampMs: until) END)
                        WHEN failed_logins + 1 >= \(maxFailures) THEN \(timestampMs: until)
                        ELSE locked_until END
                WHERE name = \(name.rawValue)
                RETURNING failed_logins, \(unescaped: SQLTime.ms("locked_until"))
                """, logger: Self.quiet)
            var out: LoginFailure?
            for try await (failures, locked) in rows.decode((Int, Int64?).self) {
                out = LoginFailure(failures: failures, lockedUntilMs: locked.flatMap { $0 > nowMs ? $0 : nil })
            }
            return out
        }
    }

    public func recordSuccessfulLogin(_ name: AdminName) async throws(StorageError) {
        _ = try await withClient("clear failed logins of admin \(name)") { client in
            try await client.query("""
                UPDATE admin_accounts SET failed_logins = 0, locked_until = NULL
                WHERE name = \(name.rawValue) AND (failed_logins <> 0 OR locked_until IS NOT NULL)
                """, logger: Self.quiet).collect().count
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
