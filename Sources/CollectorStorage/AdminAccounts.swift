import CustosBase
import Foundation

/// What a dashboard account may do (docs/API.md "Admin API"). Roles nest: a decryptor and an
/// auditor can do everything a viewer can, plus one thing each. ``allows(_:)`` is the one place
/// the collector's router consults.
public enum AdminRole: String, Sendable, CaseIterable, Codable, CustomStringConvertible {
    /// Listings and metadata; opening items sealed to the collector's own KEK.
    case viewer
    /// A viewer who may also fetch sealed blobs and DEK records (to decrypt in the browser).
    case decryptor
    /// A viewer who may also read the audit log.
    case auditor

    /// What a route needs.
    public enum Permission: Sendable {
        /// Agents, captures, session, collector-sealed items, client reports.
        case view
        /// `POST /api/v1/sealed`.
        case fetchSealed
        /// `GET /api/v1/audit`.
        case readAudit
    }

    public func allows(_ permission: Permission) -> Bool {
        switch permission {
        case .view: true
        case .fetchSealed: self == .decryptor
        case .readAudit: self == .auditor
        }
    }

    /// - Returns: nil for anything but `viewer`, `decryptor`, `auditor`.
    public init?(name: String) { self.init(rawValue: name) }

    public var description: String { rawValue }
}

/// One dashboard account as stored: the bcrypt hash of its password (never the password), its
/// TOTP secret if it has one, and its failed-login state.
public struct AdminAccount: Sendable, Equatable {
    public var name: AdminName
    public var role: AdminRole
    /// bcrypt (`$2b$12$…`, 60 characters; HummingbirdBcrypt), checked by the collector.
    public var passwordHash: String
    /// The RFC 6238 TOTP shared secret (HummingbirdOTP's form: its UTF-8 bytes are the HMAC
    /// key), nil when the account logs in without a code.
    public var totpSecret: String?
    /// Unix ms.
    public var createdAtMs: Int64
    /// Failed logins since the last successful one (or since the last lock ended).
    public var failedLogins: Int
    /// While now is before this (Unix ms), logins are refused without checking the password.
    public var lockedUntilMs: Int64?
    /// The RFC 6238 time step (Unix seconds / 30) of the last TOTP code accepted for this
    /// account: a code of this step or an earlier one is refused (no replay within its
    /// window). nil: none accepted since the secret was set.
    public var totpLastStep: Int64?

    public init(name: AdminName, role: AdminRole, passwordHash: String, totpSecret: String?, createdAtMs: Int64,
                failedLogins: Int = 0, lockedUntilMs: Int64? = nil, totpLastStep: Int64? = nil) {
        self.name = name
        self.role = role
        self.passwordHash = passwordHash
        self.totpSecret = totpSecret
        self.createdAtMs = createdAtMs
        self.failedLogins = failedLogins
        self.lockedUntilMs = lockedUntilMs
        self.totpLastStep = totpLastStep
    }
}

/// A dashboard session that is still valid, as ``AdminAccountStore/session(tokenHash:nowMs:limits:)`` finds it.
public struct AdminSession: Sendable, Equatable {
    /// Whose session (the account's current role: a role changed by `custos admins set-role`
    /// applies to sessions already open).
    public var admin: AdminName
    public var role: AdminRole
    /// Unix ms.
    public var createdAtMs: Int64
    /// When it was last used (Unix ms; refreshed at most every ``SessionLimits/touchMs``).
    public var lastSeenMs: Int64

    public init(admin: AdminName, role: AdminRole, createdAtMs: Int64, lastSeenMs: Int64) {
        self.admin = admin
        self.role = role
        self.createdAtMs = createdAtMs
        self.lastSeenMs = lastSeenMs
    }
}

/// How long sessions live (`admin-session-idle-minutes`, `admin-session-max-hours`).
public struct SessionLimits: Sendable, Equatable {
    /// A session unused this long (ms) is gone.
    public var idleMs: Int64
    /// A session older than this (ms) is gone, however busy.
    public var maxMs: Int64
    /// `last_seen` is rewritten only when it is at least this old (ms), so a page loading many
    /// items costs one write, not one per request. Idle expiry is exact to within it.
    public var touchMs: Int64

    public init(idleMs: Int64, maxMs: Int64, touchMs: Int64 = 10_000) {
        self.idleMs = idleMs
        self.maxMs = maxMs
        self.touchMs = touchMs
    }
}

/// What a failed login did to its name's count (``AdminAccountStore/recordFailedLogin(_:nowMs:maxFailures:lockMs:)``).
public struct LoginFailure: Sendable, Equatable {
    /// Failures counted now (1 after a lock ended).
    public var failures: Int
    /// Set when this failure locked the account (Unix ms: until when).
    public var lockedUntilMs: Int64?

    public init(failures: Int, lockedUntilMs: Int64?) {
        self.failures = failures
        self.lockedUntilMs = lockedUntilMs
    }
}

