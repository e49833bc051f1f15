import CaptureCore
import CustosBase
import Foundation

/// The X authority ("cookie") file used for a display: `xauthority=` from the config, else
/// `$XAUTHORITY`, else `~/.Xauthority` (the order of libXau's `XauFileName`, with the config
/// first), and the MIT-MAGIC-COOKIE-1 entry found in it for the display, if any.
///
/// The file format is libXau's (`man 1 xauth`, `Xau/AuthRead.c`): records of a big-endian
/// CARD16 family and four CARD16-length-prefixed byte strings (address, display number,
/// auth name, auth data).
public struct XAuthority: Sendable, Equatable {
    /// The file tried, or nil when there is none to try.
    public var path: String?
    /// Where the path came from: `xauthority=`, `$XAUTHORITY` or `~/.Xauthority`.
    public var source: String
    /// Whether the file exists and was read.
    public var readable: Bool
    /// The cookie (MIT-MAGIC-COOKIE-1 data) for the display, when the file has one.
    var cookie: [UInt8]?
    /// When the process's own defaults are used: what session discovery tried before (e.g.
    /// "no cookie file of user bob for :3 ('/home/bob/.Xauthority' missing, ...)").
    var searched: String?

    /// How an error message names it: `/x/cookie (xauthority=)`, `… has no entry for :N`, or
    /// `no cookie file (xauthority= unset, $XAUTHORITY unset, ~/.Xauthority /root/.Xauthority missing)`.
    func described(display: String) -> String {
        let before = searched.map { "\($0); then the agent's own: " } ?? ""
        guard let path else { return before + "no cookie file (xauthority= unset, $XAUTHORITY unset, no home directory)" }
        let shown = SafeText.quoted(path)
        if !readable {
            if source == "~/.Xauthority" {
                return before + "no cookie file (xauthority= unset, $XAUTHORITY unset, ~/.Xauthority \(shown) missing)"
            }
            if let before = searched { return "\(before); then the agent's own: cookie file \(shown) (from \(source)) cannot be read" }
            return "cookie file \(shown) (from \(source)) cannot be read"
        }
        if cookie == nil { return before + "cookie file \(shown) (from \(source)) has no MIT-MAGIC-COOKIE-1 entry for \(display)" }
        return before + "cookie file \(shown) (from \(source)): its cookie for \(display) was refused"
    }

    /// Chooses the file for `display` and reads its cookie. `host` is the display's host part
    /// ("" or "unix" for a local socket), `number` its display number. `source` names where
    /// `xauthority` came from (session discovery: "~/.Xauthority of user bob"; nil: the
    /// config's `xauthority=`); with `xauthority` nil it says which files discovery tried, and
    /// the message adds the process's own defaults tried after them.
    static func find(xauthority: String?, source: String? = nil, host: String, number: String) -> XAuthority {
        let env = ProcessInfo.processInfo.environment
        var result: XAuthority
        if let xauthority, !xauthority.isEmpty {
            result = XAuthority(path: xauthority, source: source ?? "xauthority=", readable: false)
        } else if let fromEnv = env["XAUTHORITY"], !fromEnv.isEmpty {
            result = XAuthority(path: fromEnv, source: "$XAUTHORITY", readable: false)
        } else if let home = env["HOME"].flatMap({ $0.isEmpty ? nil : $0 }) ?? Self.passwdHome() {
            result = XAuthority(path: home + "/.Xauthority", source: "~/.Xauthority", readable: false)
        } else {
            return XAuthority(path: nil, source: "none", readable: false)
        }
        if xauthority == nil || xauthority!.isEmpty { result.searched = source }
        guard let path = result.path,
              let bytes = try? BoundedFile.regular(path, maxBytes: X11SessionDiscovery.maxCookieFileBytes) else { return result }
        result.readable = true
        result.cookie = Self.cookie(in: bytes, host: host, number: number)
        return result
    }

    private static func passwdHome() -> String? {
        guard let pw = getpwuid(getuid()), let dir = pw.pointee.pw_dir else { return nil }
        return String(cString: dir)
    }

    /// The MIT-MAGIC-COOKIE-1 data of the first entry matching the display, as libXau's
    /// `XauGetBestAuthByAddr` matches: family Local (256) with this host's name, or Wild
    /// (65535), or Internet (0) with the host's IPv4 address; number equal or empty.
    static func cookie(in file: [UInt8], host: String, number: String) -> [UInt8]? {
        var hostname = [CChar](repeating: 0, count: 256)
        gethostname(&hostname, hostname.count - 1)
        let localName = hostname.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        let local = host.isEmpty || host == "unix" || host == "localhost" || Array(host.utf8) == localName
        let inet: [UInt8]? = {
            var addr = in_addr()
            return inet_pton(AF_INET, host, &addr) == 1 ? withUnsafeBytes(of: &addr) { Array($0) } : nil
        }()
        var i = 0
        func u16() -> Int? {
            guard i + 2 <= file.count else { return nil }
            defer { i += 2 }
            return Int(file[i]) << 8 | Int(file[i + 1])
        }
        func string() -> [UInt8]? {
            guard let n = u16(), i + n <= file.count else { return nil }
            defer { i += n }
            return Array(file[i..<i + n])
        }
        while let family = u16() {
            guard let address = string(), let num = string(), let name = string(), let data = string() else { return nil }
            guard name == Array("MIT-MAGIC-COOKIE-1".utf8), num.isEmpty || num == Array(number.utf8) else { continue }
            if family == 65535 || (family == 256 && local && address == localName) || (family == 0 && address == inet) {
                return data
            }
        }
        return nil
    }
}

