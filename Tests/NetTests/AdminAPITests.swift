import AdminAuth
import Collector
import CollectorStorage
import CollectorStorageOpen
import CollectorStorageSQLite
import CustosBase
import Envelope
import Foundation
import Logging
import Testing
import TestSupport

/// The collector's admin listener (issue 15, docs/API.md "Admin API"): a real collector on
/// 127.0.0.1 with real TLS, a real SQLite file (or a throwaway PostgreSQL), and `curl` as the
/// client with a cookie jar.
@Suite struct AdminAPITests {
    static let password = "a long test password"

    /// A collector with an admin listener, its dashboard directory (with a symbolic link out of
    /// it and a hidden file), accounts ann (decryptor), vic (viewer), aud (auditor), and a client.
    struct Rig {
        let dir: TempDir
        let collector: TestCollector
        let client: AdminClient

        static func start(_ name: String, admin: TestAdminListener = TestAdminListener(),
                          location: StorageLocation? = nil, pki: TestPKI? = nil,
                          logger: Logger = Logger(label: "test-collector")) async throws -> Rig {
            let dir = try TempDir("custos-admin-\(name)")
            let dashboard = dir.file("dashboard")
            try FileManager.default.createDirectory(atPath: dashboard + "/js", withIntermediateDirectories: true)
            try "<!doctype html><title>Custos</title>".write(toFile: dashboard + "/index.html", atomically: true, encoding: .utf8)
            try "export const x = 1;".write(toFile: dashboard + "/js/app.js", atomically: true, encoding: .utf8)
            try "hidden".write(toFile: dashboard + "/.hidden.js", atomically: true, encoding: .utf8)
            try "secret outside".write(toFile: dir.file("outside.js"), atomically: true, encoding: .utf8)
            try "not served".write(toFile: dashboard + "/notes.txt", atomically: true, encoding: .utf8)
            try FileManager.default.createSymbolicLink(atPath: dashboard + "/js/link.js", withDestinationPath: dir.file("outside.js"))
            var admin = admin
            admin.dashboardDirectory = admin.dashboardDirectory ?? dashboard
            let collector = try await TestCollector.start(in: dir.path, pki: pki, admin: admin, location: location, logger: logger)
            let client = try AdminClient(url: collector.adminURL, caFile: collector.pki.rootCertificate)
            return Rig(dir: dir, collector: collector, client: client)
        }

        func addAccounts() async throws {
            try await TestAdmin.add(to: collector.storage, name: "ann", role: .decryptor, password: AdminAPITests.password)
            try await TestAdmin.add(to: collector.storage, name: "vic", role: .viewer, password: AdminAPITests.password)
            try await TestAdmin.add(to: collector.storage, name: "aud", role: .auditor, password: AdminAPITests.password)
        }

        func newClient() throws -> AdminClient { try AdminClient(url: collector.adminURL, caFile: collector.pki.rootCertificate) }

        func stop() async {
            await collector.stop()
            dir.remove()
        }

        /// Starts a rig, runs `body`, stops it (also when `body` throws).
        static func with(_ name: String, admin: TestAdminListener = TestAdminListener(), location: StorageLocation? = nil,
                         pki: TestPKI? = nil, logger: Logger = Logger(label: "test-collector"),
                         _ body: (Rig) async throws -> Void) async throws {
            let rig = try await start(name, admin: admin, location: location, pki: pki, logger: logger)
            do { try await body(rig) } catch {
                await rig.stop()
                throw error
            }
            await rig.stop()
        }
    }

