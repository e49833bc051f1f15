import CollectorStorage
import CustosBase
import Foundation
import Testing
import TestSupport

extension StorageConformance {
    /// `AdminAccountStore` on every backend: accounts, failed-login lock, sessions with idle and
    /// absolute expiry; and the audit log's refusal to change admin entries.
    @Suite struct AdminAccountConformance {
        static func name(_ text: String) -> AdminName { try! AdminName(text) }
        static let hash = "$2b$12$abcdefghijklmnopqrstuuLxTWJ3bCDbTJy2N3p0KfKXe4vV6ul4W"

        static func account(_ text: String, role: AdminRole = .viewer, totp: String? = nil) -> AdminAccount {
            AdminAccount(name: name(text), role: role, passwordHash: hash, totpSecret: totp, createdAtMs: 1_700_000_000_000)
        }

        @Test(arguments: Backend.testable)
        func addListChangeRemove(_ backend: Backend) async throws {
            try await withRig(backend, "admins") { rig async throws in
                let s = rig.storage
                try await s.addAdmin(Self.account("zoe@example.org", role: .auditor))
                try await s.addAdmin(Self.account("ann", role: .decryptor, totp: "SECRETSECRETSECRET12"))
                #expect(await storageError { try await s.addAdmin(Self.account("ann")) }?.code == .alreadyExists)
                #expect(try await s.admins().map(\.name.rawValue) == ["ann", "zoe@example.org"], "by name")
                let ann = try #require(try await s.admin(Self.name("ann")))
                #expect(ann == Self.account("ann", role: .decryptor, totp: "SECRETSECRETSECRET12"))
                #expect(try await s.admin(Self.name("nobody")) == nil)

                try await s.setAdminRole(Self.name("ann"), role: .viewer)
                #expect(try await s.admin(Self.name("ann"))?.role == .viewer)
                #expect(await storageError { try await s.setAdminRole(Self.name("nobody"), role: .viewer) }?.code == .notFound)

                // A new password ends the account's sessions; a TOTP secret can be removed.
                let token = Data(repeating: 1, count: 32)
                try await s.createSession(admin: Self.name("ann"), tokenHash: token, nowMs: 1000)
                let limits = SessionLimits(idleMs: 60_000, maxMs: 3_600_000)
                #expect(try await s.session(tokenHash: token, nowMs: 1001, limits: limits) != nil)
                try await s.setAdminPassword(Self.name("ann"), passwordHash: "$2b$12$other", totpSecret: .some(nil))
                #expect(try await s.session(tokenHash: token, nowMs: 1002, limits: limits) == nil)
                let changed = try #require(try await s.admin(Self.name("ann")))
                #expect(changed.passwordHash == "$2b$12$other" && changed.totpSecret == nil)
                try await s.setAdminPassword(Self.name("ann"), passwordHash: "$2b$12$third", totpSecret: nil)
                #expect(try await s.admin(Self.name("ann"))?.totpSecret == nil, "nil keeps the secret as it is")
                #expect(await storageError { try await s.setAdminPassword(Self.name("nobody"), passwordHash: "x", totpSecret: nil) }?.code
                    == .notFound)

                // Removing an account removes its sessions.
                try await s.createSession(admin: Self.name("zoe@example.org"), tokenHash: token, nowMs: 1000)
                try await s.removeAdmin(Self.name("zoe@example.org"))
                #expect(try await s.session(tokenHash: token, nowMs: 1001, limits: limits) == nil)
                #expect(try await s.admins().map(\.name.rawValue) == ["ann"])
                #expect(await storageError { try await s.removeAdmin(Self.name("zoe@example.org")) }?.code == .notFound)
                // The name is free again.
                try await s.addAdmin(Self.account("zoe@example.org"))
                #expect(await storageError { try await s.addAdmin(Self.account("nul", totp: "a\u{0}b")) }?.code == .invalidArgument)
            }
        }