/// Dashboard accounts and their sessions (tables `admin_accounts`, `admin_sessions`). Sessions
/// live in the database, so any collector instance on it accepts any session. A session is
/// stored only as the SHA-256 (32 bytes) of its token (``AgentToken``'s scheme: 32 random bytes,
/// base64url, 43 characters); expiry is checked in the query that finds it. Times are the
/// caller's clock (Unix ms), so every instance must keep NTP time, as for the retention lease.
public protocol AdminAccountStore: Sendable {
    /// Adds an account. - Throws: `.alreadyExists` when the name is taken; `.invalidArgument`
    /// when a text holds NUL.
    func addAdmin(_ account: AdminAccount) async throws(StorageError)
    /// One account, nil when unknown.
    func admin(_ name: AdminName) async throws(StorageError) -> AdminAccount?
    /// Every account, by name.
    func admins() async throws(StorageError) -> [AdminAccount]
    /// Deletes an account and its sessions. - Throws: `.notFound`.
    func removeAdmin(_ name: AdminName) async throws(StorageError)
    /// Changes an account's role (open sessions get it at their next request). - Throws: `.notFound`.
    func setAdminRole(_ name: AdminName, role: AdminRole) async throws(StorageError)
    /// Replaces the password hash (and the TOTP secret when `totpSecret` is given: `.some(nil)`
    /// removes it, and a new or removed secret forgets the last accepted TOTP step), ends every
    /// session of the account and clears its lock. - Throws: `.notFound`.
    func setAdminPassword(_ name: AdminName, passwordHash: String, totpSecret: String??) async throws(StorageError)
    /// Counts a failed login of `name` in one statement (concurrent failures on several
    /// instances all count), whether or not an account of that name exists, so a name that is
    /// not an account locks like one and a lock reveals nothing (docs/API.md "Login limits").
    /// When the count reaches `maxFailures` the name is locked until `nowMs + lockMs`; a failure
    /// after a lock ended starts counting at 1. An account's count is in its row; other names'
    /// are in `admin_login_failures`, at most ``AdminLoginLimits/maxUnknownNames`` of them (past
    /// that, the unlocked ones whose last failure is oldest are forgotten).
    func recordFailedLogin(_ name: AdminName, nowMs: Int64, maxFailures: Int, lockMs: Int64) async throws(StorageError) -> LoginFailure
    /// Until when (Unix ms) logins of `name` are refused at `nowMs`, nil when they are not: an
    /// account's lock or, for a name that is not an account, that name's.
    func loginLockedUntil(_ name: AdminName, nowMs: Int64) async throws(StorageError) -> Int64?
    /// Clears the failure count and lock after a successful login.
    func recordSuccessfulLogin(_ name: AdminName) async throws(StorageError)
    /// Records `step` (RFC 6238 time step of the TOTP code just verified) as the account's last
    /// accepted one, in one conditional UPDATE; false (nothing changed) when a code of this step
    /// or a later one was accepted already (a replay, possibly on another instance) or the
    /// account is gone.
    func acceptTOTPStep(_ name: AdminName, step: Int64) async throws(StorageError) -> Bool

    /// Stores a new session (`tokenHash`: SHA-256 of its token, 32 bytes) made now.
    /// - Throws: `.notFound` for an unknown account, `.invalidArgument` for a hash that is not 32 bytes.
    func createSession(admin: AdminName, tokenHash: Data, nowMs: Int64) async throws(StorageError)
    /// The session with this token hash if it is still valid at `nowMs` (used within
    /// `limits.idleMs` and made within `limits.maxMs`), its account's current role, and its
    /// `last_seen` refreshed (when older than `limits.touchMs`); nil otherwise.
    func session(tokenHash: Data, nowMs: Int64, limits: SessionLimits) async throws(StorageError) -> AdminSession?
    /// Deletes one session (logout); nothing when it does not exist.
    func deleteSession(tokenHash: Data) async throws(StorageError)
    /// Deletes every session expired at `nowMs`; returns how many.
    func deleteExpiredSessions(nowMs: Int64, limits: SessionLimits) async throws(StorageError) -> Int
}

/// Bounds of the failed-login bookkeeping every backend keeps alike.
public enum AdminLoginLimits {
    /// Most names that are not accounts whose failed logins are remembered
    /// (`admin_login_failures`); a name locked now is never forgotten.
    public static let maxUnknownNames = 10_000
}

extension StorageCheck {
    /// The checks of an account every backend makes alike: no NUL in the hash or secret.
    public static func account(_ account: AdminAccount, context: String) throws(StorageError) {
        try text(account.passwordHash, "password hash of \(account.name)", context: context)
        if let s = account.totpSecret { try text(s, "TOTP secret of \(account.name)", context: context) }
    }

    /// A session token hash must be a SHA-256 (32 bytes).
    public static func tokenHash(_ hash: Data, context: String) throws(StorageError) {
        guard hash.count == 32 else {
            throw StorageError(.invalidArgument, "\(context): a session token hash is 32 bytes (SHA-256), found \(hash.count)")
        }
    }
}
