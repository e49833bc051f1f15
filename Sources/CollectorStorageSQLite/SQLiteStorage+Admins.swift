import CollectorStorage
import CustosBase
import Foundation
import GRDB

/// Dashboard accounts and sessions (`admin_accounts`, `admin_sessions`; migration `v6-admins`), the failed logins
/// of names that are not accounts and the last accepted TOTP step (`v7-admin-hardening`).
extension SQLiteStorage {
    public func addAdmin(_ account: AdminAccount) async throws(StorageError) {
        try StorageCheck.account(account, context: shownPath)
        let a = account
        try await write("add admin \(a.name)") { db in
            if try Bool.fetchOne(db, sql: "SELECT 1 FROM admin_accounts WHERE name = ?", arguments: [a.name.rawValue]) != nil {
                throw StorageError(.alreadyExists, "admin \(SafeText.quoted(a.name.rawValue)) exists already")
            }
            try db.execute(sql: """
                INSERT INTO admin_accounts (name, role, password_hash, totp_secret, created_at, failed_logins, locked_until,
                                            totp_last_step)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [a.name.rawValue, a.role.rawValue, a.passwordHash, a.totpSecret, a.createdAtMs,
                                 a.failedLogins, a.lockedUntilMs, a.totpLastStep])
            // The name's failures from before it was an account no longer count.
            try db.execute(sql: "DELETE FROM admin_login_failures WHERE name = ?", arguments: [a.name.rawValue])
        }
    }

    static let accountColumns = "name, role, password_hash, totp_secret, created_at, failed_logins, locked_until, totp_last_step"

    static func account(_ row: Row, database: String) throws(StorageError) -> AdminAccount {
        let r = RowReader(row, database: database, table: "admin_accounts", key: "name")
        guard let name = try? AdminName(try r.text("name")) else { throw r.corrupt("name", "an admin name (1-64 of A-Z a-z 0-9 . _ - @)") }
        guard let role = AdminRole(name: try r.text("role")) else { throw r.corrupt("role", "viewer, decryptor or auditor") }
        let locked: DatabaseValue = row["locked_until"], step: DatabaseValue = row["totp_last_step"]
        return AdminAccount(name: name, role: role, passwordHash: try r.text("password_hash"),
                            totpSecret: try r.optionalText("totp_secret"), createdAtMs: try r.int("created_at"),
                            failedLogins: Int(try r.int("failed_logins")),
                            lockedUntilMs: locked.isNull ? nil : try r.int("locked_until"),
                            totpLastStep: step.isNull ? nil : try r.int("totp_last_step"))
    }

    public func admin(_ name: AdminName) async throws(StorageError) -> AdminAccount? {
        let database = shownPath
        return try await read("read admin \(name)") { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.accountColumns) FROM admin_accounts WHERE name = ?",
                             arguments: [name.rawValue]).map { row throws(StorageError) in try Self.account(row, database: database) }
        }
    }

    public func admins() async throws(StorageError) -> [AdminAccount] {
        let database = shownPath
        return try await read("list admins") { db in
            try Row.fetchAll(db, sql: "SELECT \(Self.accountColumns) FROM admin_accounts ORDER BY name").map { row throws(StorageError) in
                try Self.account(row, database: database)
            }
        }
    }

    public func removeAdmin(_ name: AdminName) async throws(StorageError) {
        try await write("remove admin \(name)") { db in
            try db.execute(sql: "DELETE FROM admin_sessions WHERE admin = ?", arguments: [name.rawValue])
            try db.execute(sql: "DELETE FROM admin_accounts WHERE name = ?", arguments: [name.rawValue])
            if db.changesCount == 0 { throw StorageError(.notFound, "no admin \(SafeText.quoted(name.rawValue))") }
        }
    }

    public func setAdminRole(_ name: AdminName, role: AdminRole) async throws(StorageError) {
        try await write("set the role of admin \(name)") { db in
            try db.execute(sql: "UPDATE admin_accounts SET role = ? WHERE name = ?", arguments: [role.rawValue, name.rawValue])
            if db.changesCount == 0 { throw StorageError(.notFound, "no admin \(SafeText.quoted(name.rawValue))") }
        }
    }

    public func setAdminPassword(_ name: AdminName, passwordHash: String, totpSecret: String??) async throws(StorageError) {
        try StorageCheck.text(passwordHash, "password hash of \(name)", context: shownPath)
        if case .some(.some(let s)) = totpSecret { try StorageCheck.text(s, "TOTP secret of \(name)", context: shownPath) }
        try await write("set the password of admin \(name)") { db in
            try db.execute(sql: "UPDATE admin_accounts SET password_hash = ?, failed_logins = 0, locked_until = NULL WHERE name = ?",
                           arguments: [passwordHash, name.rawValue])
            if db.changesCount == 0 { throw StorageError(.notFound, "no admin \(SafeText.quoted(name.rawValue))") }
            if case .some(let secret) = totpSecret {
                try db.execute(sql: "UPDATE admin_accounts SET totp_secret = ?, totp_last_step = NULL WHERE name = ?",
                               arguments: [secret, name.rawValue])
            }
            try db.execute(sql: "DELETE FROM admin_sessions WHERE admin = ?", arguments: [name.rawValue])
        }
    }

    /// The new `failed_logins` and `locked_until` of a failed login, as SQL over the row's old
    /// values (`:now`, `:max`, `:lock` bound): the one rule for accounts and other names alike.
    static let failureCount = """
        failed_logins = CASE WHEN locked_until IS NOT NULL AND locked_until <= :now THEN 1 ELSE failed_logins + 1 END,
        locked_until = CASE
            WHEN locked_until IS NOT NULL AND locked_until <= :now THEN (CASE WHEN 1 >= :max THEN :now + :lock END)
            WHEN failed_logins + 1 >= :max THEN :now + :lock
            ELSE locked_until END
        """

    public func recordFailedLogin(_ name: AdminName, nowMs: Int64, maxFailures: Int, lockMs: Int64) async throws(StorageError) -> LoginFailure {
        try StorageCheck.time(nowMs, "login time", context: shownPath)
        let database = shownPath
        let arguments: StatementArguments = ["now": nowMs, "max": maxFailures, "lock": lockMs, "name": name.rawValue,
                                             "cap": AdminLoginLimits.maxUnknownNames]
        return try await write("count a failed login of \(name)") { db in
            // Right-hand sides see the row as it was (SQL UPDATE semantics): one statement.
            var table = "admin_accounts"
            var row = try Row.fetchOne(db, sql: """
                UPDATE admin_accounts SET \(Self.failureCount) WHERE name = :name RETURNING failed_logins, locked_until
                """, arguments: arguments)
            if row == nil {
                // Not an account: the same count in admin_login_failures (an upsert's DO UPDATE
                // sees the stored row's values too, https://www.sqlite.org/lang_upsert.html).
                table = "admin_login_failures"
                row = try Row.fetchOne(db, sql: """
                    INSERT INTO admin_login_failures (name, failed_logins, locked_until, last_failure)
                    VALUES (:name, 1, CASE WHEN 1 >= :max THEN :now + :lock END, :now)
                    ON CONFLICT (name) DO UPDATE SET \(Self.failureCount), last_failure = :now
                    RETURNING failed_logins, locked_until
                    """, arguments: arguments)
                // Bounded: past the cap, the unlocked names whose last failure is oldest go.
                // (`max(0, …)`: a negative LIMIT is no limit in SQLite.)
                try db.execute(sql: """
                    DELETE FROM admin_login_failures WHERE name IN (
                        SELECT name FROM admin_login_failures WHERE locked_until IS NULL OR locked_until <= :now
                        ORDER BY last_failure LIMIT max(0, (SELECT count(*) FROM admin_login_failures) - :cap))
                    """, arguments: arguments)
            }
            guard let row else { throw StorageError(.failed, "\(database): counting a failed login of \(name) returned no row") }
            let r = RowReader(row, database: database, table: table, key: "failed_logins")
            let locked: DatabaseValue = row["locked_until"]
            let until = locked.isNull ? nil : try r.int("locked_until")
            return LoginFailure(failures: Int(try r.int("failed_logins")), lockedUntilMs: until.flatMap { $0 > nowMs ? $0 : nil })
        }
    }

    public func loginLockedUntil(_ name: AdminName, nowMs: Int64) async throws(StorageError) -> Int64? {
        try StorageCheck.time(nowMs, "login time", context: shownPath)
        return try await read("read the login lock of \(name)") { db in
            // An account's own lock if it is one, else the name's.
            let until = try Int64?.fetchOne(db, sql: """
                SELECT CASE WHEN EXISTS (SELECT 1 FROM admin_accounts WHERE name = :name)
                            THEN (SELECT locked_until FROM admin_accounts WHERE name = :name)
                            ELSE (SELECT locked_until FROM admin_login_failures WHERE name = :name) END
                """, arguments: ["name": name.rawValue]) ?? nil
            return until.flatMap { $0 > nowMs ? $0 : nil }
        }
    }

    public func recordSuccessfulLogin(_ name: AdminName) async throws(StorageError) {
        try await write("clear failed logins of admin \(name)") { db in
            try db.execute(sql: """
                UPDATE admin_accounts SET failed_logins = 0, locked_until = NULL
                WHERE name = ? AND (failed_logins <> 0 OR locked_until IS NOT NULL)
                """, arguments: [name.rawValue])
        }
    }

    public func acceptTOTPStep(_ name: AdminName, step: Int64) async throws(StorageError) -> Bool {
        try await write("record the TOTP step of admin \(name)") { db in
            try db.execute(sql: """
                UPDATE admin_accounts SET totp_last_step = ? WHERE name = ? AND (totp_last_step IS NULL OR totp_last_step < ?)
                """, arguments: [step, name.rawValue, step])
            return db.changesCount == 1
        }
    }

    public func createSession(admin: AdminName, tokenHash: Data, nowMs: Int64) async throws(StorageError) {
        try StorageCheck.tokenHash(tokenHash, context: shownPath)
        try StorageCheck.time(nowMs, "session time", context: shownPath)
        try await write("create a session of admin \(admin)") { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM admin_accounts WHERE name = ?", arguments: [admin.rawValue]) != nil else {
                throw StorageError(.notFound, "no admin \(SafeText.quoted(admin.rawValue))")
            }
            try db.execute(sql: "INSERT INTO admin_sessions (token_hash, admin, created_at, last_seen) VALUES (?, ?, ?, ?)",
                           arguments: [tokenHash, admin.rawValue, nowMs, nowMs])
        }
    }

    public func session(tokenHash: Data, nowMs: Int64, limits: SessionLimits) async throws(StorageError) -> AdminSession? {
        guard tokenHash.count == 32 else { return nil }
        try StorageCheck.time(nowMs, "session time", context: shownPath)
        let database = shownPath
        let found: (AdminSession, Bool)? = try await read("look up a session") { db in
            guard let row = try Row.fetchOne(db, sql: """
                SELECT s.admin, a.role, s.created_at, s.last_seen FROM admin_sessions s JOIN admin_accounts a ON a.name = s.admin
                WHERE s.token_hash = ? AND s.last_seen > ? AND s.created_at > ?
                """, arguments: [tokenHash, nowMs - limits.idleMs, nowMs - limits.maxMs]) else { return nil }
            let r = RowReader(row, database: database, table: "admin_sessions", key: "admin")
            guard let name = try? AdminName(try r.text("admin")) else { throw r.corrupt("admin", "an admin name") }
            guard let role = AdminRole(name: try r.text("role")) else { throw r.corrupt("role", "viewer, decryptor or auditor") }
            let lastSeen = try r.int("last_seen")
            return (AdminSession(admin: name, role: role, createdAtMs: try r.int("created_at"), lastSeenMs: lastSeen),
                    nowMs - lastSeen >= limits.touchMs)
        }
        guard let found else { return nil }
        var session = found.0
        if found.1 {
            try await write("refresh a session") { db in
                try db.execute(sql: "UPDATE admin_sessions SET last_seen = ? WHERE token_hash = ? AND last_seen < ?",
                               arguments: [nowMs, tokenHash, nowMs])
            }
            session.lastSeenMs = nowMs
        }
        return session
    }

    public func deleteSession(tokenHash: Data) async throws(StorageError) {
        try await write("delete a session") { db in
            try db.execute(sql: "DELETE FROM admin_sessions WHERE token_hash = ?", arguments: [tokenHash])
        }
    }

    public func deleteExpiredSessions(nowMs: Int64, limits: SessionLimits) async throws(StorageError) -> Int {
        try StorageCheck.time(nowMs, "session time", context: shownPath)
        return try await write("delete expired sessions") { db in
            try db.execute(sql: "DELETE FROM admin_sessions WHERE last_seen <= ? OR created_at <= ?",
                           arguments: [nowMs - limits.idleMs, nowMs - limits.maxMs])
            return db.changesCount
        }
    }
}