        /// Five failures lock the account; a failure after the lock ended counts from 1; a
        /// success clears the count.
        @Test(arguments: Backend.testable)
        func failedLoginsLockTheAccount(_ backend: Backend) async throws {
            try await withRig(backend, "admin-lock") { rig async throws in
                let s = rig.storage
                let ann = Self.name("ann")
                try await s.addAdmin(Self.account("ann"))
                for i in 1...4 {
                    let f = try await s.recordFailedLogin(ann, nowMs: 1000 + Int64(i), maxFailures: 5, lockMs: 900_000)
                    #expect(f == LoginFailure(failures: i, lockedUntilMs: nil))
                }
                let fifth = try await s.recordFailedLogin(ann, nowMs: 2000, maxFailures: 5, lockMs: 900_000)
                #expect(fifth == LoginFailure(failures: 5, lockedUntilMs: 902_000))
                #expect(try await s.admin(ann)?.lockedUntilMs == 902_000)
                #expect(try await s.admin(ann)?.failedLogins == 5)
                // After the lock: counting starts again.
                let after = try await s.recordFailedLogin(ann, nowMs: 902_000, maxFailures: 5, lockMs: 900_000)
                #expect(after == LoginFailure(failures: 1, lockedUntilMs: nil))
                #expect(try await s.admin(ann)?.lockedUntilMs == nil)
                try await s.recordSuccessfulLogin(ann)
                let cleared = try #require(try await s.admin(ann))
                #expect(cleared.failedLogins == 0 && cleared.lockedUntilMs == nil)
                // Concurrent failures all count (one statement each).
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<5 {
                        group.addTask { _ = try await s.recordFailedLogin(ann, nowMs: 3000, maxFailures: 5, lockMs: 1000) }
                    }
                    try await group.waitForAll()
                }
                let raced = try #require(try await s.admin(ann))
                #expect(raced.failedLogins == 5 && raced.lockedUntilMs == 4000)
            }
        }

        /// A name that is not an account counts, locks and unlocks exactly as an account does
        /// (the same answers step by step), concurrent failures all count, and the name's record
        /// is dropped when an account of that name is made.
        @Test(arguments: Backend.testable)
        func unknownNamesLockLikeAccounts(_ backend: Backend) async throws {
            try await withRig(backend, "admin-unknown-lock") { rig async throws in
                let s = rig.storage
                let ann = Self.name("ann"), nobody = Self.name("nobody")
                try await s.addAdmin(Self.account("ann"))
                let lockMs: Int64 = 900_000
                for name in [ann, nobody] {
                    #expect(try await s.loginLockedUntil(name, nowMs: 1000) == nil, "\(name)")
                }
                // Side by side, failure by failure: the same counts, the same lock.
                for i in 1...5 {
                    let now = 1000 + Int64(i)
                    let known = try await s.recordFailedLogin(ann, nowMs: now, maxFailures: 5, lockMs: lockMs)
                    let unknown = try await s.recordFailedLogin(nobody, nowMs: now, maxFailures: 5, lockMs: lockMs)
                    #expect(known == unknown, "failure \(i)")
                    #expect(unknown == LoginFailure(failures: i, lockedUntilMs: i == 5 ? now + lockMs : nil), "failure \(i)")
                }
                for name in [ann, nobody] {
                    #expect(try await s.loginLockedUntil(name, nowMs: 2000) == 1005 + lockMs, "\(name) is locked")
                    #expect(try await s.loginLockedUntil(name, nowMs: 1005 + lockMs) == nil, "\(name): the lock ended")
                    #expect(try await s.recordFailedLogin(name, nowMs: 1005 + lockMs, maxFailures: 5, lockMs: lockMs)
                        == LoginFailure(failures: 1, lockedUntilMs: nil), "\(name): counting starts again")
                }
                #expect(try await s.admin(nobody) == nil, "counting made no account")
                // Concurrent failures of another unknown name all count (one statement each).
                let eve = Self.name("eve@example.org")
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<5 {
                        group.addTask { _ = try await s.recordFailedLogin(eve, nowMs: 3000, maxFailures: 5, lockMs: 1000) }
                    }
                    try await group.waitForAll()
                }
                #expect(try await s.loginLockedUntil(eve, nowMs: 3500) == 4000)
                // Made an account now: its own (clear) state counts, not the name's past.
                try await s.addAdmin(Self.account("eve@example.org"))
                #expect(try await s.loginLockedUntil(eve, nowMs: 3500) == nil)
                #expect(try await s.recordFailedLogin(eve, nowMs: 3600, maxFailures: 5, lockMs: 1000)
                    == LoginFailure(failures: 1, lockedUntilMs: nil))
                try await s.removeAdmin(eve)
                #expect(try await s.loginLockedUntil(eve, nowMs: 3500) == nil, "the old record went with the account's creation")
            }
        }

        /// At most ``AdminLoginLimits/maxUnknownNames`` unknown names are remembered: past it, the
        /// unlocked ones whose last failure is oldest go; a locked one stays, however old.
        @Test(arguments: Backend.testable)
        func unknownNamesAreBounded(_ backend: Backend) async throws {
            try await withRig(backend, "admin-unknown-cap") { rig async throws in
                let s = rig.storage
                let cap = AdminLoginLimits.maxUnknownNames
                #expect(cap == 10_000)
                // 10,000 names failed once at times 1…10,000 ms, and one locked name older than all.
                switch backend {
                case .sqlite:
                    _ = try await rig.cli("""
                        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < \(cap))
                        INSERT INTO admin_login_failures (name, failed_logins, locked_until, last_failure)
                        SELECT 'filler-' || i, 1, NULL, i FROM n;
                        INSERT INTO admin_login_failures VALUES ('locked-old', 5, 9000000000000, 0);
                        """)
                case .postgres:
                    _ = try await rig.cli("""
                        INSERT INTO admin_login_failures (name, failed_logins, locked_until, last_failure)
                        SELECT 'filler-' || i, 1, NULL, to_timestamp(i / 1000.0) FROM generate_series(1, \(cap)) AS i;
                        INSERT INTO admin_login_failures VALUES ('locked-old', 5, to_timestamp(9000000000), to_timestamp(0));
                        """)
                }
                func count() async throws -> Int {
                    Int(try await rig.cli("SELECT count(*) FROM admin_login_failures;").trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
                }
                #expect(try await count() == cap + 1)
                let now: Int64 = 1_700_000_000_000
                #expect(try await s.recordFailedLogin(Self.name("newcomer"), nowMs: now, maxFailures: 5, lockMs: 1000).failures == 1)
                #expect(try await count() == cap, "pruned to the cap")
                #expect(try await s.loginLockedUntil(Self.name("locked-old"), nowMs: now) == 9_000_000_000_000, "a locked name stays")
                for gone in ["filler-1", "filler-2"] {
                    #expect(try await rig.cli("SELECT count(*) FROM admin_login_failures WHERE name = '\(gone)';")
                        .trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(gone): the oldest unlocked went")
                }
                #expect(try await s.recordFailedLogin(Self.name("filler-3"), nowMs: now + 1, maxFailures: 5, lockMs: 1000).failures == 2,
                        "a remembered name keeps its count")
                #expect(try await count() == cap)
            }
        }

        /// A TOTP step is accepted once: the same or an earlier step is refused (a replay), also
        /// when tried concurrently; a new secret forgets the step.
        @Test(arguments: Backend.testable)
        func totpStepsAreAcceptedOnce(_ backend: Backend) async throws {
            try await withRig(backend, "admin-totp-step") { rig async throws in
                let s = rig.storage
                let ann = Self.name("ann")
                try await s.addAdmin(Self.account("ann", totp: "SECRETSECRETSECRET12"))
                #expect(try await s.admin(ann)?.totpLastStep == nil)
                #expect(try await s.acceptTOTPStep(ann, step: 100))
                #expect(try await !s.acceptTOTPStep(ann, step: 100), "the same step again")
                #expect(try await !s.acceptTOTPStep(ann, step: 99), "an earlier step")
                #expect(try await s.acceptTOTPStep(ann, step: 101))
                #expect(try await s.admin(ann)?.totpLastStep == 101)
                #expect(try await !s.acceptTOTPStep(Self.name("nobody"), step: 500), "no account")
                let accepted = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for _ in 0..<5 { group.addTask { try await s.acceptTOTPStep(ann, step: 200) } }
                    return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
                }
                #expect(accepted == 1, "one of five concurrent logins with one code")
                // A password reset that keeps the secret keeps the step; a new secret forgets it.
                try await s.setAdminPassword(ann, passwordHash: "$2b$12$other", totpSecret: nil)
                #expect(try await s.admin(ann)?.totpLastStep == 200)
                try await s.setAdminPassword(ann, passwordHash: "$2b$12$other", totpSecret: .some("NEWSECRETNEWSECRETNEW2"))
                #expect(try await s.admin(ann)?.totpLastStep == nil)
                #expect(try await s.acceptTOTPStep(ann, step: 150))
                // The step travels with the account (addAdmin, as db migrate copies it).
                var copy = Self.account("bob", totp: "SECRETSECRETSECRET12")
                copy.totpLastStep = 77
                try await s.addAdmin(copy)
                #expect(try await s.admin(Self.name("bob")) == copy)
                #expect(try await !s.acceptTOTPStep(Self.name("bob"), step: 77))
            }
        }

        /// Idle and absolute expiry are checked in the query; `last_seen` moves only when it is
        /// older than `touchMs`; the account's current role comes with the session.
        @Test(arguments: Backend.testable)
        func sessionsExpire(_ backend: Backend) async throws {
            try await withRig(backend, "admin-sessions") { rig async throws in
                let s = rig.storage
                let ann = Self.name("ann")
                try await s.addAdmin(Self.account("ann", role: .decryptor))
                let limits = SessionLimits(idleMs: 15 * 60_000, maxMs: 12 * 3_600_000, touchMs: 10_000)
                let t0: Int64 = 1_700_000_000_000
                let a = Data((0..<32).map { UInt8($0) }), b = Data((0..<32).map { UInt8(255 - $0) })
                try await s.createSession(admin: ann, tokenHash: a, nowMs: t0)
                try await s.createSession(admin: ann, tokenHash: b, nowMs: t0)
                #expect(await storageError { try await s.createSession(admin: Self.name("nobody"), tokenHash: Data(repeating: 9, count: 32), nowMs: t0) }?
                    .code == .notFound)
                #expect(await storageError { try await s.createSession(admin: ann, tokenHash: Data(repeating: 9, count: 31), nowMs: t0) }?
                    .code == .invalidArgument)

                #expect(try await s.session(tokenHash: a, nowMs: t0 + 5000, limits: limits)
                    == AdminSession(admin: ann, role: .decryptor, createdAtMs: t0, lastSeenMs: t0), "not touched within touchMs")
                #expect(try await s.session(tokenHash: a, nowMs: t0 + 60_000, limits: limits)?.lastSeenMs == t0 + 60_000)
                #expect(try await s.session(tokenHash: Data(repeating: 7, count: 32), nowMs: t0, limits: limits) == nil, "unknown")
                #expect(try await s.session(tokenHash: Data(repeating: 7, count: 3), nowMs: t0, limits: limits) == nil, "not a hash")

                // b was never used after t0: idle after 15 minutes.
                #expect(try await s.session(tokenHash: b, nowMs: t0 + limits.idleMs - 1, limits: limits) != nil)
                #expect(try await s.session(tokenHash: b, nowMs: t0 + 2 * limits.idleMs, limits: limits) == nil, "idle")
                // a, used every 10 minutes, still ends 12 hours after it was made.
                var now = t0 + 60_000
                while now < t0 + limits.maxMs - 600_000 {
                    now += 600_000
                    #expect(try await s.session(tokenHash: a, nowMs: now, limits: limits) != nil)
                }
                #expect(try await s.session(tokenHash: a, nowMs: t0 + limits.maxMs, limits: limits) == nil, "absolute")

                // The role is the account's current one.
                let c = Data(repeating: 3, count: 32)
                try await s.createSession(admin: ann, tokenHash: c, nowMs: now)
                try await s.setAdminRole(ann, role: .viewer)
                #expect(try await s.session(tokenHash: c, nowMs: now + 1, limits: limits)?.role == .viewer)

                let end = t0 + limits.maxMs
                #expect(try await s.deleteExpiredSessions(nowMs: end, limits: limits) == 2, "a (absolute) and b (idle)")
                #expect(try await s.session(tokenHash: c, nowMs: end, limits: limits) != nil)
                try await s.deleteSession(tokenHash: c)
                try await s.deleteSession(tokenHash: c)
                #expect(try await s.session(tokenHash: c, nowMs: end, limits: limits) == nil)
            }
        }

        /// The audit log refuses UPDATE and DELETE of entries, admin ones included, typed in the
        /// backend's own client as the collector's role.
        @Test(arguments: Backend.testable)
        func auditLogRefusesChangesToAdminEntries(_ backend: Backend) async throws {
            try await withRig(backend, "admin-audit") { rig async throws in
                let s = rig.storage
                let entry = try await s.appendAudit(actor: "ann", action: "admin.fetch-sealed", detail: "blobs=1 from 127.0.0.1")
                for sql in ["UPDATE audit_log SET detail = 'rewritten' WHERE actor = 'ann';",
                            "DELETE FROM audit_log WHERE actor = 'ann';"] {
                    do {
                        _ = try await rig.cli(sql)
                        Issue.record("\(backend): \(sql) was accepted")
                    } catch {
                        #expect(String(describing: error).contains("append-only"), "\(backend): \(sql): \(error)")
                    }
                }
                #expect(try await s.auditEntries(before: nil, limit: 10) == [entry])
            }
        }
    }
}
