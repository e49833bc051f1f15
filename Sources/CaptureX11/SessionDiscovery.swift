import CaptureCore
import CustosBase
import Foundation
import Logging
import Synchronization

/// The X11 `SessionSource`: every local X session (`display=auto`), or the displays the config
/// names, each with its user and X authority cookie file (docs/CAPTURE.md "Every graphical
/// session").
///
/// **Where sessions come from** (`display=auto`):
/// 1. systemd-logind's session files (`/run/systemd/sessions/ID`, the `KEY=VALUE` lines logind
///    writes in `session_save()`, src/login/logind-session.c, and sd-login's
///    `sd_session_get_type`/`_display`/`_uid`/`_leader` read): sessions with `TYPE=x11` and a
///    `DISPLAY`, not `STATE=closing`. Sessions of `CLASS=greeter` or `lock-screen` (the login
///    screen, where passwords are typed) are not recorded, and their display is not looked
///    for again among the sockets.
/// 2. The X server sockets `/tmp/.X11-unix/XN` of displays logind does not name (an X server
///    started outside a logind session: `startx` without pam_systemd, Xvnc, Xvfb). The user is
///    the socket's owner. A socket root owns (a display manager's server) belongs to a user
///    whose processes use the display (`DISPLAY` in `/proc/PID/environ`) only through a cookie
///    file that user owns (a regular file, checked on the open descriptor) and that the display
///    accepts (a connection setup with it succeeds, `DisplayProbe`): a process's `DISPLAY` and
///    `XAUTHORITY` alone prove nothing (any user can set them, and name root's cookie file).
///    Otherwise it is not recorded (a login screen, or a display only root uses), and why is
///    logged once.
///
/// **The cookie** of a session's display: the first of these files that holds an
/// MIT-MAGIC-COOKIE-1 entry for the display: `XAUTHORITY` in the environment of the logind
/// session's leader, then of the user's processes that use the display, then the usual places:
/// `~/.Xauthority`, `/run/user/UID/gdm/Xauthority` (GDM), `/run/user/UID/xauth_*` (SDDM),
/// `/run/user/UID/.mutter-Xwaylandauth.*` (Xwayland), `/run/lightdm/USER/xauthority`
/// (LightDM with `user-authority-in-system-dir`). None: the session connects with the
/// process's own defaults (`$XAUTHORITY`, `~/.Xauthority`; a server without access control
/// needs none). `xauthority=` in the config, when set, is used for every session instead.
///
/// Reading other users' `/proc/PID/environ` needs `CAP_SYS_PTRACE` (ptrace access mode READ,
/// proc(5)): the packaged unit does not grant it, so there the cookie comes from the files.
/// Results per display are kept while the display's owner and leader stay, and the cookie
/// file is checked again at every call (a restarted server writes a new cookie).
public final class X11SessionDiscovery: SessionSource {
    /// The system paths read (tests point them at files of their own).
    public struct Paths: Sendable {
        public var logindSessions: String
        public var sockets: String
        public var proc: String
        public var runUser: String
        public var lightdm: String

        public init(logindSessions: String = "/run/systemd/sessions", sockets: String = "/tmp/.X11-unix",
                    proc: String = "/proc", runUser: String = "/run/user", lightdm: String = "/run/lightdm") {
            self.logindSessions = logindSessions
            self.sockets = sockets
            self.proc = proc
            self.runUser = runUser
            self.lightdm = lightdm
        }
    }

    private let displays: [String]?
    private let credentials: String?
    private let paths: Paths
    private let logger: Logger
    /// Per display number and owner: the cookie file found (nil: none).
    private let cookies = Mutex<[String: (path: String, source: String)]>([:])
    /// Displays skipped (a login screen) with why, logged once each.
    private let skipped = Mutex<Set<String>>([])
    /// Cookie files refused (too large, not a regular file), logged once each (path and reason).
    private let refused = Mutex<Set<String>>([])
    /// Root-owned displays given to a user, by display number: the user, the cookie file and
    /// its cookie (probed once; probed again when the file's cookie changes).
    private let attributed = Mutex<[String: (uid: UInt32, path: String, cookie: [UInt8])]>([:])
    /// The displays the last `sessions()` call does not record, with why.
    private let lastNotRecorded = Mutex<[(display: String, reason: String)]>([])

