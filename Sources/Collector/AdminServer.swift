import AdminAuth
import CollectorStorage
import CustosBase
import Envelope
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import Synchronization

/// The request context of the admin listener: Hummingbird's basic context plus the client's
/// address (audit records, the per-address login limit).
struct AdminRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: SocketAddress?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// The client's IP address as text (`?` when unknown).
    var clientIP: String { remoteAddress?.ipAddress ?? "?" }
}

/// The outermost middleware of the admin listener: every answer — routes, static files, 404s,
/// errors — leaves through it with the security headers (``SecurityHeaders``); every error
/// becomes `{"error": …}` with `Cache-Control: no-store`; a request body is read only up to
/// ``maxBodyBytes`` (413 above); a state-changing request (anything but GET and HEAD) needs an
/// `Origin` equal to `https://` + its `Host` (403 otherwise: a page of another site cannot post
/// to the API, even with the session cookie); each request is logged once, escaped (method,
/// path without its query, status, account, address), never a body, cookie or token.
struct AdminGuard: RouterMiddleware {
    typealias Context = AdminRequestContext
    /// The largest request body (a `/sealed` request of 500 + 500 ids is about 36 KB).
    static let maxBodyBytes = 64 << 10
    let logger: Logger

    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        do {
            try Self.checkMethod(request)
            try Self.checkOrigin(request)
            var bounded = request
            _ = try await bounded.collectBody(upTo: Self.maxBodyBytes)
            response = try await next(bounded, context)
        } catch let error as AdminHTTPError {
            response = error.response
        } catch let error as any HTTPResponseError {
            // Hummingbird's own: no route (404), a body over the limit (NIOTooManyBytesError: 413), ….
            let message = switch error.status {
            case .notFound: "not found"
            case .contentTooLarge: "body: larger than \(Self.maxBodyBytes) bytes"
            case .methodNotAllowed: "method not allowed"
            default: error.status.reasonPhrase
            }
            response = AdminHTTPError(error.status, message).response
        } catch {
            logger.error("admin request failed", metadata: ["admin.error": .safe(error)])
            response = AdminHTTPError(.internalServerError, "internal error").response
        }
        SecurityHeaders.apply(to: &response.headers)
        // HEAD (answered by the GET route, `autoGenerateHeadEndpoints`): the GET's status and
        // headers, Content-Length included, without the body; an error answer's too.
        if request.method == .head { response = response.createHeadResponse() }
        logger.info("admin request", metadata: [
            "admin.method": .safe(request.method.rawValue), "admin.path": .safe(request.uri.path),
            "admin.status": "\(response.status.code)", "admin.client": .safe(context.clientIP)])
        return response
    }

    /// The methods of each API route (``AdminAPI/router()``; HEAD with every GET); any other
    /// path is a static file: GET and HEAD.
    static let routeMethods: [(path: [String], methods: String)] = [
        (["api", "v1", "login"], "POST"), (["api", "v1", "logout"], "POST"), (["api", "v1", "session"], "GET, HEAD"),
        (["api", "v1", "agents"], "GET, HEAD"), (["api", "v1", "captures"], "GET, HEAD"),
        (["api", "v1", "captures", "*", "plain"], "GET, HEAD"), (["api", "v1", "plain"], "POST"),
        (["api", "v1", "sealed"], "POST"), (["api", "v1", "audit"], "GET, HEAD"), (["api", "v1", "client-report"], "POST"),
    ]

    /// The methods allowed on `path` (`Allow`), nil for an API path that is no route (404).
    static func allowedMethods(_ path: String) -> String? {
        let segments = path.split(separator: "/").map(String.init)
        guard segments.first == "api" else { return "GET, HEAD" }
        return routeMethods.first { route in
            route.path.count == segments.count && zip(route.path, segments).allSatisfy { $0 == "*" || $0 == $1 }
        }?.methods
    }

    /// - Throws: 405 with `Allow` for a method a route (or a static file) does not answer
    ///   (RFC 9110 15.5.6), before the Origin check, so `OPTIONS`, `PUT`, `DELETE` … get 405.
    static func checkMethod(_ request: Request) throws {
        guard let allowed = allowedMethods(request.uri.path) else { return }
        let names = allowed.components(separatedBy: ", ")
        guard !names.contains(request.method.rawValue) else { return }
        throw AdminHTTPError(.methodNotAllowed, "method not allowed: \(SafeText.escaped(request.method.rawValue)) (allowed: \(allowed))",
                             headers: [.allow: allowed])
    }

    /// - Throws: 403 when a state-changing request's `Origin` is missing or not its own.
    static func checkOrigin(_ request: Request) throws {
        guard request.method != .get, request.method != .head else { return }
        guard let origin = request.headers[.origin], let host = request.head.authority,
              origin.lowercased() == "https://" + host.lowercased() else {
            throw AdminHTTPError.forbidden("Origin: a state-changing request must come from this dashboard's own origin")
        }
    }
}