/// Checks an X display the way a client connects, without Xlib or libxcb: both print the
/// server's refusal ("Authorization required, but no authorization protocol specified") on
/// stderr themselves (libxcb's `read_setup` writes it to fd 2), which would reach the journal
/// on every retry. The probe opens the display's socket (`/tmp/.X11-unix/XN`, abstract first,
/// as libxcb does on Linux; TCP port 6000+N for `host:N`), sends the connection setup with the
/// cookie from `XAuthority.find` (X11 protocol, §8 "Connection Setup"), reads the status byte
/// and the server's reason, and closes. Only after it succeeds does `X11Display` call
/// `XOpenDisplay`, so Xlib has nothing to complain about.
enum DisplayProbe {
    /// The parts of a display name `[host]:number[.screen]` (`man 7 X`, "DISPLAY NAMES").
    struct Name {
        var shown: String
        var host: String
        var number: String
    }

    /// How long the server may take to answer the setup (ms).
    static let answerTimeoutMs: Int32 = 5_000

    /// Parses `display` (nil: `$DISPLAY`).
    /// - Throws: `CaptureError.displayUnavailable` (`.badName`) when unset or malformed.
    static func name(_ display: String?) throws -> Name {
        guard let raw = display ?? ProcessInfo.processInfo.environment["DISPLAY"], !raw.isEmpty else {
            throw CaptureError(.displayUnavailable, "no X display to connect to: display= is not set and $DISPLAY is unset",
                               problem: .badName)
        }
        let shown = SafeText.escaped(raw)
        guard let colon = raw.lastIndex(of: ":") else {
            throw CaptureError(.displayUnavailable, "X display name \(SafeText.quoted(raw)) is not of the form [host]:N[.S]",
                               problem: .badName)
        }
        var host = String(raw[..<colon])
        if host.hasSuffix("/unix") { host = "unix" }
        let number = String(raw[raw.index(after: colon)...].prefix { $0 != "." })
        guard !number.isEmpty, number.count <= 5, number.allSatisfy({ $0.isASCII && $0.isNumber }), !host.hasSuffix(":") else {
            throw CaptureError(.displayUnavailable, "X display name \(SafeText.quoted(raw)) is not of the form [host]:N[.S]",
                               problem: .badName)
        }
        return Name(shown: shown, host: host, number: number)
    }

    /// Connects to `name` and runs the connection setup with the cookie from `xauthority`.
    /// Returns the authority used (its cookie, if any, is what `XOpenDisplay` must send) and the
    /// probe's still-open connection: keep it until `XOpenDisplay` has returned. A server that
    /// resets when its last client leaves (Xvfb, Xvnc without `-noreset`) would otherwise reset
    /// between the probe and Xlib's connection, and refuse it.
    /// - Throws: `CaptureError.displayUnavailable` with problem `.noServer` (naming the socket
    ///   and errno) or `.authorizationRefused` (quoting the server's reason and naming the
    ///   cookie file tried).
    ///
    /// A server that closes the connection before answering is resetting (its previous last
    /// client just left): the probe tries again after 100 ms, at most ``resetRetries`` times.
    static func check(_ name: Name, xauthority: String?, source: String? = nil) throws -> (XAuthority, connection: FileDescriptor) {
        var closedDuringSetup = 0
        while true {
            do {
                return try checkOnce(name, xauthority: xauthority, source: source)
            } catch ProbeClosed.duringSetup where closedDuringSetup < resetRetries {
                closedDuringSetup += 1
                usleep(100_000)
            } catch ProbeClosed.duringSetup {
                throw CaptureError(.displayUnavailable,
                                   "the X server at display \(name.shown) closed the connection during setup "
                                   + "\(closedDuringSetup + 1) times (resetting?)", problem: .noServer)
            }
        }
    }

    /// How often a probe the server closed during setup is repeated.
    static let resetRetries = 3

    private enum ProbeClosed: Error { case duringSetup }

