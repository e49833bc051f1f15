import CustosBase
import Foundation
import Hummingbird
import NIOCore
import Synchronization

/// An answer of the admin API other than success: a status and `{"error": message}`, with
/// extra headers (`Retry-After`). Thrown by handlers; ``AdminGuard`` turns every error into one.
struct AdminHTTPError: Error {
    let status: HTTPResponse.Status
    let message: String
    var headers: HTTPFields = [:]

    init(_ status: HTTPResponse.Status, _ message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.message = message
        self.headers = headers
    }

    /// 400 naming the parameter and what was expected.
    static func badParameter(_ name: String, _ expected: String) -> AdminHTTPError {
        AdminHTTPError(.badRequest, "\(name): \(expected)")
    }
    static let notLoggedIn = AdminHTTPError(.unauthorized, "not logged in, or the session expired")
    static func forbidden(_ why: String) -> AdminHTTPError { AdminHTTPError(.forbidden, why) }
    /// 500 for a stored row this build cannot read: `message` names the table, the row's key
    /// (escaped) and the column (``StorageError`` `.corrupt`). Retrying does not help, so no
    /// `Retry-After`.
    static func damaged(_ message: String) -> AdminHTTPError {
        AdminHTTPError(.internalServerError, "the collector's database holds a damaged row (retrying will not help; repair or remove the row): \(message)")
    }
    static func unavailable(retryAfter: Int = 5) -> AdminHTTPError {
        AdminHTTPError(.serviceUnavailable, "the collector's storage is unavailable; retry later",
                       headers: [.retryAfter: "\(retryAfter)"])
    }

    var response: Response { AdminJSON.response(["error": message], status: status, headers: headers) }
}

/// JSON answers of the admin API (`JSONSerialization`, so `null` is written where the contract
/// has it), all with `Cache-Control: no-store`.
enum AdminJSON {
    static func response(_ object: [String: Any], status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        var fields = headers
        fields[.contentType] = "application/json"
        fields[.cacheControl] = "no-store"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// The request body as a JSON object.
    /// - Throws: 400 `body: expected a JSON object …`.
    static func object(_ request: Request) async throws -> [String: Any] {
        var request = request
        let buffer = try await request.collectBody(upTo: AdminGuard.maxBodyBytes)
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any] else {
            throw AdminHTTPError.badParameter("body", "expected a JSON object")
        }
        return object
    }
}

/// The headers every answer of the admin listener carries (docs/API.md "Admin API").
enum SecurityHeaders {
    static let contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

    static func apply(to headers: inout HTTPFields) {
        headers[.contentSecurityPolicy] = contentSecurityPolicy
        headers[.xContentTypeOptions] = "nosniff"
        headers[.init("Referrer-Policy")!] = "no-referrer"
        headers[.init("X-Frame-Options")!] = "DENY"
        headers[.strictTransportSecurity] = "max-age=31536000"
    }
}

/// Failed logins per client IP address, in this process's memory (the per-account count is in
/// the database): more than ``maxFailures`` within ``window`` and that address gets 429 with
/// `Retry-After` until its window ends. A successful login does not clear the address's count
/// (else an attacker's own account would reset it between guesses). At most ``maxAddresses``
/// addresses are tracked; when full, those whose window ended are dropped, then the oldest.
final class LoginRateLimiter: Sendable {
    let maxFailures: Int
    let window: Duration
    static let maxAddresses = 10_000
    private let state = Mutex<[String: (failures: Int, since: ContinuousClock.Instant)]>([:])

    init(maxFailures: Int = 20, window: Duration = .seconds(15 * 60)) {
        self.maxFailures = maxFailures
        self.window = window
    }

    /// Seconds the address must wait, nil when it may try.
    func retryAfter(_ address: String, now: ContinuousClock.Instant = .now) -> Int? {
        state.withLock { s in
            guard let entry = s[address] else { return nil }
            let elapsed = entry.since.duration(to: now)
            if elapsed >= window { s[address] = nil; return nil }
            guard entry.failures >= maxFailures else { return nil }
            return max(1, Int((window - elapsed).components.seconds) + 1)
        }
    }