/// The admin API (docs/API.md "Admin API"): accounts' logins and sessions in the storage, the
/// listings, sealed bytes for decryptors, items sealed to the collector's own KEK opened here,
/// the audit log for auditors, client reports; and the dashboard's static files.
final class AdminAPI: Sendable {
    let storage: any CollectorStorage
    let configuration: AdminListenerConfiguration
    let limits: SessionLimits
    /// The collector's own KEK (`server-private-key-file`), nil: none.
    let ownKey: KEKPrivateKey?
    let addressLimiter = LoginRateLimiter()
    let failedLoginAudit = FailedLoginAuditBudget()
    /// Storage failures of this API by what was being done (``stored(_:_:)``'s `what`, a fixed
    /// set of texts), each logged once and its recovery once.
    private let storageLogs = Mutex<[String: RepeatedErrorLog]>([:])

    func storageLog(_ what: String) -> RepeatedErrorLog {
        storageLogs.withLock { logs in
            if let log = logs[what] { return log }
            let log = RepeatedErrorLog()
            logs[what] = log
            return log
        }
    }
    let files: StaticFiles
    let logger: Logger

    /// Failed logins that lock an account, and for how long.
    static let maxFailures = 5
    static let lockMs: Int64 = 15 * 60_000
    static let cookieName = "custos_session"
    /// Longest listing page.
    static let maxPage = 500
    /// Most ids of one `/sealed` request, per list.
    static let maxSealedIDs = 500

    init(storage: any CollectorStorage, configuration: AdminListenerConfiguration, ownKey: KEKPrivateKey?, logger: Logger) {
        self.storage = storage
        self.configuration = configuration
        self.ownKey = ownKey
        self.logger = logger
        let idleMs = Int64(configuration.sessionIdle.components.seconds) * 1000
        // `last_seen` is rewritten at most every 10 s, and well within the idle time.
        limits = SessionLimits(idleMs: idleMs, maxMs: Int64(configuration.sessionMax.components.seconds) * 1000,
                               touchMs: min(10_000, idleMs / 10))
        files = StaticFiles(directory: configuration.dashboardDirectory)
        if files.root == nil {
            logger.warning("dashboard-dir does not exist: the admin API is served, the dashboard's pages are not",
                           metadata: ["admin.dashboard_dir": .safe(configuration.dashboardDirectory)])
        }
    }

    static func nowMs() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    var idleMinutes: Int { max(1, Int(limits.idleMs / 60_000)) }
    var ownKEKIDs: [String] { ownKey.map { [$0.id.hex] } ?? [] }

    func sealedTo(_ kek: KEKID) -> String { kek == ownKey?.id ? "collector" : "e2ee" }

    // MARK: Router