    private static func checkOnce(_ name: Name, xauthority: String?, source: String?) throws -> (XAuthority, connection: FileDescriptor) {
        let authority = XAuthority.find(xauthority: xauthority, source: source, host: name.host, number: name.number)
        let connection = FileDescriptor(takingOwnership: try connect(name))
        let fd = connection.rawValue
        var request: [UInt8] = [0x6c, 0, 11, 0, 0, 0]  // 'l' (LSB first), unused, protocol 11.0
        let authName = authority.cookie == nil ? [] : Array("MIT-MAGIC-COOKIE-1".utf8)
        let authData = authority.cookie ?? []
        func u16(_ v: Int) { request += [UInt8(v & 0xff), UInt8(v >> 8)] }
        func padded(_ b: [UInt8]) { request += b + [UInt8](repeating: 0, count: (4 - b.count % 4) % 4) }
        u16(authName.count); u16(authData.count); u16(0)
        padded(authName); padded(authData)
        let what = "the X server at display \(name.shown)"
        guard writeAll(fd, request) else { throw ProbeClosed.duringSetup }
        let head: [UInt8]
        switch readExactly(fd, 8) {
        case .bytes(let b): head = b
        case .closed: throw ProbeClosed.duringSetup
        case .timedOut:
            throw CaptureError(.displayUnavailable, "\(what) did not answer the connection setup within \(answerTimeoutMs) ms",
                               problem: .noServer)
        }
        if head[0] == 1 { return (authority, connection) }
        let extra = (Int(head[6]) | Int(head[7]) << 8) * 4
        let body: [UInt8]
        if case .bytes(let b) = readExactly(fd, extra) { body = b } else { body = [] }
        let reason = head[0] == 0 ? body.prefix(Int(head[1])) : body.prefix { $0 != 0 }
        let said = String(decoding: reason, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        throw CaptureError(.displayUnavailable,
                           "authorization refused by \(what) (server said \(SafeText.quoted(said))); \(authority.described(display: name.shown))",
                           problem: .authorizationRefused)
    }

    /// A connected stream socket to the display, or `.noServer` naming where nothing listened.
    private static func connect(_ name: Name) throws -> Int32 {
        let local = name.host.isEmpty || name.host == "unix"
        if local {
            let path = "/tmp/.X11-unix/X\(name.number)"
            // Linux: the abstract socket first (as libxcb), then the file.
            if let fd = connectUnix(path, abstract: true) { return fd }
            if let fd = connectUnix(path, abstract: false) { return fd }
            let why = String(cString: strerror(errno))
            throw CaptureError(.displayUnavailable, "no X server at display \(name.shown) (connecting to \(path): \(why))",
                               problem: .noServer)
        }
        let port = 6000 + (Int(name.number) ?? 0)
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name.host, String(port), &hints, &list) == 0, let list else {
            throw CaptureError(.displayUnavailable, "no X server at display \(name.shown) (cannot resolve host \(SafeText.quoted(name.host)))",
                               problem: .noServer)
        }
        defer { freeaddrinfo(list) }
        var why = "no address"
        var ai: UnsafeMutablePointer<addrinfo>? = list
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            var timeout = timeval(tv_sec: 3, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
            why = String(cString: strerror(errno))
            close(fd)
        }
        throw CaptureError(.displayUnavailable, "no X server at display \(name.shown) (TCP port \(port) on \(SafeText.quoted(name.host)): \(why))",
                           problem: .noServer)
    }

    private static func connectUnix(_ path: String, abstract: Bool) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let offset = abstract ? 1 : 0
        let length = withUnsafeMutableBytes(of: &addr.sun_path) { raw -> Int in
            let n = min(bytes.count, raw.count - 1 - offset)
            raw[0] = 0
            for i in 0..<n { raw[offset + i] = bytes[i] }
            if !abstract { raw[n] = 0 }
            return n + offset
        }
        let size = socklen_t(MemoryLayout.offset(of: \sockaddr_un.sun_path)! + length + (abstract ? 0 : 1))
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, size) == 0 }
        }
        if ok { return fd }
        let saved = errno
        close(fd)
        errno = saved
        return nil
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = try? syscall("send") { bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
            guard let n, n > 0 else { return false }
            sent += n
        }
        return true
    }

    private enum ReadResult { case bytes([UInt8]), closed, timedOut }

    /// Reads `count` bytes, waiting at most `answerTimeoutMs` in all.
    private static func readExactly(_ fd: Int32, _ count: Int) -> ReadResult {
        var out = [UInt8]()
        let deadline = Date().addingTimeInterval(Double(answerTimeoutMs) / 1000)
        var buffer = [UInt8](repeating: 0, count: max(count, 1))
        while out.count < count {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = try? syscall("poll") { poll(&pfd, 1, Int32(max(0, deadline.timeIntervalSinceNow * 1000))) }
            guard let ready, ready > 0 else { return .timedOut }
            let n = try? syscall("recv") { buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, count - out.count, 0) } }
            guard let n, n > 0 else { return .closed }
            out += buffer[0..<n]
        }
        return .bytes(out)
    }
}