    static func expectSecurityHeaders(_ r: AdminClient.Reply, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.headers["content-security-policy"]?.hasPrefix("default-src 'self'; script-src 'self'") == true
                && r.headers["content-security-policy"]?.contains("frame-ancestors 'none'") == true, "\(what): CSP", sourceLocation: sourceLocation)
        #expect(r.headers["x-content-type-options"] == "nosniff", "\(what)", sourceLocation: sourceLocation)
        #expect(r.headers["referrer-policy"] == "no-referrer", "\(what)", sourceLocation: sourceLocation)
        #expect(r.headers["x-frame-options"] == "DENY", "\(what)", sourceLocation: sourceLocation)
        #expect(r.headers["strict-transport-security"] == "max-age=31536000", "\(what)", sourceLocation: sourceLocation)
    }

    @Test func loginRolesLogoutHeadersAndStaticFiles() async throws {
        try await Rig.with("login") { rig in
            try await rig.addAccounts()
            let c = rig.client

            let anonymous = try await c.get("/api/v1/session")
            #expect(anonymous.status == 401 && anonymous.error != nil)
            #expect(anonymous.headers["cache-control"] == "no-store")
            Self.expectSecurityHeaders(anonymous, "401")

            // Wrong password and unknown name: the same answer.
            let wrong = try await c.login("ann", "not the password at all")
            let unknown = try await c.login("nobody", Self.password)
            #expect(wrong.status == 401 && unknown.status == 401)
            #expect(wrong.error == "wrong name or password" && unknown.error == wrong.error)
            #expect(c.sessionToken == nil)
            // Origin missing or foreign: 403 before anything else.
            #expect(try await c.request("POST", "/api/v1/login", json: ["name": "ann", "password": Self.password], origin: .some(nil)).status == 403)
            #expect(try await c.request("POST", "/api/v1/login", json: ["name": "ann", "password": Self.password],
                                        origin: "https://evil.example").status == 403)
            #expect(try await c.request("POST", "/api/v1/login", body: Data("not json".utf8)).error?.hasPrefix("body") == true)
            #expect(try await c.post("/api/v1/login", json: ["name": "ann"]).error?.hasPrefix("password") == true)

            let login = try await c.login("ann", Self.password)
            #expect(login.status == 200, "\(login.text)")
            #expect(login.json?["name"] as? String == "ann" && login.json?["role"] as? String == "decryptor")
            #expect(login.json?["idleMinutes"] as? Int == 15)
            let cookie = try #require(login.headers["set-cookie"])
            #expect(cookie.hasSuffix("; Path=/; HttpOnly; Secure; SameSite=Strict"), "\(cookie)")
            #expect(c.sessionToken?.utf8.count == 43)
            let session = try await c.get("/api/v1/session")
            #expect(session.status == 200 && session.json?["ownKEKIDs"] as? [String] == [])
            #expect(session.headers["cache-control"] == "no-store")
            Self.expectSecurityHeaders(session, "API")
            // The session is in the database, hashed: never the token itself.
            let token = try #require(c.sessionToken)
            #expect(try await rig.collector.storage.session(tokenHash: AgentToken.hash(Secret(token)), nowMs: Int64(Date().timeIntervalSince1970 * 1000),
                                                            limits: SessionLimits(idleMs: 60_000, maxMs: 60_000)) != nil)
            #expect(try await rig.collector.storage.auditEntries(before: nil, limit: 10).contains { $0.action == "admin.login" && $0.actor == "ann" })

            // Roles: viewer 403 on /sealed, decryptor 403 on /audit, auditor 200 on /audit.
            #expect(try await c.get("/api/v1/audit").status == 403)
            let viewer = try rig.newClient(), auditor = try rig.newClient()
            #expect(try await viewer.login("vic", Self.password).status == 200)
            let refused = try await viewer.post("/api/v1/sealed", json: ["blobs": [String](), "deks": [String]()])
            #expect(refused.status == 403 && refused.error == "a viewer may not do this", "\(refused.text)")
            #expect(try await auditor.login("aud", Self.password).status == 200)
            let notAuditors = try await auditor.post("/api/v1/sealed", json: ["blobs": [String](), "deks": [String]()])
            #expect(notAuditors.status == 403 && notAuditors.error == "an auditor may not do this", "\(notAuditors.text)")
            let audit = try await auditor.get("/api/v1/audit?limit=2")
            #expect(audit.status == 200 && (audit.json?["entries"] as? [Any])?.count == 2 && audit.json?["next"] is Int, "\(audit.text)")
            // A POST with the session cookie but from another origin: 403.
            #expect(try await c.post("/api/v1/client-report", json: ["action": "lock"], origin: "https://evil.example").status == 403)
            #expect(try await c.post("/api/v1/client-report", json: ["action": "lock"]).status == 204)

            // Bad parameters: 400 naming them.
            for (path, name) in [("/api/v1/captures?limit=0", "limit"), ("/api/v1/captures?kind=video", "kind"),
                                 ("/api/v1/captures?after=zzz", "after"), ("/api/v1/captures?agent=a%2Fb", "agent"),
                                 ("/api/v1/agents?limit=501", "limit"), ("/api/v1/captures?since=soon", "since")] {
                let r = try await c.get(path)
                #expect(r.status == 400 && r.error?.hasPrefix(name) == true, "\(path): \(r.text)")
            }
            let big = try await c.request("POST", "/api/v1/client-report", body: Data(repeating: 0x20, count: 100_000),
                                          headers: ["Content-Type": "application/json"])
            #expect(big.status == 413, "\(big.text)")

            // Static files: only under dashboard-dir, only known extensions, no links out, no hidden files.
            let index = try await c.get("/", cookies: false)
            #expect(index.status == 200 && index.text.contains("Custos") && index.headers["content-type"] == "text/html; charset=utf-8")
            Self.expectSecurityHeaders(index, "static")
            #expect(try await c.get("/js/app.js").headers["content-type"] == "text/javascript; charset=utf-8")
            // HEAD answers like GET without a body (QA: it answered 404).
            for path in ["/", "/js/app.js"] {
                let full = try await c.get(path)
                let headOnly = try await c.request("HEAD", path)
                let length: String = "\(full.body.count)"
                #expect(headOnly.status == 200, "HEAD \(path): \(headOnly.status)")
                #expect(headOnly.headers["content-type"] == full.headers["content-type"], "HEAD \(path): \(headOnly.headers)")
                #expect(headOnly.headers["content-length"] == length, "HEAD \(path): \(headOnly.headers)")
                #expect(headOnly.headers["cache-control"] == "no-cache", "HEAD \(path): \(headOnly.headers)")
                Self.expectSecurityHeaders(headOnly, "HEAD \(path)")
            }
            let headMissing = try await c.request("HEAD", "/nope.html")
            #expect(headMissing.status == 404, "HEAD /nope.html: \(headMissing.status)")
            for path in ["/js/link.js", "/../outside.js", "/%2e%2e/outside.js", "/js/%2e%2e/%2e%2e/outside.js", "/.hidden.js",
                         "/notes.txt", "/nope.html", "/js/..%2f..%2foutside.js", "/api/v1/nope"] {
                let r = try await c.get(path)
                #expect(r.status == 404 && !r.text.contains("secret outside"), "\(path): \(r.status) \(r.text)")
                Self.expectSecurityHeaders(r, "404 \(path)")
            }

            // Logout ends the session (server side) and clears the cookie.
            let stolen = try rig.newClient()
            try stolen.useCookies(of: c)
            let logout = try await c.post("/api/v1/logout", json: [String: String]())
            #expect(logout.status == 204 && logout.headers["set-cookie"]?.contains("Max-Age=0") == true)
            #expect(try await c.get("/api/v1/session").status == 401)
            #expect(try await stolen.get("/api/v1/session").status == 401, "the old cookie no longer works anywhere")
        }
    }

    @Test func lockoutAndPerAddressLimit() async throws {
        try await Rig.with("lockout") { rig in
            let s = rig.collector.storage
            for n in 1...5 { try await TestAdmin.add(to: s, name: "u\(n)", role: .viewer, password: Self.password) }
            let c = rig.client
            for _ in 1...5 { #expect(try await c.login("u1", "wrong password here").status == 401) }
            let locked = try await c.login("u1", Self.password)
            #expect(locked.status == 429, "\(locked.text)")
            let wait = Int(locked.headers["retry-after"] ?? "") ?? 0
            #expect((840...900).contains(wait), "Retry-After \(wait)")
            let lock = try await s.auditEntries(before: nil, limit: 10).first { $0.action == "admin.locked" && $0.actor == "u1" }
            #expect(lock?.detail.contains(/locked until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z;/) == true, "ISO time: \(lock?.detail ?? "no admin.locked record")")
            // 20 failures from one address (u2..u5, 4 each: none locked, 5 on u1 before): the 21st try is refused by address.
            for n in 2...5 { for _ in 1...4 { _ = try await c.login("u\(n)", "wrong password here") } }
            let byAddress = try await c.login("u5", Self.password)
            #expect(byAddress.status == 429 && Int(byAddress.headers["retry-after"] ?? "") ?? 0 > 0, "\(byAddress.text)")
            #expect(try await s.admin(try AdminName("u5"))?.lockedUntilMs == nil, "u5 itself is not locked")
        }
    }

    /// A successful login does not clear the address's failures (an attacker's own account
    /// between guesses used to reset the count), and every failed login under the address's
    /// limit has an audit record (`admin.login-failed`), the one reaching the limit saying until
    /// when the address is refused; past the limit nothing more is recorded.
    @Test func ownLoginsDoNotResetTheAddressLimitAndFailuresAreAudited() async throws {
        try await Rig.with("address-limit") { rig in
            let s = rig.collector.storage
            for n in 1...5 { try await TestAdmin.add(to: s, name: "u\(n)", role: .viewer, password: Self.password) }
            try await TestAdmin.add(to: s, name: "me", role: .viewer, password: Self.password)
            let c = rig.client
            #expect(try await c.login("bad name!", "x").status == 401)
            for n in 1...4 {
                for _ in 1...4 { #expect(try await c.login("u\(n)", "wrong password here").status == 401) }
                #expect(try await c.login("me", Self.password).status == 200, "own login between guesses")
            }
            for _ in 1...3 { #expect(try await c.login("u5", "wrong password here").status == 401) }
            // 20 failures (1 + 16 + 3) in the window, 4 own logins among them: the 21st try is refused.
            let refused = try await c.login("me", Self.password)
            #expect(refused.status == 429 && Int(refused.headers["retry-after"] ?? "") ?? 0 > 0, "\(refused.status) \(refused.text)")
            #expect(try await c.login("u5", "wrong password here").status == 429)
            let failed = try await s.auditEntries(before: nil, limit: 100).filter { $0.action == "admin.login-failed" }
            #expect(failed.count == 20, "one record per failure under the limit, none past it: \(failed.count)")
            #expect(failed.contains { $0.actor == "-" && $0.detail.contains("not an admin name \(SafeText.quoted("bad name!"))") })
            #expect(failed.filter { $0.actor == "u1" }.count == 4 && failed.allSatisfy { $0.detail.contains("from 127.0.0.1") })
            let last = failed.max { $0.id < $1.id }
            #expect(last?.detail.contains(/failure 20 of 20 .*refused until \d{4}-\d\d-\d\dT/) == true, "\(last?.detail ?? "none")")
        }
    }

    /// A name that is not an account locks like one: five failures, then the same 429 and
    /// Retry-After as a locked account (the lock no longer tells which names exist); the lock
    /// is audited, saying no account has that name.
    @Test func unknownNamesLockLikeAccounts() async throws {
        try await Rig.with("unknown-lock") { rig in
            let s = rig.collector.storage
            try await TestAdmin.add(to: s, name: "u1", role: .viewer, password: Self.password)
            let c = rig.client
            for _ in 1...5 {
                let known = try await c.login("u1", "wrong password here"), unknown = try await c.login("ghost", "wrong password here")
                #expect(known.status == 401 && unknown.status == 401 && known.error == unknown.error)
            }
            let known = try await c.login("u1", Self.password), unknown = try await c.login("ghost", Self.password)
            #expect(known.status == 429 && unknown.status == 429, "\(known.text) \(unknown.text)")
            #expect(unknown.error == known.error, "the same text")
            for r in [known, unknown] {
                let wait = Int(r.headers["retry-after"] ?? "") ?? 0
                #expect((840...900).contains(wait), "Retry-After \(wait)")
            }
            #expect(try await s.loginLockedUntil(try AdminName("ghost"), nowMs: Int64(Date().timeIntervalSince1970 * 1000)) != nil)
            #expect(try await s.admin(try AdminName("ghost")) == nil)
            let locks = try await s.auditEntries(before: nil, limit: 20).filter { $0.action == "admin.locked" }
            #expect(locks.contains { $0.actor == "ghost" && $0.detail.contains("no account of this name") })
            #expect(locks.contains { $0.actor == "u1" && !$0.detail.contains("no account") })
        }
    }

    /// An account with a TOTP secret (HummingbirdOTP): the password alone is refused, a wrong code
    /// is refused and counted, the current code logs in; a code is accepted once: the same code,
    /// or that of an earlier step, is refused afterwards (a replay) and counted.
    @Test func totpAccountsNeedTheirCode() async throws {
        try await Rig.with("totp") { rig in
            let secret = AdminTOTP.newSecret()
            try await TestAdmin.add(to: rig.collector.storage, name: "tess", role: .auditor, password: Self.password, totpSecret: secret)
            let c = rig.client
            let none = try await c.login("tess", Self.password)
            #expect(none.status == 401 && none.error?.hasPrefix("totp") == true, "\(none.text)")
            let wrongCode = AdminTOTP.code(secret: secret, at: Date().addingTimeInterval(-600))
            #expect(try await c.login("tess", Self.password, totp: wrongCode).error == "totp: wrong code")
            #expect(try await rig.collector.storage.admin(try AdminName("tess"))?.failedLogins == 2)
            #expect(try await c.login("tess", "wrong password here", totp: AdminTOTP.code(secret: secret)).error == "wrong name or password")
            let now = Date()
            let ok = try await c.login("tess", Self.password, totp: AdminTOTP.code(secret: secret, at: now))
            #expect(ok.status == 200 && ok.json?["role"] as? String == "auditor", "\(ok.text)")
            #expect(try await rig.collector.storage.admin(try AdminName("tess"))?.failedLogins == 0, "a success clears the count")

            let replay = try await rig.newClient().login("tess", Self.password, totp: AdminTOTP.code(secret: secret, at: now))
            #expect(replay.status == 401 && replay.error == "totp: this code was used already; wait for the next one", "\(replay.text)")
            #expect(try await rig.collector.storage.admin(try AdminName("tess"))?.failedLogins == 1, "a replay is counted")
            // The next step's code (a clock 30 s ahead) is new: accepted; then the earlier one is not.
            let next = try await rig.newClient().login("tess", Self.password, totp: AdminTOTP.code(secret: secret, at: now.addingTimeInterval(30)))
            #expect(next.status == 200, "\(next.text)")
            let earlier = try await rig.newClient().login("tess", Self.password, totp: AdminTOTP.code(secret: secret, at: now))
            #expect(earlier.status == 401 && earlier.error?.hasPrefix("totp: ") == true, "\(earlier.text)")
            #expect(try await rig.collector.storage.admin(try AdminName("tess"))?.totpLastStep == AdminTOTP.step(at: now) + 1)
        }
    }

    /// Idle 10 s, life 20 s (margins wide enough for a loaded machine: a run with every NetTests
    /// suite in parallel saw a request take over 4 s): an unused session is gone
    /// after its idle time; one used every half second is gone after its life.
    @Test func sessionsExpireWhenIdleAndAfterTheirLifetime() async throws {
        try await Rig.with("expiry", admin: TestAdminListener(sessionIdle: .seconds(10), sessionMax: .seconds(20))) { rig in
            try await rig.addAccounts()
            let idle = rig.client, busy = try rig.newClient()
            #expect(try await idle.login("ann", Self.password).status == 200)
            #expect(try await busy.login("vic", Self.password).status == 200)
            let start = ContinuousClock.now  // both sessions were made before this
            while start.duration(to: .now) < .milliseconds(13_000) {
                #expect(try await busy.get("/api/v1/session").status == 200, "in use, within its life")
                try await Task.sleep(for: .milliseconds(500))
            }
            #expect(try await idle.get("/api/v1/session").status == 401, "unused for more than 10 s")
            try await Task.sleep(until: start + .milliseconds(21_000))
            #expect(try await busy.get("/api/v1/session").status == 401, "past its life, though used")
        }
    }

    /// Records uploaded by agents (through the agent API, as an agent would), read back through
    /// the admin API: the `/sealed` record stream byte for byte, `/plain` for items sealed to
    /// the collector's own KEK, listings paged by cursor.
    @Test func sealedStreamPlainAndPaging() async throws {
        let keyDir = try TempDir("custos-admin-keys")
        defer { keyDir.remove() }
        let e2ee = try makeTestKEK(in: keyDir.path, name: "e2ee")
        let own = try makeTestKEK(in: keyDir.path, name: "own")
        chmod(own.privateKey, 0o600)
        try await Rig.with("sealed", admin: TestAdminListener(serverPrivateKeyFile: own.privateKey)) { rig in
            try await rig.addAccounts()
            let s = rig.collector.storage
            for kek in [e2ee, own] {
                _ = try await s.registerKEK(KEKRegistration(pubDatafile: kek.publicKey, publicKeyPEM: nil, privDatafile: nil, kekID: nil))
            }
            // The agent API is on the other port: post there.
            let agentClient = try AdminClient(url: rig.collector.url, caFile: rig.collector.pki.rootCertificate)
            func uploadTo(_ agent: String, kek: String, count: Int, t0: Int64, tamperLast: Bool = false) async throws -> (DEKRecord, [SealedBlob], [Data]) {
                let token = try await s.addAgent(try AgentID(agent))
                let session = try DEKSession(kek: try KEKPublicKey(pemFile: kek), agentID: agent)
                var plain: [Data] = [], blobs: [SealedBlob] = []
                for i in 0..<count {
                    let p = Data("keystrokes \(agent) \(i)".utf8)
                    plain.append(p)
                    blobs.append(try session.seal(p, kind: i % 2 == 0 ? .keystrokes : .generic, captureTimeMs: t0 + Int64(i)))
                }
                if tamperLast, let last = blobs.popLast() {
                    // One ciphertext byte (of the GCM tag) changed: stored as is, it never opens.
                    var bytes = last.serialized
                    bytes[bytes.endIndex - 1] ^= 0x01
                    blobs.append(try SealedBlob(parsing: bytes))
                }
                let body = RecordStream.encode([.dekRecord(session.record)] + blobs.map { .blob($0) })
                let r = try await agentClient.request("POST", "/v1/records", body: body, origin: .some(nil), cookies: false,
                                                      headers: ["Authorization": "Bearer \(agent):\(token.revealed)",
                                                                "Content-Type": "application/vnd.custos.records"])
                try #require(r.status == 200, "upload: \(r.text)")
                return (session.record, blobs, plain)
            }
            let (dekA, blobsA, _) = try await uploadTo("e2ee-host", kek: e2ee.publicKey, count: 4, t0: 1_700_000_000_000)
            let (_, blobsB, plainB) = try await uploadTo("plain-host", kek: own.publicKey, count: 4, t0: 1_700_000_100_000, tamperLast: true)

            let c = rig.client
            #expect(try await c.login("ann", Self.password).status == 200)
            let ownID = try KEKPrivateKey(pemFile: own.privateKey, passphrase: nil).id.hex
            #expect(try await c.get("/api/v1/session").json?["ownKEKIDs"] as? [String] == [ownID])

            // The record stream: DEK records first, then blobs, exactly as uploaded; one id unknown.
            let unknown = BlobID.random().hex
            let asked = [blobsA[2].header.blobID.hex, unknown, blobsA[0].header.blobID.hex]
            let sealed = try await c.post("/api/v1/sealed", json: ["deks": [dekA.dekID.hex], "blobs": asked])
            #expect(sealed.status == 200 && sealed.headers["content-type"] == "application/octet-stream", "\(sealed.text)")
            #expect(sealed.headers["x-custos-missing"] == "1" && sealed.headers["cache-control"] == "no-store")
            #expect(sealed.body == dekA.serialized + blobsA[2].serialized + blobsA[0].serialized, "byte for byte as uploaded")
            let fetched = try await s.auditEntries(before: nil, limit: 20).filter { $0.action == "admin.fetch-sealed" }
            #expect(fetched.count == 1 && fetched.first?.actor == "ann", "one audit record per request")
            #expect(fetched.first?.detail.contains("127.0.0.1") == true && fetched.first?.detail.contains(blobsA[2].header.blobID.hex) == true)
            let badID = try await c.post("/api/v1/sealed", json: ["blobs": ["xyz"]])
            #expect(badID.status == 400 && badID.error?.hasPrefix("blobs[0]") == true, "\(badID.text)")

            // /plain: the collector's own items open here; E2EE ones never.
            let opened = try await c.get("/api/v1/captures/\(blobsB[1].header.blobID.hex)/plain")
            #expect(opened.status == 200 && opened.body == plainB[1])
            let masked = try await c.get("/api/v1/captures/\(blobsA[1].header.blobID.hex)/plain")
            #expect(masked.status == 403 && masked.error == "end-to-end encrypted: decrypt in your browser")
            #expect(try await c.get("/api/v1/captures/\(BlobID.random().hex)/plain").status == 404)
            #expect(try await s.auditEntries(before: nil, limit: 20).contains { $0.action == "admin.open-collector-sealed" && $0.actor == "ann" })
            #expect(try await c.get("/api/v1/captures/\(blobsB[3].header.blobID.hex)/plain").status == 422, "tampered")

            // POST /plain: many items in one request, one frame each in the order asked (a
            // repeated id once), one audit record for the request; any role.
            let viewer = try rig.newClient()
            #expect(try await viewer.login("vic", Self.password).status == 200)
            let audited = try await s.auditEntries(before: nil, limit: 100).count { $0.action == "admin.open-collector-sealed" }
            let ids = [blobsB[0], blobsA[1]].map(\.header.blobID.hex) + [unknown] + [blobsB[2], blobsB[3], blobsB[0]].map(\.header.blobID.hex)
            let batch = try await viewer.post("/api/v1/plain", json: ["ids": ids])
            #expect(batch.status == 200 && batch.headers["content-type"] == "application/octet-stream"
                    && batch.headers["cache-control"] == "no-store", "\(batch.text)")
            let frames = try Self.plainFrames(batch.body)
            #expect(frames.map(\.id) == Array(ids.prefix(5)))
            #expect(frames.map(\.status) == [0, 2, 1, 0, 3], "opened, end-to-end, not found, opened, damaged")
            #expect(frames[0].payload == plainB[0] && frames[3].payload == plainB[2])
            #expect(frames.filter { $0.status != 0 }.allSatisfy { $0.payload.isEmpty })
            let batchAudit = try await s.auditEntries(before: nil, limit: 100).filter { $0.action == "admin.open-collector-sealed" }
            #expect(batchAudit.count == audited + 1, "one audit record for the request")
            #expect(batchAudit.first?.actor == "vic" && batchAudit.first?.detail.contains("blobs=3 e2ee=1 missing=1") == true,
                    "\(batchAudit.first?.detail ?? "")")
            // Nothing to open: nothing revealed, nothing audited.
            let none = try await viewer.post("/api/v1/plain", json: ["ids": [blobsA[0].header.blobID.hex]])
            #expect(try Self.plainFrames(none.body).map(\.status) == [2])
            #expect(try await s.auditEntries(before: nil, limit: 100).count { $0.action == "admin.open-collector-sealed" } == audited + 1)
            for (json, name) in [(["ids": ["xyz"]], "ids[0]"), (["ids": [String]()], "ids"), (["blobs": [unknown]], "ids"),
                                 (["ids": Array(repeating: unknown, count: 101)], "ids")] as [([String: [String]], String)] {
                let r = try await viewer.post("/api/v1/plain", json: json)
                #expect(r.status == 400 && r.error?.hasPrefix(name) == true, "\(json): \(r.text)")
            }
            #expect(try await viewer.post("/api/v1/plain", json: ["ids": [unknown]], origin: "https://evil.example").status == 403)

            // Listings: agents with what their captures are sealed to; captures paged by cursor.
            let agents = try await c.get("/api/v1/agents?limit=1")
            let first = try #require((agents.json?["agents"] as? [[String: Any]])?.first)
            #expect(first["id"] as? String == "e2ee-host" && first["sealedTo"] as? String == "e2ee" && first["kekIDs"] as? [String] == [blobsA[0].header.kekID.hex])
            #expect(first["lastCaptureMs"] as? Int == 1_700_000_000_003)
            let nextAgent = try #require(agents.json?["next"] as? String)
            let second = try await c.get("/api/v1/agents?limit=1&after=\(nextAgent)")
            #expect((second.json?["agents"] as? [[String: Any]])?.first?["sealedTo"] as? String == "collector")
            #expect(second.json?["next"] is NSNull)

            var seen: [String] = [], cursor: String?, pages = 0
            repeat {
                let r = try await c.get("/api/v1/captures?limit=3&order=asc" + (cursor.map { "&after=\($0)" } ?? ""))
                let items = try #require(r.json?["items"] as? [[String: Any]], "\(r.text)")
                #expect(items.count <= 3)
                seen += items.compactMap { $0["id"] as? String }
                cursor = r.json?["next"] as? String
                pages += 1
            } while cursor != nil && pages < 10
            #expect(pages == 3, "8 captures, 3 a page")
            #expect(seen == (blobsA + blobsB).map(\.header.blobID.hex), "every capture once, in capture-time order")
            let newest = try await c.get("/api/v1/captures?agent=plain-host&kind=keystrokes&limit=1")
            let item = try #require((newest.json?["items"] as? [[String: Any]])?.first)
            #expect(item["id"] as? String == blobsB[2].header.blobID.hex && item["sealedTo"] as? String == "collector")
            #expect(item["dekID"] as? String == blobsB[2].header.dekID.hex && item["kind"] as? String == "keystrokes")

            #expect(try await c.post("/api/v1/client-report", json: ["action": "decrypted", "count": 4, "detail": "tiles"]).status == 204)
            let reported = try await s.auditEntries(before: nil, limit: 5).first
            #expect(reported?.action == "client.decrypted" && reported?.detail.hasPrefix("client-reported: count=4") == true)
            #expect(try await c.post("/api/v1/client-report", json: ["action": "format-disk"]).error?.hasPrefix("action") == true)
            // Counts 0 and 1 are numbers, not booleans (Linux bridges NSNumber 0/1 to Bool); a JSON true is refused.
            for n in [0, 1] {
                #expect(try await c.post("/api/v1/client-report", json: ["action": "lock", "count": n]).status == 204, "count \(n)")
                let entry = try await s.auditEntries(before: nil, limit: 1).first
                #expect(entry?.detail.hasPrefix("client-reported: count=\(n) ") == true, "\(entry?.detail ?? "-")")
            }
            #expect(try await c.post("/api/v1/client-report", json: ["action": "lock", "count": true]).error?.hasPrefix("count") == true)
        }
    }

    /// Sealed session blobs (docs/FORMAT.md "Sealed session blob") of two users on one agent,
    /// and plain blobs of another: every listing row carries `user` and `display` (null without
    /// a session); `user=` filters (with `agent=`, paged by cursor); a user name the one
    /// validator refuses is a 400 naming `user`.
    @Test func listingsNameTheSessionUserAndFilterByIt() async throws {
        let keyDir = try TempDir("custos-admin-users-keys")
        defer { keyDir.remove() }
        let kek = try makeTestKEK(in: keyDir.path, name: "e2ee")
        try await Rig.with("users") { rig in
            try await rig.addAccounts()
            let s = rig.collector.storage
            _ = try await s.registerKEK(KEKRegistration(pubDatafile: kek.publicKey, publicKeyPEM: nil, privDatafile: nil, kekID: nil))
            let agentClient = try AdminClient(url: rig.collector.url, caFile: rig.collector.pki.rootCertificate)
            func upload(_ agent: String, _ sessions: [BlobSession?], t0: Int64) async throws -> [SealedBlob] {
                let token = try await s.addAgent(try AgentID(agent))
                let session = try DEKSession(kek: try KEKPublicKey(pemFile: kek.publicKey), agentID: agent)
                let blobs = try sessions.enumerated().map { i, blobSession in
                    try session.seal(Data("capture \(i)".utf8), kind: .keystrokes, captureTimeMs: t0 + Int64(i), session: blobSession)
                }
                let body = RecordStream.encode([.dekRecord(session.record)] + blobs.map { .blob($0) })
                let r = try await agentClient.request("POST", "/v1/records", body: body, origin: .some(nil), cookies: false,
                                                      headers: ["Authorization": "Bearer \(agent):\(token.revealed)",
                                                                "Content-Type": "application/vnd.custos.records"])
                try #require(r.status == 200, "upload: \(r.text)")
                return blobs
            }
            let alice = try BlobSession(user: try UserName("alice"), display: ":1")
            let carol = try BlobSession(user: try UserName("CORP\\carol"), display: ":2")
            let shared = try await upload("terminal-server", [alice, carol, alice, carol, alice], t0: 1_700_000_000_000)
            let plain = try await upload("old-agent", [nil, nil], t0: 1_700_000_100_000)

            let c = rig.client
            #expect(try await c.login("vic", Self.password).status == 200)
            let all = try #require(try await c.get("/api/v1/captures?order=asc").json?["items"] as? [[String: Any]])
            #expect(all.compactMap { $0["id"] as? String } == (shared + plain).map(\.header.blobID.hex))
            #expect(all.prefix(5).map { $0["user"] as? String } == ["alice", "CORP\\carol", "alice", "CORP\\carol", "alice"])
            #expect(all.prefix(5).map { $0["display"] as? String } == [":1", ":2", ":1", ":2", ":1"])
            #expect(all.suffix(2).allSatisfy { $0["user"] is NSNull && $0["display"] is NSNull }, "no session: null, not absent")

            // user= alone and with agent=, two a page by cursor: alice's three, in order.
            for base in ["/api/v1/captures?user=alice&order=asc&limit=2", "/api/v1/captures?agent=terminal-server&user=alice&order=asc&limit=2"] {
                var seen: [String] = [], cursor: String?, pages = 0
                repeat {
                    let r = try await c.get(base + (cursor.map { "&after=\($0)" } ?? ""))
                    let items = try #require(r.json?["items"] as? [[String: Any]], "\(r.text)")
                    #expect(items.allSatisfy { $0["user"] as? String == "alice" && $0["display"] as? String == ":1" })
                    seen += items.compactMap { $0["id"] as? String }
                    cursor = r.json?["next"] as? String
                    pages += 1
                } while cursor != nil && pages < 5
                #expect(seen == [shared[0], shared[2], shared[4]].map(\.header.blobID.hex) && pages == 2, "\(base)")
            }
            let carols = try await c.get("/api/v1/captures?user=CORP%5Ccarol")
            #expect((carols.json?["items"] as? [[String: Any]])?.compactMap { $0["id"] as? String }
                    == [shared[3], shared[1]].map(\.header.blobID.hex), "newest first; a percent-encoded backslash")
            let nobody = try await c.get("/api/v1/captures?user=alice&agent=old-agent")
            #expect((nobody.json?["items"] as? [[String: Any]])?.isEmpty == true && nobody.json?["next"] is NSNull)

            // Bad names: a '/', '..', a control or bidi character, empty, 129 bytes: 400 naming user.
            for bad in ["a%2Fb", "..", "%1B%5B31m", "invoice%E2%80%AEtxt", "", String(repeating: "x", count: 129)] {
                let r = try await c.get("/api/v1/captures?user=\(bad)")
                #expect(r.status == 400 && r.error?.hasPrefix("user: expected a user name") == true, "\(bad): \(r.text)")
                #expect(r.text.contains("\u{1B}") == false, "the refused value is not echoed raw")
            }
        }
    }

    /// A blob whose stored bytes cannot be read (its blob file cut short, then deleted: QA found
    /// `/sealed` answered 200 and then broke the body): `/sealed` and `POST /plain` answer every
    /// other item and, in the unreadable one's place, a status entry naming it; `GET …/plain`
    /// fails before the head with a JSON error naming the capture.
    @Test func unreadableBlobFilesAreNamedNotACutAnswer() async throws {
        let keyDir = try TempDir("custos-admin-unreadable-keys")
        defer { keyDir.remove() }
        let e2ee = try makeTestKEK(in: keyDir.path, name: "e2ee")
        let own = try makeTestKEK(in: keyDir.path, name: "own")
        chmod(own.privateKey, 0o600)
        try await Rig.with("unreadable", admin: TestAdminListener(serverPrivateKeyFile: own.privateKey)) { rig in
            try await rig.addAccounts()
            let s = rig.collector.storage
            let agentClient = try AdminClient(url: rig.collector.url, caFile: rig.collector.pki.rootCertificate)
            /// Uploads through the agent API; payloads of 40 KiB go to the SQLite blob file.
            func upload(_ agent: String, kek: (publicKey: String, privateKey: String), sizes: [Int]) async throws -> (DEKRecord, [SealedBlob], [Data]) {
                _ = try await s.registerKEK(KEKRegistration(pubDatafile: kek.publicKey, publicKeyPEM: nil, privDatafile: nil, kekID: nil))
                let token = try await s.addAgent(try AgentID(agent))
                let session = try DEKSession(kek: try KEKPublicKey(pemFile: kek.publicKey), agentID: agent)
                var plain: [Data] = [], blobs: [SealedBlob] = []
                for (i, size) in sizes.enumerated() {
                    let p = Data((0..<size).map { _ in UInt8.random(in: 0...255) })
                    plain.append(p)
                    blobs.append(try session.seal(p, kind: .generic, captureTimeMs: 1_700_000_000_000 + Int64(i)))
                }
                let body = RecordStream.encode([.dekRecord(session.record)] + blobs.map { .blob($0) })
                let r = try await agentClient.request("POST", "/v1/records", body: body, origin: .some(nil), cookies: false,
                                                      headers: ["Authorization": "Bearer \(agent):\(token.revealed)",
                                                                "Content-Type": "application/vnd.custos.records"])
                try #require(r.status == 200, "upload: \(r.text)")
                return (session.record, blobs, plain)
            }
            let (dek, blobs, _) = try await upload("e2ee-host", kek: e2ee, sizes: [100, 40 << 10, 100])
            let (_, ownBlobs, ownPlain) = try await upload("plain-host", kek: own, sizes: [40 << 10, 100])
            let blobDir = rig.collector.databasePath + ".blobs"
            let files = try FileManager.default.contentsOfDirectory(atPath: blobDir).filter { $0.hasSuffix(".blobs") }
            try #require(files.count == 1, "the two large blobs are in one blob file: \(files)")
            let file = blobDir + "/" + files[0]

            /// The 26-byte status entry of docs/API.md "Opened items" (built here from the spec).
            func entry(_ blob: SealedBlob, _ status: UInt8) -> Data {
                Data("CPLN".utf8) + Data([1, status, 0, 0, 0, 26]) + Data(blob.header.blobID.bytes)
            }
            let c = rig.client
            #expect(try await c.login("ann", Self.password).status == 200)
            let asked = blobs.map(\.header.blobID.hex)
            // Cut short: the large blob (the file's first) is unreadable, the others are sent.
            try #require(truncate(file, 1000) == 0)
            let cut = try await c.post("/api/v1/sealed", json: ["deks": [dek.dekID.hex], "blobs": asked])
            #expect(cut.status == 200 && cut.headers["x-custos-missing"] == "0", "\(cut.status) \(cut.text)")
            #expect(cut.body == dek.serialized + blobs[0].serialized + entry(blobs[1], 4) + blobs[2].serialized,
                    "\(cut.body.count) bytes")
            // Deleted: the same, and the collector-sealed large item too.
            try FileManager.default.removeItem(atPath: file)
            let gone = try await c.post("/api/v1/sealed", json: ["deks": [String](), "blobs": asked])
            #expect(gone.body == blobs[0].serialized + entry(blobs[1], 4) + blobs[2].serialized, "\(gone.body.count) bytes")
            let batch = try await c.post("/api/v1/plain", json: ["ids": ownBlobs.map(\.header.blobID.hex)])
            let frames = try Self.plainFrames(batch.body)
            #expect(batch.status == 200 && frames.map(\.status) == [4, 0], "unreadable, opened: \(frames.map(\.status))")
            #expect(frames.map(\.id) == ownBlobs.map(\.header.blobID.hex) && frames.last?.payload == ownPlain[1])
            let single = try await c.get("/api/v1/captures/\(ownBlobs[0].header.blobID.hex)/plain")
            #expect(single.status == 500 && single.headers["content-type"] == "application/json"
                    && single.error?.contains(ownBlobs[0].header.blobID.hex) == true
                    && single.error?.contains("cannot read its stored bytes") == true, "\(single.status) \(single.text)")
        }
    }

    /// A stored row whose agent id does not parse (typed in with `sqlite3`: bidi override and an
    /// escape sequence) makes the listings and `/plain` answer 500 naming the table and the
    /// escaped key, without `Retry-After` (retrying will not help), not 503 "retry later"; the
    /// collector logs it once (repeats at debug) and its recovery once.
    @Test func aDamagedRowIs500NamingItLoggedOnce() async throws {
        let keyDir = try TempDir("custos-admin-damaged-keys")
        defer { keyDir.remove() }
        let own = try makeTestKEK(in: keyDir.path, name: "own")
        chmod(own.privateKey, 0o600)
        let logs = LogCapture()
        try await Rig.with("damaged", admin: TestAdminListener(serverPrivateKeyFile: own.privateKey),
                           logger: logs.logger("collector")) { rig in
            try await rig.addAccounts()
            let s = rig.collector.storage
            _ = try await s.registerKEK(KEKRegistration(pubDatafile: own.publicKey, publicKeyPEM: nil, privDatafile: nil, kekID: nil))
            let token = try await s.addAgent(try AgentID("host-1"))
            let session = try DEKSession(kek: try KEKPublicKey(pemFile: own.publicKey), agentID: "host-1")
            let blobs = try (0..<2).map { i in try session.seal(Data("item \(i)".utf8), kind: .generic, captureTimeMs: 1_700_000_000_000 + Int64(i)) }
            let agentClient = try AdminClient(url: rig.collector.url, caFile: rig.collector.pki.rootCertificate)
            let up = try await agentClient.request("POST", "/v1/records", body: RecordStream.encode([.dekRecord(session.record)] + blobs.map { .blob($0) }),
                                                   origin: .some(nil), cookies: false,
                                                   headers: ["Authorization": "Bearer host-1:\(token.revealed)",
                                                             "Content-Type": "application/vnd.custos.records"])
            try #require(up.status == 200, "upload: \(up.text)")
            let c = rig.client
            #expect(try await c.login("vic", Self.password).status == 200)
            let before = try await c.get("/api/v1/captures")
            #expect(before.status == 200 && logs.count("damaged row") == 0)
            // The bad id, as the tester typed it: evil U+202E gnp.exe ESC [2J.
            let bad = "char(101,118,105,108,8238,103,110,112,46,101,120,101,27,91,50,74)"
            let victim = blobs[1].header.blobID.hex
            let sql = try runCommand(["/usr/bin/sqlite3", rig.collector.databasePath,
                                      "UPDATE captures SET agent_id = \(bad) WHERE blob_id = '\(victim)'; INSERT INTO agents (agent_id, token_hash, created_at) VALUES (\(bad), x'00', 1);"])
            try #require(sql.status == 0, "sqlite3: \(sql.stderr)")
            for _ in 1...3 {
                for (method, path, table) in [("GET", "/api/v1/agents", "agents"), ("GET", "/api/v1/captures", "captures"),
                                              ("POST", "/api/v1/plain", "captures")] {
                    let r = method == "GET" ? try await c.get(path) : try await c.post(path, json: ["ids": [victim]])
                    #expect(r.status == 500 && r.headers["retry-after"] == nil && r.headers["content-type"] == "application/json",
                            "\(path): \(r.status) \(r.text)")
                    let error = r.error ?? ""
                    #expect(error.contains("damaged row") && error.contains("\(table) row") && error.contains("\\u{202E}")
                            && error.contains("\\u{1B}") && !error.contains("\u{202E}") && !error.contains("retry later"), "\(path): \(error)")
                }
            }
            // Each kind of failure (route and row) logged once above debug, however often asked.
            let loud = logs.lines(atLeast: .info).filter { $0.contains("damaged row") }
            #expect(loud.count == 3, "once per route: \(loud)")
            #expect(loud.allSatisfy { !$0.contains("\u{202E}") && !$0.contains("\u{1B}") }, "escaped in the log")
            // Repaired: answers again, and the recovery is logged once.
            #expect(try runCommand(["/usr/bin/sqlite3", rig.collector.databasePath,
                                    "UPDATE captures SET agent_id = 'host-1' WHERE blob_id = '\(victim)'; DELETE FROM agents WHERE agent_id <> 'host-1';"]).status == 0)
            let agents = try await c.get("/api/v1/agents"), captures = try await c.get("/api/v1/captures")
            #expect(agents.status == 200 && captures.status == 200, "\(agents.text) \(captures.text)")
            #expect(logs.count("the storage answers again") == 2, "once for each of the two listings asked again")
        }
    }

    /// A method a route does not answer is 405 with `Allow` (before the Origin check), not 404;
    /// a time outside the range names the range.
    @Test func otherMethodsAre405WithAllowAndTimeRangesAreNamed() async throws {
        try await Rig.with("methods") { rig in
            try await rig.addAccounts()
            let c = rig.client
            #expect(try await c.login("vic", Self.password).status == 200)
            for (method, path, allow) in [("OPTIONS", "/api/v1/sealed", "POST"), ("PUT", "/api/v1/sealed", "POST"),
                                          ("DELETE", "/api/v1/session", "GET, HEAD"), ("PUT", "/api/v1/captures/\(String(repeating: "ab", count: 16))/plain", "GET, HEAD"),
                                          ("GET", "/api/v1/login", "POST"), ("POST", "/index.html", "GET, HEAD")] {
                for origin: String?? in [.none, .some(nil)] {
                    let r = try await c.request(method, path, origin: origin)
                    #expect(r.status == 405 && r.headers["allow"] == allow && r.error?.contains("method not allowed") == true,
                            "\(method) \(path): \(r.status) \(r.headers["allow"] ?? "no Allow") \(r.text)")
                    Self.expectSecurityHeaders(r, "\(method) \(path)")
                }
            }
            #expect(try await c.request("PUT", "/api/v1/nothing").status == 404, "no such route")
            let r = try await c.get("/api/v1/captures?since=-99999999999999")
            #expect(r.status == 400 && r.error == "since: expected Unix milliseconds from -62135596800000 to 253402300799999 (the years 1 to 9999)",
                    "\(r.text)")
        }
    }

    /// The items of a `POST /api/v1/plain` answer (docs/API.md "Opened items"), each header
    /// field checked.
    static func plainFrames(_ data: Data) throws -> [(status: UInt8, id: String, payload: Data)] {
        var out: [(status: UInt8, id: String, payload: Data)] = []
        var rest = data[...]
        while !rest.isEmpty {
            try #require(rest.count >= 26, "a frame header is 26 bytes; \(rest.count) left")
            let h = Array(rest.prefix(26))
            try #require(h[0..<4] == Array("CPLN".utf8)[...] && h[4] == 1, "magic and version")
            let total = h[6..<10].reduce(0) { $0 << 8 | Int($1) }
            try #require(total >= 26 && total <= rest.count, "length \(total)")
            out.append((h[5], h[10..<26].map { String(format: "%02x", $0) }.joined(), Data(rest.dropFirst(26).prefix(total - 26))))
            rest = rest.dropFirst(total)
        }
        return out
    }

    /// A session made on one collector instance is accepted by another on the same PostgreSQL.
    @Test(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
    func aSessionWorksOnEveryInstance() async throws {
        let cluster = try PostgresCollectorTests.shared.get()
        let dir = try TempDir("custos-admin-pg")
        defer { dir.remove() }
        let db = try await PostgresCollectorTests.Database.make(cluster, in: dir)
        let location = try StorageLocation(db.url, passwordFile: db.passwordFile)
        try await Rig.with("pg-a", location: location) { a in
            try await Rig.with("pg-b", location: location, pki: a.collector.pki) { b in
                try await TestAdmin.add(to: a.collector.storage, name: "ann", role: .decryptor, password: Self.password)
                #expect(try await a.client.login("ann", Self.password).status == 200)
                let onB = try b.newClient()
                try onB.useCookies(of: a.client)
                let session = try await onB.get("/api/v1/session")
                #expect(session.status == 200 && session.json?["name"] as? String == "ann", "\(session.text)")
                #expect(try await a.client.post("/api/v1/logout", json: [String: String]()).status == 204)
                #expect(try await onB.get("/api/v1/session").status == 401, "logged out on A: gone on B too")
            }
        }
    }
}