    func router() -> Router<AdminRequestContext> {
        // HEAD answers like GET without the body (RFC 9110 9.3.2), for static files and API GETs.
        let router = Router(context: AdminRequestContext.self, options: .autoGenerateHeadEndpoints)
        router.add(middleware: AdminGuard(logger: logger))
        let api = router.group("api/v1")
        api.post("login") { request, context in try await self.login(request, context) }
        api.post("logout") { request, _ in try await self.logout(request) }
        api.get("session", use: authed(.view) { _, _, session in
            AdminJSON.response(["name": session.admin.rawValue, "role": session.role.rawValue, "idleMinutes": self.idleMinutes,
                                "ownKEKIDs": self.ownKEKIDs])
        })
        api.get("agents", use: authed(.view) { request, _, _ in try await self.agents(request) })
        api.get("captures", use: authed(.view) { request, _, _ in try await self.captures(request) })
        api.get("captures/:id/plain", use: authed(.view) { request, context, session in
            try await self.plain(request, context, session)
        })
        api.post("plain", use: authed(.view) { request, context, session in try await self.plainBatch(request, context, session) })
        api.post("sealed", use: authed(.fetchSealed) { request, context, session in try await self.sealed(request, context, session) })
        api.get("audit", use: authed(.readAudit) { request, _, _ in try await self.audit(request) })
        api.post("client-report", use: authed(.view) { request, context, session in
            try await self.clientReport(request, context, session)
        })
        router.get("/") { request, _ in try await self.staticFile(request) }
        router.get("**") { request, _ in try await self.staticFile(request) }
        return router
    }

    /// A handler that runs only for a valid session whose role allows `permission` (the one
    /// place roles are checked: ``AdminRole/allows(_:)``): 401 without a session, 403 for a role
    /// that may not, 503 when the storage cannot say.
    func authed(_ permission: AdminRole.Permission,
                _ body: @escaping @Sendable (Request, AdminRequestContext, AdminSession) async throws -> Response)
        -> @Sendable (Request, AdminRequestContext) async throws -> Response {
        { request, context in
            let session = try await self.session(request)
            guard session.role.allows(permission) else {
                throw AdminHTTPError.forbidden("\("\(session.role)".first.map { "aeiou".contains($0) } == true ? "an" : "a") \(session.role) may not do this")
            }
            return try await body(request, context, session)
        }
    }

    /// The session cookie's value, nil without one.
    static func cookie(_ request: Request) -> String? {
        for header in request.headers[values: .cookie] {
            for part in header.split(separator: ";") {
                let pair = part.trimmingCharacters(in: .whitespaces)
                if pair.hasPrefix(cookieName + "=") { return String(pair.dropFirst(cookieName.count + 1)) }
            }
        }
        return nil
    }

    func session(_ request: Request) async throws -> AdminSession {
        guard let token = Self.cookie(request), token.utf8.count == 43 else { throw AdminHTTPError.notLoggedIn }
        do {
            guard let s = try await storage.session(tokenHash: AgentToken.hash(Secret(token)), nowMs: Self.nowMs(), limits: limits) else {
                throw AdminHTTPError.notLoggedIn
            }
            return s
        } catch let error as StorageError {
            throw storageFailure("check a session", error)
        }
    }

    /// Runs a storage call; a failure is ``storageFailure(_:_:)``'s answer. A success after a
    /// failure logs the recovery once.
    @discardableResult
    func stored<T>(_ what: String, _ call: () async throws(StorageError) -> T) async throws -> T {
        do {
            let result = try await call()
            storageLog(what).success("admin: the storage answers again", metadata: ["admin.what": "\(what)"], logger: logger)
            return result
        } catch {
            throw storageFailure(what, error)
        }
    }