    /// The largest cookie file read (bytes): a real one holds a few entries of ~50 bytes each.
    public static let maxCookieFileBytes = 1 << 20
    /// The most of a process's `/proc/PID/environ` read (bytes); the rest is ignored.
    public static let maxEnvironmentBytes = 1 << 20

    /// `displays` nil: every session (`display=auto`); else those displays. `credentials`: the
    /// configured cookie file (`xauthority=`), used for every session when set.
    public init(displays: [String]?, credentials: String?, paths: Paths = Paths(), logger: Logger) {
        self.displays = displays
        self.credentials = credentials
        self.paths = paths
        self.logger = logger
    }

    public func notRecorded() -> [(display: String, reason: String)] { lastNotRecorded.withLock { $0 } }

    public func sessions() -> [GraphicalSession] {
        lastNotRecorded.withLock { $0 = [] }
        let table = ProcessTable(self)
        var found: [GraphicalSession] = []
        if let displays {
            for display in displays {
                guard let number = Self.displayNumber(display) else {
                    // Not a local display (host:N): connect as configured, no user to find.
                    found.append(GraphicalSession(display: display, user: nil, uid: nil, credentials: credentials,
                                                  origin: .configured))
                    continue
                }
                var session = logindSession(number: number, table) ?? socketSession(number: number, table, configured: true)
                    ?? GraphicalSession(display: display, user: nil, uid: nil, credentials: nil, origin: .configured)
                session.display = display
                session.origin = .configured
                if let credentials { session.credentials = credentials; session.credentialsSource = nil }
                found.append(session)
            }
            return found
        }
        var covered = Set<String>()
        for entry in logindEntries() {
            guard let number = entry.number else { continue }
            covered.insert(number)
            guard entry.recorded else {
                noteSkipped(number, "logind session \(SafeText.escaped(entry.id)) is \(entry.whyNotRecorded)")
                continue
            }
            found.append(session(entry, number: number, table))
        }
        for number in socketNumbers() where !covered.contains(number) {
            if let s = socketSession(number: number, table, configured: false) { found.append(s) }
        }
        if let credentials { found = found.map { var s = $0; s.credentials = credentials; s.credentialsSource = nil; return s } }
        return found.sorted { (Int($0.display.dropFirst()) ?? 0) < (Int($1.display.dropFirst()) ?? 0) }
    }

    // MARK: - logind

    struct LogindEntry {
        var id: String
        var values: [String: String]
        var type: String { values["TYPE"] ?? "" }
        var sessionClass: String { values["CLASS"] ?? "user" }
        var number: String? { values["DISPLAY"].flatMap(X11SessionDiscovery.displayNumber) }
        var uid: UInt32? { values["UID"].flatMap(UInt32.init) }
        var leader: Int32? { values["LEADER"].flatMap(Int32.init) }
        /// An X11 session of a user, not closing.
        var recorded: Bool {
            type == "x11" && number != nil && values["STATE"] != "closing"
                && !["greeter", "lock-screen"].contains(sessionClass)
        }
        /// Why a session that names a display is not recorded (for the log).
        var whyNotRecorded: String {
            if type != "x11" { return "of type \(SafeText.escaped(type)), not x11 (e.g. Xwayland of a Wayland session)" }
            if values["STATE"] == "closing" { return "closing" }
            return "of class \(SafeText.escaped(sessionClass)) (a login or lock screen)"
        }
    }