/// The admin keys of collector.cfg and the real binaries the browser tests drive:
/// `custos admins add --password-file`, then `custos-collector --config` with `admin-listen`
/// and `dashboard-dir` (docs/API.md "Admin API", "Running it for a browser test").
@Suite struct AdminConfigurationTests {
    @Test func adminKeysAreParsedAndCheckedNamingFileLineAndKey() throws {
        let dir = try TempDir("custos-admin-cfg")
        defer { dir.remove() }
        let pki = try sharedMaterial.get().pki
        let cfg = dir.file("collector.cfg")
        try writeCollectorConfig(cfg, pki: pki, listen: "127.0.0.1:0")
        #expect(try CollectorConfiguration(file: cfg).admin == nil, "no admin-listen: no admin listener")

        let key = dir.file("server.pem")
        try "not read here".write(toFile: key, atomically: true, encoding: .utf8)
        chmod(key, 0o600)
        try writeCollectorConfig(cfg, pki: pki, listen: "127.0.0.1:0", extra: "admin-listen=127.0.0.1:8444\ndashboard-dir=web\nserver-private-key-file=server.pem")
        let admin = try #require(try CollectorConfiguration(file: cfg).admin)
        #expect(admin.host == "127.0.0.1" && admin.port == 8444 && admin.tlsCertFile == pki.chain("leaf"))
        #expect(admin.dashboardDirectory == dir.file("web") && admin.serverPrivateKeyFile == key, "relative to the file's folder")
        #expect(admin.sessionIdle == .seconds(900) && admin.sessionMax == .seconds(43_200))

        chmod(key, 0o644)
        // The extra lines come after the generated ones: line numbers from the file as written.
        try writeCollectorConfig(cfg, pki: pki, listen: "127.0.0.1:0")
        let base = try String(contentsOfFile: cfg, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            .count - 1
        let (first, second) = ("collector.cfg:\(base + 1):", "collector.cfg:\(base + 2):")
        for (extra, expected) in [
            ("admin-listen=8444", "\(first) admin-listen: expected HOST:PORT"),
            ("admin-listen=127.0.0.1:1\nadmin-session-idle-minutes=0", "\(second) admin-session-idle-minutes:"),
            ("admin-listen=127.0.0.1:1\nadmin-session-max-hours=721", "\(second) admin-session-max-hours:"),
            ("server-private-key-file=server.pem", "\(first) server-private-key-file: '\(key)' has mode 644; expected 0600 or 0400"),
            ("server-private-key-file=missing.pem", "\(first) server-private-key-file: expected a private key file"),
        ] {
            try writeCollectorConfig(cfg, pki: pki, listen: "127.0.0.1:0", extra: extra)
            do {
                _ = try CollectorConfiguration(file: cfg)
                Issue.record("\(extra) was accepted")
            } catch {
                #expect(String(describing: error).contains(expected), "\(error)")
            }
        }
        // One HOST:PORT for both listeners: refused, naming admin-listen.
        try writeCollectorConfig(cfg, pki: pki, listen: "127.0.0.1:8443", extra: "admin-listen=127.0.0.1:8443")
        #expect {
            _ = try CollectorConfiguration(file: cfg)
        } throws: { String(describing: $0).contains("\(first) admin-listen: must differ from listen") }
    }