    /// The answer to a storage failure, logged once per kind (``RepeatedErrorLog``: repeats at
    /// debug, the recovery once): a row this build cannot read (`.corrupt`) is 500 naming the
    /// table and the row's escaped key (retrying will not help); anything else is 503 with
    /// `Retry-After` (the database is down or busy).
    func storageFailure(_ what: String, _ error: StorageError) -> AdminHTTPError {
        let corrupt = error.code == .corrupt
        storageLog(what).failure(corrupt ? "admin: the database holds a damaged row" : "admin: storage failed",
                                 key: "\(error.code) " + RepeatedErrorLog.key(of: error.message),
                                 level: corrupt ? .error : .warning,
                                 metadata: ["admin.what": "\(what)", "admin.error": .safe(error.message)], logger: logger)
        return corrupt ? .damaged(error.message) : .unavailable()
    }

    // MARK: Login

    static let wrongLogin = AdminHTTPError(.unauthorized, "wrong name or password")

    func login(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let ip = context.clientIP
        if let wait = addressLimiter.retryAfter(ip) {
            // Not counted and not audited: the address was audited up to its limit (failedLogin).
            throw AdminHTTPError(.tooManyRequests, "too many failed logins from this address; retry later",
                                 headers: [.retryAfter: "\(wait)"])
        }
        let body = try await AdminJSON.object(request)
        guard let nameText = body["name"] as? String else { throw AdminHTTPError.badParameter("name", "expected a string") }
        guard let passwordText = body["password"] as? String else { throw AdminHTTPError.badParameter("password", "expected a string") }
        let totp = body["totp"]
        guard totp == nil || totp is String || totp is NSNull else { throw AdminHTTPError.badParameter("totp", "expected a string of 6 digits") }
        let password = Secret(passwordText)
        let nowMs = Self.nowMs()
        guard let name = try? AdminName(nameText) else {
            // Not a name any account can have: nothing to count it under, nothing to reveal.
            _ = await AdminPassword.verify(password, hash: AdminPassword.dummyHash)
            await failedLogin(ip, actor: "-", detail: "not an admin name \(SafeText.quoted(String(nameText.prefix(80))))")
            logger.notice("admin login refused: not an admin name", metadata: ["admin.name": .safe(nameText), "admin.client": .safe(ip)])
            throw Self.wrongLogin
        }
        // A name that is not an account is counted and locked like one (in the storage, so on
        // every instance), and checked against a dummy hash: the same answers, the same work.
        let account = try await stored("read an account") { () throws(StorageError) in try await storage.admin(name) }
        let lockedUntil: Int64? = if let account {
            account.lockedUntilMs.flatMap { $0 > nowMs ? $0 : nil }
        } else {
            try await stored("read a login lock") { () throws(StorageError) in try await storage.loginLockedUntil(name, nowMs: nowMs) }
        }
        if let until = lockedUntil {
            throw AdminHTTPError(.tooManyRequests, "too many failed logins; the account is locked for now",
                                 headers: [.retryAfter: "\((until - nowMs + 999) / 1000)"])
        }
        var good = await AdminPassword.verify(password, hash: account?.passwordHash ?? AdminPassword.dummyHash) && account != nil
        var refusal = Self.wrongLogin
        if good, let account, let secret = account.totpSecret {
            let code = (totp as? String) ?? ""
            if code.isEmpty {
                refusal = AdminHTTPError(.unauthorized, "totp: a 6-digit code is required for this account")
                good = false
            } else if let step = AdminTOTP.matchingStep(code: code, secret: secret) {
                // Each code is accepted once (one conditional UPDATE, so on one instance only).
                good = try await stored("record a TOTP step") { () throws(StorageError) in
                    try await storage.acceptTOTPStep(name, step: step)
                }
                if !good { refusal = AdminHTTPError(.unauthorized, "totp: this code was used already; wait for the next one") }
            } else {
                refusal = AdminHTTPError(.unauthorized, "totp: wrong code")
                good = false
            }
        }
        guard good, let account else {
            await failedLogin(ip, actor: name.rawValue, detail: account == nil ? "no account of this name" : refusal.message)
            let failure = try await stored("count a failed login") { () throws(StorageError) in
                try await storage.recordFailedLogin(name, nowMs: nowMs, maxFailures: Self.maxFailures, lockMs: Self.lockMs)
            }
            logger.notice("admin login refused", metadata: ["admin.name": .safe(name), "admin.client": .safe(ip),
                                                           "admin.failures": "\(failure.failures)",
                                                           "admin.known": "\(account != nil)"])
            if let until = failure.lockedUntilMs {
                let what = account == nil ? " (no account of this name)" : ""
                _ = try? await storage.appendAudit(actor: name.rawValue, action: "admin.locked",
                                                   detail: "\(Self.maxFailures) failed logins\(what); locked until \(isoTime(unixMs: until)); last from \(ip)")
            }
            throw refusal
        }
        let token = AgentToken.new()
        try await stored("start a session") { () throws(StorageError) in
            if account.failedLogins != 0 || account.lockedUntilMs != nil { try await storage.recordSuccessfulLogin(name) }
            try await storage.createSession(admin: name, tokenHash: AgentToken.hash(token), nowMs: nowMs)
            _ = try await storage.deleteExpiredSessions(nowMs: nowMs, limits: limits)
            try await storage.appendAudit(actor: name.rawValue, action: "admin.login", detail: "role=\(account.role) from \(ip)")
        }
        logger.info("admin logged in", metadata: ["admin.name": .safe(name), "admin.role": "\(account.role)", "admin.client": .safe(ip)])
        return AdminJSON.response(["name": name.rawValue, "role": account.role.rawValue, "idleMinutes": idleMinutes],
                                  headers: [.setCookie: "\(Self.cookieName)=\(token.revealed); Path=/; HttpOnly; Secure; SameSite=Strict"])
    }

