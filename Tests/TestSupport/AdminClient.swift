import AdminAuth
import CollectorStorage
import CustosBase
import Foundation

/// Dashboard accounts for tests.
public enum TestAdmin {
    /// Adds an account with `password` hashed at bcrypt cost 4 (a login then takes milliseconds
    /// in a debug build; `custos admins add` uses cost 12).
    public static func add(to storage: any CollectorStorage, name: String, role: AdminRole, password: String,
                           totpSecret: String? = nil) async throws {
        let hash = await AdminPassword.hash(Secret(password), cost: 4)
        try await storage.addAdmin(AdminAccount(name: try AdminName(name), role: role, passwordHash: hash, totpSecret: totpSecret,
                                                createdAtMs: Int64(Date().timeIntervalSince1970 * 1000)))
    }
}

/// An HTTPS client for the admin API with a cookie jar: the real `curl` (Debian's, in the
/// Makefile's packages) against a collector on 127.0.0.1, trusting the test PKI's root, run on a
/// Dispatch thread (the collector runs in this process and needs the concurrency pool).
///
/// ```swift
/// let client = try AdminClient(url: collector.adminURL, caFile: collector.pki.rootCertificate)
/// let r = try await client.login("ann", "a long password")   // keeps the session cookie
/// let agents = try await client.get("/api/v1/agents").json
/// ```
public final class AdminClient: Sendable {
    /// `https://127.0.0.1:PORT`.
    public let url: String
    let caFile: String
    let dir: TempDir
    /// The cookie jar (Netscape format, curl's).
    public var cookieJar: String { dir.file("cookies.txt") }

    /// One answer.
    public struct Reply: Sendable {
        public let status: Int
        /// Header names in lowercase; a repeated header keeps its last value.
        public let headers: [String: String]
        public let body: Data
        public var text: String { String(decoding: body, as: UTF8.self) }
        /// The body as a JSON object, nil when it is not one.
        public var json: [String: any Sendable]? {
            (try? JSONSerialization.jsonObject(with: body)) as? [String: any Sendable]
        }
        /// `error` of a JSON error answer.
        public var error: String? { json?["error"] as? String }
    }

    public init(url: String, caFile: String) throws {
        try requireTool("curl")
        self.url = url
        self.caFile = caFile
        dir = try TempDir("custos-admin-client")
        _ = FileManager.default.createFile(atPath: dir.file("cookies.txt"), contents: nil)
    }

    deinit { dir.remove() }

    /// The origin a browser on this dashboard sends.
    public var origin: String { url }

    /// Sends a request. `origin`: the `Origin` header (default: the dashboard's own; nil: none).
    /// `cookies`: whether the jar is sent and updated.
    public func request(_ method: String, _ path: String, json: Any? = nil, body: Data? = nil,
                        origin: String?? = .none, cookies: Bool = true, headers: [String: String] = [:]) async throws -> Reply {
        let n = UInt64.random(in: 0...UInt64.max)
        let headerFile = dir.file("h-\(n)"), bodyFile = dir.file("b-\(n)"), sendFile = dir.file("s-\(n)")
        defer { for f in [headerFile, bodyFile, sendFile] { try? FileManager.default.removeItem(atPath: f) } }
        // HEAD: curl's --head (with -X HEAD it would wait for the Content-Length bytes).
        var args = ["curl", "-sS", "--cacert", caFile] + (method == "HEAD" ? ["--head"] : ["-X", method])
            + ["-D", headerFile, "-o", bodyFile, "-w", "%{http_code}", "--max-time", "60", "--path-as-is"]
        if cookies { args += ["-b", cookieJar, "-c", cookieJar] }
        let sentOrigin: String? = switch origin {
        case .none: self.origin
        case .some(let o): o
        }
        if let sentOrigin { args += ["-H", "Origin: \(sentOrigin)"] }
        for (k, v) in headers { args += ["-H", "\(k): \(v)"] }
        var payload = body
        if let json {
            payload = try JSONSerialization.data(withJSONObject: json)
            args += ["-H", "Content-Type: application/json"]
        }
        if let payload {
            try payload.write(to: URL(fileURLWithPath: sendFile))
            args += ["--data-binary", "@" + sendFile]
        }
        args.append(url + path)
        let command = args
        let result = try await offPool { try runCommand(command, timeout: 90) }
        guard result.status == 0, let status = Int(result.stdoutString) else {
            throw TestSupportError("curl \(method) \(path) failed (\(result.status)): \(result.stderrString)")
        }
        var fields: [String: String] = [:]
        let rawHeaders = (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? ""
        for line in rawHeaders.split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        // (With --head curl writes the header lines to -o too: a HEAD reply has no body.)
        let data = method == "HEAD" ? Data() : FileManager.default.contents(atPath: bodyFile) ?? Data()
        return Reply(status: status, headers: fields, body: data)
    }

    public func get(_ path: String, cookies: Bool = true) async throws -> Reply {
        try await request("GET", path, cookies: cookies)
    }

    public func post(_ path: String, json: Any, origin: String?? = .none) async throws -> Reply {
        try await request("POST", path, json: json, origin: origin)
    }

    /// `POST /api/v1/login`; a 200 leaves the session cookie in the jar.
    public func login(_ name: String, _ password: String, totp: String? = nil) async throws -> Reply {
        var body: [String: String] = ["name": name, "password": password]
        if let totp { body["totp"] = totp }
        return try await post("/api/v1/login", json: body)
    }

    /// The session cookie's value in the jar, nil when none.
    public var sessionToken: String? {
        let jar = (try? String(contentsOfFile: cookieJar, encoding: .utf8)) ?? ""
        for line in jar.split(whereSeparator: \.isNewline) where line.contains("custos_session") {
            let fields = line.split(separator: "\t")
            if fields.count >= 7, fields[5] == "custos_session" { return String(fields[6]) }
        }
        return nil
    }

    /// Copies another client's cookie jar (the same session from a second client).
    public func useCookies(of other: AdminClient) throws {
        try? FileManager.default.removeItem(atPath: cookieJar)
        try FileManager.default.copyItem(atPath: other.cookieJar, toPath: cookieJar)
    }
}