    @Test func theBuiltBinariesServeTheDashboardToALoggedInAdmin() async throws {
        let dir = try TempDir("custos-admin-bin")
        defer { dir.remove() }
        let pki = try sharedMaterial.get().pki
        let pw = dir.file("admin.pw")
        try "a long test password\n".write(toFile: pw, atomically: true, encoding: .utf8)
        chmod(pw, 0o600)
        let add = try await PostgresCollectorTests.custos(["admins", "add", "--db", dir.file("collector.db"), "--name", "ann",
                                                           "--role", "decryptor", "--password-file", pw])
        try #require(add.status == 0, "\(add.stderrString)")
        try FileManager.default.createDirectory(atPath: dir.file("dashboard"), withIntermediateDirectories: true)
        try "<!doctype html><title>Custos</title>".write(toFile: dir.file("dashboard/index.html"), atomically: true, encoding: .utf8)
        let adminPort = try freeLocalPort()
        try writeCollectorConfig(dir.file("collector.cfg"), pki: pki, listen: "127.0.0.1:0",
                                 extra: "admin-listen=127.0.0.1:\(adminPort)\ndashboard-dir=dashboard")
        let (collector, _) = try await PostgresCollectorTests.startCollector(dir.file("collector.cfg"), in: dir)
        defer { collector.send(SIGTERM); _ = collector.waitExit(timeout: 10) }
        _ = try await waitUntil(timeout: 30) { collector.log.contains("collector.admin_port=\(adminPort)") || !collector.isRunning }
        let client = try AdminClient(url: "https://127.0.0.1:\(adminPort)", caFile: pki.rootCertificate)
        #expect(try await client.get("/").text.contains("Custos"))
        let login = try await client.login("ann", "a long test password")
        #expect(login.status == 200, "\(login.text)")
        #expect(try await client.get("/api/v1/session").json?["role"] as? String == "decryptor")
        // The log has the requests, escaped, and never the password, cookie or token.
        let token = try #require(client.sessionToken)
        _ = try await client.get("/api/v1/captures?agent=%1B%5B31m")
        let log = collector.log
        #expect(log.contains("admin request") && !log.contains("a long test password") && !log.contains(token))
        #expect(!log.contains("\u{1B}"))
    }