    /// Counts a failed login at the client's address and appends its audit record
    /// (`admin.login-failed`, actor the name tried or `-`), bounded: only while the address is
    /// under its limit, and within ``FailedLoginAuditBudget`` (docs/DASHBOARD.md "Failed
    /// logins"). The failure that reaches the address's limit says so and until when. A failed
    /// append is logged, never the login's answer.
    func failedLogin(_ ip: String, actor: String, detail: String) async {
        let count = addressLimiter.failed(ip)
        guard count <= addressLimiter.maxFailures else { return }
        let nowMs = Self.nowMs()
        var text = "\(detail); failure \(count) of \(addressLimiter.maxFailures) allowed from \(ip) in \(addressLimiter.window.components.seconds / 60) min"
        if count == addressLimiter.maxFailures, let wait = addressLimiter.retryAfter(ip) {
            text += "; this address is refused until \(isoTime(unixMs: nowMs + Int64(wait) * 1000))"
        }
        let (action, record): (String, String)
        switch failedLoginAudit.admit() {
        case .record: (action, record) = ("admin.login-failed", text)
        case .lastNotice:
            (action, record) = ("admin.login-failed-unrecorded", "more than \(failedLoginAudit.budget) failed logins in \(failedLoginAudit.window.components.seconds / 60) min; further ones until \(isoTime(unixMs: failedLoginAudit.windowEndMs(nowMs: nowMs))) are only logged (the last: \(text))")
        case .skip: return
        }
        do { try await storage.appendAudit(actor: actor, action: action, detail: record) } catch {
            _ = storageFailure("audit a failed login", error)
        }
    }

    func logout(_ request: Request) async throws -> Response {
        if let token = Self.cookie(request), token.utf8.count == 43 {
            try await stored("end a session") { () throws(StorageError) in
                try await storage.deleteSession(tokenHash: AgentToken.hash(Secret(token)))
            }
        }
        var response = Response(status: .noContent)
        response.headers[.setCookie] = "\(Self.cookieName)=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"
        response.headers[.cacheControl] = "no-store"
        return response
    }

    // MARK: Listings

    /// `limit` (1–500, default 100).
    static func limit(_ request: Request) throws -> Int {
        guard let text = request.uri.queryParameters["limit"] else { return 100 }
        guard let n = Int(text), (1...maxPage).contains(n) else {
            throw AdminHTTPError.badParameter("limit", "expected a whole number from 1 to \(maxPage)")
        }
        return n
    }