    /// The session files of logind (regular files named by a session id; `ID.ref` FIFOs and
    /// anything unreadable skipped).
    func logindEntries() -> [LogindEntry] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: paths.logindSessions) else { return [] }
        var entries: [LogindEntry] = []
        for name in names.sorted() where !name.contains(".") {
            let path = paths.logindSessions + "/" + name
            guard isRegularFile(path), let text = readSmallFile(path) else { continue }
            var values: [String: String] = [:]
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                guard let eq = line.firstIndex(of: "=") else { continue }
                values[String(line[..<eq])] = String(line[line.index(after: eq)...])
            }
            entries.append(LogindEntry(id: name, values: values))
        }
        return entries.filter { $0.type == "x11" || $0.number != nil }
    }

    private func logindSession(number: String, _ table: ProcessTable) -> GraphicalSession? {
        logindEntries().first { $0.recorded && $0.number == number }.map { session($0, number: number, table) }
    }

    private func session(_ entry: LogindEntry, number: String, _ table: ProcessTable) -> GraphicalSession {
        let uid = entry.uid
        let user = entry.values["USER"] ?? uid.flatMap(Self.userName)
        let cookie = cookieFile(number: number, uid: uid, user: user, leader: entry.leader, table)
        var session = GraphicalSession(display: ":" + number, user: user, uid: uid, credentials: cookie.path, origin: .logind(entry.id))
        session.credentialsSource = cookie.source
        return session
    }

    // MARK: - Sockets

    /// Display numbers with a socket `XN` in the socket directory that a server listens on.
    func socketNumbers() -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: paths.sockets) else { return [] }
        return names.compactMap { name in
            guard name.hasPrefix("X"), name.count > 1, name.dropFirst().allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            var st = stat()
            guard lstat(paths.sockets + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return nil }
            let number = String(name.dropFirst())
            return serverGone(number) ? nil : number
        }
    }

    /// Whether display `number`'s socket is left over from a server that is gone (killed
    /// without removing it): nothing accepts a connection, neither on the abstract socket
    /// `@/tmp/.X11-unix/XN` (what libxcb tries first on Linux, and what reaches a server through
    /// an overlay or a read-only bind of the socket directory) nor on the socket file. The
    /// connections are closed before the X connection setup, so the server never counts a
    /// client (no reset of a server without clients, no log line).
    func serverGone(_ number: String) -> Bool {
        let path = paths.sockets + "/X" + number
        let abstract = Self.connectRefused([0] + Array("/tmp/.X11-unix/X\(number)".utf8))
        return abstract && Self.connectRefused(Array(path.utf8) + [0])
    }

    /// Whether a connection to the AF_UNIX address `name` (a path with its NUL, or an abstract
    /// name starting with NUL) is refused or finds nothing; false when it connects or fails otherwise.
    private static func connectRefused(_ name: [UInt8]) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        guard name.count <= MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: name) }
        // An abstract address's length counts its bytes exactly (it has no trailing NUL); a
        // path's includes its NUL.
        let length = MemoryLayout<sa_family_t>.size + name.count
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(length)) }
        }
        return result != 0 && (errno == ECONNREFUSED || errno == ENOENT)
    }

    private func socketSession(number: String, _ table: ProcessTable, configured: Bool) -> GraphicalSession? {
        var st = stat()
        guard lstat(paths.sockets + "/X" + number, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK, !serverGone(number) else {
            return nil
        }
        let uid: UInt32 = st.st_uid
        if uid == 0 {
            // A server root runs (a display manager's): whose session is it?
            switch rootDisplayUser(number, table) {
            case .success(let found):
                let name = Self.userName(found.uid)
                var session = GraphicalSession(display: ":" + number, user: name, uid: found.uid, credentials: found.path, origin: .socket)
                session.credentialsSource = found.source
                return session
            case .failure(let why):
                if !configured {
                    noteSkipped(number, why.text)
                    return nil
                }
            }
        }
        let name = Self.userName(uid)
        let cookie = cookieFile(number: number, uid: uid, user: name, leader: nil, table)
        var session = GraphicalSession(display: ":" + number, user: name, uid: uid, credentials: cookie.path, origin: .socket)
        session.credentialsSource = cookie.source
        return session
    }

    struct NotAttributed: Error { var text: String }

    /// The user of root-owned display `number` and the cookie file that proves it (see the
    /// type's documentation), or why there is none.
    private func rootDisplayUser(_ number: String, _ table: ProcessTable) -> Result<(uid: UInt32, path: String, source: String), NotAttributed> {
        let using = table.all.filter { $0.display == number }
        var uids: [UInt32] = []
        for p in using where p.uid != 0 && !uids.contains(p.uid) { uids.append(p.uid) }
        if uids.isEmpty {
            let pids = using.prefix(5).map { String($0.pid) }.joined(separator: ", ")
            return .failure(NotAttributed(text: using.isEmpty
                ? "its socket belongs to root and no process uses it (a login screen)"
                : "its socket belongs to root and only root's processes use it (pid \(pids)\(using.count > 5 ? ", ..." : ""))"))
        }
        let cached = attributed.withLock { $0[number] }
        var tried: [String] = []
        var missing = 0
        for uid in uids {
            for (path, from) in cookieCandidates(number: number, uid: uid, user: Self.userName(uid), leader: nil, table) {
                let cookie: [UInt8]
                switch readCookie(path, number: number, owner: uid) {
                case .success(let c): cookie = c
                case .failure(let why):
                    if why.text == "missing" { missing += 1 } else { tried.append(why.text) }
                    continue
                }
                if let cached, cached.uid == uid, cached.path == path, cached.cookie == cookie { return .success((uid, path, from)) }
                do {
                    _ = try DisplayProbe.check(DisplayProbe.name(":" + number), xauthority: path)
                    attributed.withLock { $0[number] = (uid, path, cookie) }
                    return .success((uid, path, from))
                } catch {
                    tried.append("\(SafeText.quoted(path)) refused by the display")
                }
            }
        }
        attributed.withLock { $0[number] = nil }
        let who = uids.prefix(5).map { uid in Self.userName(uid).map(SafeText.escaped) ?? "uid \(uid)" }.joined(separator: ", ")
        let files = tried.isEmpty ? "" : ": " + tried.joined(separator: "; ")
        return .failure(NotAttributed(text: "its socket belongs to root; processes of \(who) use it, but no cookie file "
            + "they own is accepted by the display (\(tried.count + missing) tried, \(missing) missing\(files))"))
    }

    private func noteSkipped(_ number: String, _ why: String) {
        lastNotRecorded.withLock { $0.append((":" + number, why)) }
        // Once per display and reason: a reason that changes (a user's process appears) is news.
        guard skipped.withLock({ $0.insert(number + "|" + why).inserted }) else { return }
        logger.info("display :\(number) is not recorded: \(why)", metadata: ["capture.display": ":\(number)"])
    }

    // MARK: - Cookies

    /// The cookie file for display `number` of `uid` (see the type's documentation) and where it
    /// was found (e.g. "~/.Xauthority of user bob"); none: path nil and the files tried, each
    /// with why it was not used (for the connection's error message and `--check-config`).
    private func cookieFile(number: String, uid: UInt32?, user: String?, leader: Int32?, _ table: ProcessTable) -> (path: String?, source: String) {
        let key = "\(number)|\(uid.map(String.init) ?? "-")|\(leader.map(String.init) ?? "-")"
        if let known = cookies.withLock({ $0[key] }), hasCookie(known.path, number: number) { return (known.path, known.source) }
        var tried: [String] = []
        for (path, from) in cookieCandidates(number: number, uid: uid, user: user, leader: leader, table) {
            switch readCookie(path, number: number, owner: nil) {
            case .success:
                cookies.withLock { $0[key] = (path, from) }
                return (path, from)
            case .failure(let why):
                tried.append(why.text == "missing" ? "\(SafeText.quoted(path)) missing" : why.text)
            }
        }
        cookies.withLock { $0[key] = nil }
        let whose = user.map { "user \(SafeText.escaped($0))" } ?? uid.map { "uid \($0)" } ?? "no user"
        return (nil, "no cookie file of \(whose) for :\(number)" + (tried.isEmpty ? "" : " (tried \(tried.joined(separator: ", ")))"))
    }

    /// The files that may hold display `number`'s cookie, in the order tried (the type's documentation).
    /// Each with where it comes from, as messages name it ("~/.Xauthority of user bob").
    private func cookieCandidates(number: String, uid: UInt32?, user: String?, leader: Int32?,
                                  _ table: ProcessTable) -> [(path: String, from: String)] {
        var candidates: [(path: String, from: String)] = []
        let whose = user.map { "user \(SafeText.escaped($0))" } ?? uid.map { "uid \($0)" } ?? "no user"
        if let leader, let env = environment(of: leader), let x = env["XAUTHORITY"] {
            candidates.append((x, "XAUTHORITY of the logind session's leader"))
        }
        if let uid {
            for p in table.all where p.uid == uid && p.display == number {
                if let x = p.xauthority, !candidates.contains(where: { $0.path == x }) {
                    candidates.append((x, "XAUTHORITY of a process of \(whose) on :\(number)"))
                }
            }
            if let home = Self.home(uid) { candidates.append((home + "/.Xauthority", "~/.Xauthority of \(whose)")) }
            let run = paths.runUser + "/\(uid)"
            candidates.append((run + "/gdm/Xauthority", "GDM's cookie of \(whose)"))
            let names = (try? FileManager.default.contentsOfDirectory(atPath: run)) ?? []
            candidates += names.filter { $0.hasPrefix("xauth_") || $0.hasPrefix(".mutter-Xwaylandauth.") }.sorted()
                .map { (run + "/" + $0, "\($0.hasPrefix("xauth_") ? "SDDM" : "Xwayland")'s cookie of \(whose)") }
        }
        if let user { candidates.append((paths.lightdm + "/\(user)/xauthority", "LightDM's cookie of \(whose)")) }
        return candidates
    }

    /// Whether the file at `path` holds an MIT-MAGIC-COOKIE-1 entry for local display `number`.
    /// A file larger than ``maxCookieFileBytes`` or not a regular file (a symbolic link, FIFO,
    /// device) is not read and is logged once (``BoundedFile``); a missing one is not logged.
    func hasCookie(_ path: String, number: String) -> Bool {
        if case .success = readCookie(path, number: number, owner: nil) { return true }
        return false
    }

    /// The MIT-MAGIC-COOKIE-1 data for display `number` in the file at `path` (with `owner`:
    /// only from a file that uid owns), or why not: "missing", or the reason, escaped.
    /// Refusals for size or type are logged once (``hasCookie(_:number:)``); other errors
    /// (EACCES) are only returned.
    private func readCookie(_ path: String, number: String, owner: UInt32?) -> Result<[UInt8], NotAttributed> {
        do {
            let bytes = try BoundedFile.regular(path, maxBytes: Self.maxCookieFileBytes, owner: owner)
            guard let cookie = XAuthority.cookie(in: bytes, host: "", number: number) else {
                return .failure(NotAttributed(text: "\(SafeText.quoted(path)) has no MIT-MAGIC-COOKIE-1 entry for :\(number)"))
            }
            return .success(cookie)
        } catch {
            if case .system(let e) = error, e.errno == ENOENT || e.errno == ENOTDIR { return .failure(NotAttributed(text: "missing")) }
            if case .wrongOwner = error { return .failure(NotAttributed(text: error.description)) }
            // Not readable by this agent (a non-root agent and another user's cookie, EACCES):
            // only a reason, where a not-recorded display or --check-config names the files
            // tried; another source may well work. Only a file refused for its size or type (a
            // user's attempt to exhaust the agent) is logged.
            if case .system = error { return .failure(NotAttributed(text: error.description)) }
            if refused.withLock({ $0.insert(path + "|" + error.description).inserted }) {
                logger.warning("cookie file refused for display :\(number): \(error)", metadata: ["capture.display": ":\(number)"])
            }
            return .failure(NotAttributed(text: error.description))
        }
    }

    // MARK: - Processes

    struct ProcessEntry {
        var pid: Int32
        var uid: UInt32
        /// The display number of its `DISPLAY` when local.
        var display: String?
        var xauthority: String?
    }

    /// Every process whose environment can be read, with the display it uses.
    func processes() -> [ProcessEntry] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: paths.proc) else { return [] }
        var out: [ProcessEntry] = []
        for name in names {
            guard let pid = Int32(name) else { continue }
            var st = stat()
            guard stat(paths.proc + "/" + name, &st) == 0, let env = environment(of: pid) else { continue }
            out.append(ProcessEntry(pid: pid, uid: st.st_uid, display: env["DISPLAY"].flatMap(Self.displayNumber),
                                   xauthority: env["XAUTHORITY"].flatMap { $0.isEmpty ? nil : $0 }))
        }
        return out.sorted { $0.pid < $1.pid }
    }

    /// `/proc/PID/environ` (NUL-separated `KEY=VALUE`, proc(5)), or nil when it cannot be read.
    /// At most ``maxEnvironmentBytes`` are read; when there is more, the cut last entry is dropped.
    func environment(of pid: Int32) -> [String: String]? {
        guard let (data, truncated) = try? BoundedFile.prefix(paths.proc + "/\(pid)/environ", maxBytes: Self.maxEnvironmentBytes) else {
            return nil
        }
        var entries = data.split(separator: 0)
        if truncated, data.last != 0, !entries.isEmpty { entries.removeLast() }
        var env: [String: String] = [:]
        for entry in entries {
            guard let eq = entry.firstIndex(of: UInt8(ascii: "=")) else { continue }
            env[String(decoding: entry[entry.startIndex..<eq], as: UTF8.self)] = String(decoding: entry[(eq + 1)...], as: UTF8.self)
        }
        return env
    }

    // MARK: - Helpers

    /// The display number of a local display name (`:N`, `:N.S`, `unix:N`), else nil.
    static func displayNumber(_ display: String) -> String? {
        guard let colon = display.lastIndex(of: ":") else { return nil }
        let host = display[..<colon]
        guard host.isEmpty || host == "unix" || host.hasSuffix("/unix") else { return nil }
        let number = display[display.index(after: colon)...].prefix { $0 != "." }
        guard !number.isEmpty, number.count <= 5, number.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return String(number)
    }

    static func userName(_ uid: UInt32) -> String? { account(uid)?.name }

    static func home(_ uid: UInt32) -> String? { account(uid)?.home }

    /// The passwd entry of `uid` (getpwuid_r: getpwuid's static buffer is shared by every thread).
    static func account(_ uid: UInt32) -> (name: String, home: String)? {
        var entry = Glibc.passwd()
        var result: UnsafeMutablePointer<Glibc.passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, result != nil,
              let name = entry.pw_name, let dir = entry.pw_dir else { return nil }
        return (String(cString: name), String(cString: dir))
    }

    private func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    private func readSmallFile(_ path: String) -> String? {
        guard let data = try? BoundedFile.regular(path, maxBytes: 64 << 10) else { return nil }
        return String(validating: data, as: UTF8.self)
    }
}

/// The process table, read once per `sessions()` call and only when a lookup needs it.
private final class ProcessTable {
    private let discovery: X11SessionDiscovery
    private var read: [X11SessionDiscovery.ProcessEntry]?
    init(_ discovery: X11SessionDiscovery) { self.discovery = discovery }
    var all: [X11SessionDiscovery.ProcessEntry] {
        if let read { return read }
        let fresh = discovery.processes()
        read = fresh
        return fresh
    }
}
