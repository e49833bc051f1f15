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
                #expect(try await s.recordFailedLogin(Self.name("nobody"), nowMs: 1000, maxFailures: 5, lockMs: 900_000) == nil)
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