    func agents(_ request: Request) async throws -> Response {
        let limit = try Self.limit(request)
        var after: AgentID?
        if let text = request.uri.queryParameters["after"] {
            guard let id = try? AgentID(String(text)) else { throw AdminHTTPError.badParameter("after", "expected an agent id") }
            after = id
        }
        // One range of the agents' primary key (one more row than the page says whether a next
        // page exists); each agent on the page then costs one index range of its newest captures
        // (`captures (agent_id, capture_time, blob_id)`, read backwards).
        let rest = try await stored("list agents") { () throws(StorageError) in try await storage.agents(after: after, limit: limit + 1) }
        let page = Array(rest.prefix(limit))
        var items: [[String: Any]] = []
        for agent in page {
            let recent = try await stored("list an agent's captures") { () throws(StorageError) in
                try await storage.captures(CaptureQuery(agentID: agent.id, order: .descending), after: nil, limit: 20)
            }
            var keks: [String] = []
            for item in recent.items where !keks.contains(item.kekID.hex) { keks.append(item.kekID.hex) }
            let kinds = Set(recent.items.map { sealedTo($0.kekID) })
            let sealed = kinds.isEmpty ? "none" : kinds.count > 1 ? "mixed" : kinds.first!
            items.append(["id": agent.id.rawValue, "createdMs": agent.createdAtMs,
                          "lastCaptureMs": recent.items.first.map { $0.captureTimeMs as Any } ?? NSNull(),
                          "kekIDs": keks, "sealedTo": sealed])
        }
        let next: Any = rest.count > limit ? page.last!.id.rawValue : NSNull()
        return AdminJSON.response(["agents": items, "next": next])
    }

    func captures(_ request: Request) async throws -> Response {
        let q = request.uri.queryParameters
        var query = CaptureQuery(order: .descending)
        if let text = q["agent"] {
            guard let id = try? AgentID(String(text)) else { throw AdminHTTPError.badParameter("agent", "expected an agent id") }
            query.agentID = id
        }
        if let text = q["kind"] {
            guard let kind = CaptureKind(name: String(text)) else {
                throw AdminHTTPError.badParameter("kind", "expected screen, keystrokes, generic or activity")
            }
            query.kind = kind
        }
        if let text = q["user"] {
            // The one validator (CustosBase.UserName); the storage answers it from the user
            // indexes (`captures (user_name, …)`, `captures (agent_id, user_name, …)`).
            do { query.user = try UserName(String(text)) } catch {
                throw AdminHTTPError.badParameter("user", "expected a user name: 1-128 UTF-8 bytes without '/', control or bidirectional characters, not '.' or '..'")
            }
        }
        for (key, path) in [("since", \CaptureQuery.sinceMs), ("until", \CaptureQuery.untilMs)] {
            if let text = q[Substring(key)] {
                guard let ms = Int64(String(text)), StorageCheck.timeRangeMs.contains(ms) else {
                    throw AdminHTTPError.badParameter(key, "expected Unix milliseconds from \(StorageCheck.timeRangeMs.lowerBound) to \(StorageCheck.timeRangeMs.upperBound) (the years 1 to 9999)")
                }
                query[keyPath: path] = ms
            }
        }
        if let text = q["order"] {
            switch String(text) {
            case "asc": query.order = .ascending
            case "desc": query.order = .descending
            default: throw AdminHTTPError.badParameter("order", "expected asc or desc")
            }
        }
        var cursor: CaptureCursor?
        if let text = q["after"] {
            guard let c = CaptureCursor(token: String(text)), StorageCheck.timeRangeMs.contains(c.captureTimeMs) else {
                throw AdminHTTPError.badParameter("after", "expected a cursor from an earlier page's next")
            }
            cursor = c
        }
        let limit = try Self.limit(request)
        let page = try await stored("list captures") { () throws(StorageError) in
            try await storage.captures(query, after: cursor, limit: limit)
        }
        let items: [[String: Any]] = page.items.map { c in
            ["id": c.blobID.hex, "agent": c.agentID.rawValue, "kind": c.kind.name, "timeMs": c.captureTimeMs,
             "sequence": c.sequence, "dekID": c.dekID.hex, "kekID": c.kekID.hex, "bytes": c.size, "sealedTo": sealedTo(c.kekID),
             "user": c.user.map { $0.rawValue as Any } ?? NSNull(), "display": c.display.map { $0 as Any } ?? NSNull()]
        }
        return AdminJSON.response(["items": items, "next": page.next.map { $0.token as Any } ?? NSNull()])
    }