    /// Counts a failure; returns the address's failures in its current window (this one included).
    @discardableResult
    func failed(_ address: String, now: ContinuousClock.Instant = .now) -> Int {
        state.withLock { s in
            if var entry = s[address], entry.since.duration(to: now) < window {
                entry.failures += 1
                s[address] = entry
                return entry.failures
            }
            if s.count >= Self.maxAddresses {
                s = s.filter { $0.value.since.duration(to: now) < window }
                if s.count >= Self.maxAddresses, let oldest = s.min(by: { $0.value.since < $1.value.since })?.key {
                    s[oldest] = nil
                }
            }
            s[address] = (1, now)
            return 1
        }
    }
}

/// How many failed logins get an audit record (`admin.login-failed`), so that guessing cannot
/// grow the append-only audit table without bound: each failure is recorded while its address
/// is under its limit (``LoginRateLimiter``: at most 20 an address per 15 minutes; past that
/// the address gets 429 and nothing is recorded), and at most ``budget`` records per
/// ``window`` in this process over all addresses; the first failure past the budget gets one
/// `admin.login-failed-unrecorded` record saying until when further ones are only counted in
/// the log, then none until the window ends (docs/DASHBOARD.md "Failed logins").
final class FailedLoginAuditBudget: Sendable {
    enum Admission: Equatable { case record, lastNotice, skip }
    let budget: Int
    let window: Duration
    private let state = Mutex<(since: ContinuousClock.Instant?, used: Int)>((nil, 0))

    init(budget: Int = 500, window: Duration = .seconds(15 * 60)) {
        self.budget = budget
        self.window = window
    }

    /// Whether a failed login now gets its audit record, the one notice that the budget is
    /// spent, or nothing.
    func admit(now: ContinuousClock.Instant = .now) -> Admission {
        state.withLock { s in
            if s.since == nil || s.since!.duration(to: now) >= window { s = (now, 0) }
            s.used += 1
            return s.used <= budget ? .record : s.used == budget + 1 ? .lastNotice : .skip
        }
    }

    /// Unix ms at which the current window ends (for the notice).
    func windowEndMs(nowMs: Int64, now: ContinuousClock.Instant = .now) -> Int64 {
        state.withLock { s in
            guard let since = s.since else { return nowMs }
            let left = window - since.duration(to: now)
            return nowMs + left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
        }
    }
}

/// The dashboard's static files from `dashboard-dir` (docs/API.md "Admin API", "Static files"):
/// only GET of files under the directory, only the extensions of ``contentTypes``. A path is
/// percent-decoded once; a segment that is empty, `.`, `..` or starts with `.`, or holds `\` or
/// NUL, is refused; the file's real path (symbolic links resolved) must be under the
/// directory's real path, so a link out of it is refused; it must be a regular file of at most
/// ``maxBytes``. Files are read on a Dispatch thread, never on the concurrency pool.
struct StaticFiles: Sendable {
    /// The directory's real path; nil when it does not exist (every file is then 404).
    let root: String?
    static let maxBytes = 64 << 20
    static let contentTypes: [String: String] = [
        "html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
        "svg": "image/svg+xml", "png": "image/png", "ico": "image/x-icon", "woff2": "font/woff2",
    ]

    init(directory: String) {
        if let real = realpath(directory, nil) {
            root = String(cString: real)
            free(real)
        } else {
            root = nil
        }
    }

    /// The file for a request path (as sent, percent-encoded), or nil (404).
    func file(forPath rawPath: String) -> (path: String, contentType: String)? {
        guard let root, let decoded = rawPath.removingPercentEncoding else { return nil }
        guard !decoded.contains("\0"), !decoded.contains("\\") else { return nil }
        var segments = decoded.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        if segments == [""] { segments = ["index.html"] }
        guard !segments.isEmpty, segments.allSatisfy({ !$0.isEmpty && !$0.hasPrefix(".") }) else { return nil }
        guard let ext = segments.last?.split(separator: ".").last.map({ $0.lowercased() }),
              segments.last?.contains(".") == true, let type = Self.contentTypes[ext] else { return nil }
        let path = root + "/" + segments.joined(separator: "/")
        guard let real = realpath(path, nil) else { return nil }
        let resolved = String(cString: real)
        free(real)
        guard resolved.hasPrefix(root + "/") else { return nil }
        var st = stat()
        guard stat(resolved, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size <= Self.maxBytes else { return nil }
        return (resolved, type)
    }

    /// Reads a file found by ``file(forPath:)`` off the concurrency pool.
    static func read(_ path: String) async -> Data? {
        await withCheckedContinuation { c in
            DispatchQueue.global().async {
                c.resume(returning: FileManager.default.contents(atPath: path).flatMap { $0.count <= maxBytes ? $0 : nil })
            }
        }
    }
}