    /// `custos dashboard`: the same API and pages on 127.0.0.1 from a copy of the database, a
    /// self-signed certificate made at start, a one-time login removed when it stops.
    @Test func localDashboardServesACopyWithAOneTimeLogin() async throws {
        let dir = try TempDir("custos-local-dashboard")
        defer { dir.remove() }
        let copy = dir.file("copy.db")
        let storage = try SQLiteStorage(path: copy)
        _ = try await storage.addAgent(try AgentID("ws-17"))
        await storage.close()
        try FileManager.default.createDirectory(atPath: dir.file("dashboard"), withIntermediateDirectories: true)
        try "<!doctype html><title>Custos local</title>".write(toFile: dir.file("dashboard/index.html"), atomically: true, encoding: .utf8)
        let port = try freeLocalPort()
        for listen in ["0.0.0.0:\(port)", "localhost:\(port)"] {
            let refused = try await PostgresCollectorTests.custos(["dashboard", "--db", copy, "--dashboard-dir", dir.file("dashboard"),
                                                                   "--listen", listen])
            #expect(refused.status == 2 && refused.stderrString.contains("loopback"), "\(listen): \(refused.stderrString)")
        }
        let sqliteBlobDir = try await PostgresCollectorTests.custos(["dashboard", "--db", copy, "--dashboard-dir", dir.file("dashboard"),
                                                                    "--db-blob-dir", dir.path])
        #expect(sqliteBlobDir.status == 2 && sqliteBlobDir.stderrString.contains("--db-blob-dir is for a postgres:// database only"),
                "\(sqliteBlobDir.stderrString)")
        let process = try BackgroundProcess(try builtProduct("custos"), ["dashboard", "--db", copy, "--dashboard-dir", dir.file("dashboard"),
                                                                       "--listen", "127.0.0.1:\(port)", "--one-time-login"],
                                            logPath: dir.file("dashboard.log"))
        defer { process.send(SIGTERM); _ = process.waitExit(timeout: 10) }
        #expect(try await waitUntil(timeout: 60) { process.log.contains("dashboard: https://127.0.0.1:\(port)/") || !process.isRunning },
                "\(process.log)")
        let log = process.log
        func value(_ key: String) -> String? {
            log.split(whereSeparator: \.isNewline).first { $0.hasPrefix(key) }.map { String($0.dropFirst(key.count)) }
        }
        let name = try #require(value("login: ")), password = try #require(value("password: "))
        let cert = try #require(value("certificate: ")?.split(separator: " ").first.map(String.init))
        #expect(!cert.contains("//"), "one slash between the folders: \(cert)")
        let client = try AdminClient(url: "https://127.0.0.1:\(port)", caFile: cert)
        #expect(try await client.get("/").text.contains("Custos local"))
        #expect(try await client.login(name, password).status == 200)
        let agents = try await client.get("/api/v1/agents")
        #expect((agents.json?["agents"] as? [[String: Any]])?.first?["id"] as? String == "ws-17", "\(agents.text)")
        process.send(SIGTERM)
        #expect(process.waitExit(timeout: 30) == 0, "\(process.log)")
        let after = try SQLiteStorage(path: copy)
        #expect(try await after.admins().isEmpty, "the one-time account is gone")
        await after.close()
    }
}