    func audit(_ request: Request) async throws -> Response {
        let limit = try Self.limit(request)
        var before: Int64?
        if let text = request.uri.queryParameters["before"] {
            guard let id = Int64(String(text)), id >= 1 else { throw AdminHTTPError.badParameter("before", "expected an entry id") }
            before = id
        }
        let entries = try await stored("read the audit log") { () throws(StorageError) in
            try await storage.auditEntries(before: before, limit: limit + 1)
        }
        let page = entries.prefix(limit)
        let items: [[String: Any]] = page.map { ["id": $0.id, "timeMs": $0.atMs, "actor": $0.actor, "action": $0.action, "detail": $0.detail] }
        let next: Any = entries.count > limit ? page.last!.id : NSNull()
        return AdminJSON.response(["entries": items, "next": next])
    }

    // MARK: Sealed bytes and collector-sealed items

    /// Ids of a request's list: at most `max` (default ``maxSealedIDs``) of 32 hex digits each.
    static func ids<Kind: IdentifierKind>(_ value: Any?, _ name: String, _: Kind.Type, max: Int = maxSealedIDs) throws -> [FixedLengthID<Kind>] {
        guard let value else { return [] }
        guard let list = value as? [Any] else { throw AdminHTTPError.badParameter(name, "expected a list of ids") }
        guard list.count <= max else { throw AdminHTTPError.badParameter(name, "at most \(max) ids") }
        return try list.enumerated().map { i, item in
            guard let text = item as? String, let id = FixedLengthID<Kind>(hex: text.lowercased()) else {
                throw AdminHTTPError.badParameter("\(name)[\(i)]", "expected \(Kind.byteCount * 2) hex digits")
            }
            return id
        }
    }

    /// `POST /api/v1/sealed`: the DEK records asked for, then the sealed blobs, each exactly as
    /// stored, as one record stream (docs/FORMAT.md); ids not found are counted in
    /// `X-Custos-Missing`. One audit record per request, written before any byte is sent (no
    /// audit record, no bytes). Blobs are read one at a time while the answer is written: a blob
    /// gone since (retention) or whose bytes cannot be read (a blob file missing or cut short,
    /// the database failing midway) is answered in its place by a 26-byte ``PlainFrame`` with
    /// status `notFound` or `unreadable` naming it, so the answer is never cut and the reader
    /// knows which item is missing (docs/API.md "Admin API"); unreadable ones are logged once
    /// per request.
    func sealed(_ request: Request, _ context: AdminRequestContext, _ session: AdminSession) async throws -> Response {
        let body = try await AdminJSON.object(request)
        let blobIDs = try Self.ids(body["blobs"], "blobs", BlobIDKind.self)
        let dekIDs = try Self.ids(body["deks"], "deks", DEKIDKind.self)
        let storage = self.storage
        var records: [Data] = []
        for id in dekIDs {
            if let r = try await stored("read a DEK record", { () throws(StorageError) in try await storage.dekRecord(id) }) {
                records.append(r)
            }
        }
        var present: [BlobID] = []
        for id in blobIDs {
            if try await stored("read a capture", { () throws(StorageError) in try await storage.capture(id) }) != nil {
                present.append(id)
            }
        }
        let missing = (dekIDs.count - records.count) + (blobIDs.count - present.count)
        func listed(_ ids: [String]) -> String { ids.prefix(20).joined(separator: ",") + (ids.count > 20 ? ",…" : "") }
        try await stored("append the audit record") { () throws(StorageError) in
            try await storage.appendAudit(actor: session.admin.rawValue, action: "admin.fetch-sealed",
                                          detail: "deks=\(records.count) blobs=\(present.count) missing=\(missing) from \(context.clientIP); deks: \(listed(dekIDs.map(\.hex))); blobs: \(listed(blobIDs.map(\.hex)))")
        }
        let logger = self.logger
        let (deks, blobs) = (records, present)
        let bodyWriter = ResponseBody { writer in
            for r in deks { try await writer.write(ByteBuffer(bytes: r)) }
            var unreadable: [String] = [], firstError = ""
            for id in blobs {
                // The head is sent already: an item that cannot be sent gets a status entry.
                do {
                    if let bytes = try await storage.blob(id) {
                        try await writer.write(ByteBuffer(bytes: bytes))
                    } else {
                        try await writer.write(PlainFrame.buffer(id, .notFound))
                    }
                } catch let error as StorageError {
                    if unreadable.isEmpty { firstError = error.message }
                    unreadable.append(id.hex)
                    try await writer.write(PlainFrame.buffer(id, .unreadable))
                }
            }
            if !unreadable.isEmpty {
                logger.error("admin: sealed blobs cannot be read; answered as unreadable entries", metadata: [
                    "admin.count": "\(unreadable.count)", "admin.blobs": "\(unreadable.prefix(20).joined(separator: ","))\(unreadable.count > 20 ? ",…" : "")", "admin.error": .safe(firstError)])
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/octet-stream", .cacheControl: "no-store",
                                               .init("X-Custos-Missing")!: "\(missing)"], body: bodyWriter)
    }

    // MARK: Client reports

    static let clientActions: Set<String> = ["decrypted", "exported", "lock"]

    func clientReport(_ request: Request, _ context: AdminRequestContext, _ session: AdminSession) async throws -> Response {
        let body = try await AdminJSON.object(request)
        guard let action = body["action"] as? String, Self.clientActions.contains(action) else {
            throw AdminHTTPError.badParameter("action", "expected decrypted, exported or lock")
        }
        var count = 0
        if let value = body["count"] {
            // `value is Bool` is true for the JSON numbers 0 and 1 on Linux (swift-corelibs NSNumber
            // bridging); a JSON true/false is the NSNumber whose objCType is "c".
            let isBool = (value as? NSNumber).map { String(cString: $0.objCType) == "c" } ?? (value is Bool)
            guard let n = value as? Int, (0...1_000_000_000).contains(n), !isBool else {
                throw AdminHTTPError.badParameter("count", "expected a whole number from 0")
            }
            count = n
        }
        var detail = ""
        if let value = body["detail"] {
            guard let text = value as? String, text.count <= 500 else {
                throw AdminHTTPError.badParameter("detail", "expected text of at most 500 characters")
            }
            detail = text
        }
        try await stored("append the audit record") { () throws(StorageError) in
            try await storage.appendAudit(actor: session.admin.rawValue, action: "client.\(action)",
                                          detail: "client-reported: count=\(count) from \(context.clientIP): \(SafeText.escaped(detail))")
        }
        return Response(status: .noContent, headers: [.cacheControl: "no-store"])
    }

    // MARK: Static files

    func staticFile(_ request: Request) async throws -> Response {
        let path = request.uri.path
        guard !path.hasPrefix("/api/"), let file = files.file(forPath: path), let data = await StaticFiles.read(file.path) else {
            throw AdminHTTPError(.notFound, "not found")
        }
        return Response(status: .ok, headers: [.contentType: file.contentType, .cacheControl: "no-cache"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
