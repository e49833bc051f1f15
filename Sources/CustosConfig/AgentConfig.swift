import CustosBase
import Foundation

/// The agent's configuration, parsed once from `config.cfg` into a plain value.
///
/// Keys (name, type, default) — `config.cfg.sample` lists the same, and a test checks that
/// the two agree (`AgentConfig.schema` is the single source):
/// - `enable-encryption` (bool, default 0): seal under the E2EE KEK (`kek-file`) when 1,
///   under the collector's own key (`server-kek-file`) when 0. Any other value refuses to start.
/// - `kek-file` (path, default `certs/kek.pem` beside the config)
/// - `server-kek-file` (path, default `certs/server-kek.pem` beside the config)
/// - `agent-id` (``AgentID``, default: the host name), `agent-token` (``Secret``, no default)
/// - `server-url` (repeatable ``CollectorURL``, `https://HOST[:PORT]`, no default: without it
///   captures stay spooled; several: failover in that order, docs/API.md "Several collectors")
/// - `server-pin` (repeatable ``SPKIPin``, `sha256/BASE64` of the SPKI DER), `server-ca` (path)
///
/// Values with a CustosBase type are validated by that type's one validator (the same the
/// transport and the collector use), so `--check-config` can never pass what the daemon refuses.
/// - `display` (``DisplaySelection``: `auto`, the default, or a comma-separated list of displays),
///   `xauthority` (path; default none: each session's own cookie, docs/CAPTURE.md)
/// - `screen-interval-ms` (integer ms, default 1000; 0 disables frames), `png-level` (0...9, default 1)
/// - `screen-format` (``ScreenFormat``: `video` (default) or `png`), `keyframe-interval-seconds`
///   (0 or 1...3600, default 300: docs/VIDEO.md "Defaults and why")
/// - `keystroke-idle-ms` (integer ms, default 2000; 0 disables keystroke capture)
/// - `sensitive-window-class` (repeatable ``WindowPattern``): keystrokes suppressed while such
///   a window has the focus
/// - `exclude-window-class`, `exclude-window-title` (repeatable ``WindowPattern``): such windows'
///   pixels are painted over before encoding, keys typed into them dropped
/// - `activity-interval-seconds` (0 or 10...3600, default 60; 0 disables activity),
///   `idle-threshold-seconds` (1...86400, default 300)
/// - `spool-dir` (path, default `/var/lib/custos`), `spool-max-mb` (MiB, default 512)
/// - `dek-rotate-blobs` (default 100000), `dek-rotate-mb` (MiB, default 4096),
///   `dek-rotate-hours` (default 24); 0 turns that limit off.
public struct AgentConfig: Sendable, Equatable {
    public var configPath: String
    public var enableEncryption: Bool
    public var kekFile: String
    public var serverKEKFile: String
    public var agentID: AgentID
    /// The agent's token; its description is `<redacted>`.
    public var agentToken: Secret?
    /// The collectors, in the order the agent tries them (empty: captures stay spooled).
    public var serverURLs: [CollectorURL]
    public var serverPins: [SPKIPin]
    public var serverCA: String?
    /// Which graphical sessions are recorded.
    public var displays: DisplaySelection
    /// The X authority file used for every session, when set; nil: each session's own.
    public var xauthority: String?
    /// Interval between screen captures in ms; 0 = no frames.
    public var screenIntervalMs: Int
    /// zlib level for PNG frames (0 = none, 1 = fastest, 9 = smallest).
    public var pngLevel: Int
    /// How changed screens are encoded.
    public var screenFormat: ScreenFormat
    /// Longest time between keyframes of a video stream, in seconds; 0 = only at a stream's start.
    public var keyframeIntervalSeconds: Int
    /// Idle time in ms that closes a keystroke chunk; 0 = no keystroke capture.
    public var keystrokeIdleMs: Int
    /// `sensitive-window-class`: keys typed while such a window has the focus are suppressed.
    public var sensitiveWindowClasses: [WindowPattern]
    /// `exclude-window-class`: windows whose pixels and keys are left out.
    public var excludeWindowClasses: [WindowPattern]
    /// `exclude-window-title`: windows whose pixels and keys are left out, by title.
    public var excludeWindowTitles: [WindowPattern]
    /// How often the activity timeline is sealed, in seconds; 0 = no activity capture.
    public var activityIntervalSeconds: Int
    /// No input for this long (seconds) makes the user idle.
    public var idleThresholdSeconds: Int
    public var spoolDir: String
    /// Spool byte cap in MiB (database + WAL).
    public var spoolMaxMB: Int
    public var dekRotateBlobs: Int
    public var dekRotateMB: Int
    public var dekRotateHours: Int

    /// The KEK file in force: `kek-file` when encryption is on, `server-kek-file` when off.
    public var activeKEKFile: String { enableEncryption ? kekFile : serverKEKFile }

    /// Every key the agent's config may hold.
    public static let schema: [ConfigKey] = [
        ConfigKey("enable-encryption", type: "bool: 1/0, true/false, yes/no", default: "0",
                  doc: "1: seal every capture under the end-to-end KEK (kek-file); only the holder of the private key's passphrase can read it. 0: seal under the collector's own public key (server-kek-file), so the collector can read it. Any other value refuses to start."),
        ConfigKey("kek-file", type: "path", default: "certs/kek.pem",
                  doc: "The end-to-end KEK: an RSA public key of 2048 bits or more (SPKI 'BEGIN PUBLIC KEY' as written by 'openssl rsa -pubout', or PKCS#1). Relative paths are taken from the folder holding this file."),
        ConfigKey("server-kek-file", type: "path", default: "certs/server-kek.pem",
                  doc: "The collector's own RSA public key, used when enable-encryption=0."),
        ConfigKey("agent-id", type: "string: letters, digits, '.', '_', '-' (1-64)", default: nil,
                  doc: "This endpoint's id at the collector. Default: the host name."),
        ConfigKey("agent-token", type: "string", default: nil,
                  doc: "The token printed by 'custos agents add' for this agent id. Required to upload."),
        ConfigKey("server-url", type: "https URL (repeatable)", default: nil, repeatable: true,
                  doc: "The collector, e.g. https://collector.example:8443. Without it captures stay in the spool. Repeat it for several collectors sharing one database: uploads go to the first that works, and move to the next when it is down (each is checked against the same server-pin and server-ca)."),
        ConfigKey("server-pin", type: "sha256/BASE64 (repeatable)", default: nil, repeatable: true,
                  doc: "SHA-256 of the collector certificate's (or an intermediate's) SubjectPublicKeyInfo, base64. Give the current and a backup pin (RFC 7469 section 2.6)."),
        ConfigKey("server-ca", type: "path", default: nil,
                  doc: "PEM file of a private CA that signs the collector's certificate. Without it only the system roots or a matching pin are accepted."),
        ConfigKey("display", type: "auto, or X display names separated by commas", default: "auto",
                  doc: "auto: record every local graphical session (X11), found from systemd-logind (sessions of type x11; not login or lock screens) and from the X server sockets in /tmp/.X11-unix; sessions that start later are picked up and ended ones let go, without a restart. Or a fixed list, e.g. :0 or :0,:1. Each capture names the session's user and display."),
        ConfigKey("xauthority", type: "path", default: nil,
                  doc: "An X authority (cookie) file used for every session. Default: each session's own, found from the session's processes (XAUTHORITY) or the usual files (~/.Xauthority, /run/user/UID/gdm/Xauthority, ...)."),
        ConfigKey("screen-interval-ms", type: "integer ms, 0 or 100-86400000", default: "1000",
                  doc: "Time between screen captures. An unchanged screen costs almost nothing. 0 disables frames. With screen-format=png use 5000 or more: every changed frame is a whole PNG."),
        ConfigKey("screen-format", type: "video or png", default: "video",
                  doc: "video: each monitor is one AV1 video stream, one sealed packet per changed frame (docs/VIDEO.md). png: one PNG per changed frame, 100 to 500 times video's bytes."),
        ConfigKey("keyframe-interval-seconds", type: "integer seconds, 0 or 1-3600", default: "300",
                  doc: "Longest time between keyframes of a video stream (a keyframe also starts every new stream: agent start, new DEK, display reconnect, resize, a packet not kept). Shorter: faster seeking and smaller losses on eviction; longer: fewer bytes. 0: only at a stream's start."),
        ConfigKey("png-level", type: "integer 0-9", default: "1",
                  doc: "zlib level of PNG frames (screen-format=png): 1 is fastest, 9 smallest."),
        ConfigKey("keystroke-idle-ms", type: "integer ms, 0 or 100-3600000", default: "2000",
                  doc: "Typing idle time that closes a keystroke chunk. 0 disables keystroke capture."),
        ConfigKey("sensitive-window-class", type: "window class, or /regular expression/ (repeatable)", default: nil,
                  repeatable: true,
                  doc: "While a window of this WM_CLASS (its class or instance, e.g. KeePassXC) has the focus, keystrokes are not recorded: the keystroke chunk shows [suppressed] with the time span. Its pixels are recorded. Plain text matches exactly (case-sensitive); /.../ is a regular expression (ICU syntax) found anywhere in the class or instance, e.g. /^(?i)keepass/. Keystrokes are also suppressed, always, while another program holds the keyboard grabbed (password prompts, screen lockers)."),
        ConfigKey("exclude-window-class", type: "window class, or /regular expression/ (repeatable)", default: nil,
                  repeatable: true,
                  doc: "Windows of this WM_CLASS (class or instance) never leave the endpoint: before a frame is encoded, the part of every such top-level window that is visible (its frame and children, minus what other windows cover) is painted magenta, and keystrokes typed while it has the focus are dropped (the chunk shows [excluded] with their count). Exact text, or /.../ as a regular expression (ICU syntax) found anywhere in the class or instance. Re-read on SIGHUP."),
        ConfigKey("exclude-window-title", type: "window title, or /regular expression/ (repeatable)", default: nil,
                  repeatable: true,
                  doc: "As exclude-window-class, matched against the window's title (_NET_WM_NAME, else WM_NAME): exact text, or /.../ found anywhere in the title, e.g. /^Online Banking/. A window is excluded from the frame after its title changes to match."),
        ConfigKey("activity-interval-seconds", type: "integer seconds, 0 or 10-3600", default: "60",
                  doc: "Activity (sealed as its own kind): which window had the focus when (WM_CLASS, title, start, end) and when the user was active or idle. Periods in progress are sealed every this many seconds (and at stop); custos decrypt writes them as a timeline (activity.csv, activity.json). 0 disables activity capture."),
        ConfigKey("idle-threshold-seconds", type: "integer seconds, 1-86400", default: "300",
                  doc: "No keyboard or pointer input for this long makes the user idle (from the last input on, read from the X screen saver extension's idle time)."),
        ConfigKey("spool-dir", type: "path", default: "/var/lib/custos",
                  doc: "Folder of the spool database (created 0700; files 0600). Holds sealed blobs only."),
        ConfigKey("spool-max-mb", type: "integer MiB, 1-1048576", default: "512",
                  doc: "Cap on the spool (database + WAL). When full, the oldest frames are evicted first, then the oldest keystroke chunks."),
        ConfigKey("dek-rotate-blobs", type: "integer, 0 = off", default: "100000",
                  doc: "Start a new DEK after this many sealed blobs."),
        ConfigKey("dek-rotate-mb", type: "integer MiB, 0 = off", default: "4096",
                  doc: "Start a new DEK after this many MiB sealed."),
        ConfigKey("dek-rotate-hours", type: "integer hours, 0 = off", default: "24",
                  doc: "Start a new DEK after this many hours. A new DEK is also made at every start."),
    ]

    /// Loads and validates `config.cfg`. Throws `ConfigError` naming the file, line and key.
    public init(contentsOf path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigError) {
        try self.init(file: ConfigFile(contentsOf: path, schema: Self.schema), environment: environment)
    }

    /// Parses and validates config text as if it came from `path`.
    public init(text: String, path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigError) {
        try self.init(file: ConfigFile(text: text, path: path, schema: Self.schema), environment: environment)
    }

    /// Validates a parsed file.
    public init(file: ConfigFile, environment: [String: String]) throws(ConfigError) {
        func def(_ key: String) -> String { Self.schema.first { $0.name == key }!.defaultValue! }
        func intDefault(_ key: String) -> Int { Int(def(key))! }
        configPath = file.path
        enableEncryption = try file.bool("enable-encryption", default: false)
        kekFile = try file.path("kek-file", default: def("kek-file"))!
        serverKEKFile = try file.path("server-kek-file", default: def("server-kek-file"))!

        /// A value of a CustosBase type: its validator's ``ValueError`` becomes a ``ConfigError``
        /// naming the file, the line and the key.
        func typed<T>(_ e: ConfigFile.Entry, _ make: (String) throws(ValueError) -> T) throws(ConfigError) -> T {
            do { return try make(e.value) } catch {
                throw ConfigError(file: file.path, line: e.line, key: e.key, error.message)
            }
        }
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "agent"
        if let e = file.value("agent-id") {
            agentID = try typed(e) { v throws(ValueError) in try AgentID(v) }
        } else {
            do { agentID = try AgentID(host) } catch {
                throw ConfigError(file: file.path, key: "agent-id",
                                  "not set, and the host name is not a valid id: \(error.message); set agent-id")
            }
        }
        agentToken = try file.string("agent-token").map(Secret.init)
        serverURLs = []
        for e in file.values("server-url") {
            let url = try typed(e) { v throws(ValueError) in try CollectorURL(v) }
            if let first = file.values("server-url").first(where: { (try? CollectorURL($0.value)) == url }), first.line != e.line {
                throw ConfigError(file: file.path, line: e.line, key: e.key,
                                  "\(url) is already given on line \(first.line); each collector once")
            }
            serverURLs.append(url)
        }
        serverPins = try file.values("server-pin").map { e throws(ConfigError) in
            try typed(e) { v throws(ValueError) in try SPKIPin(v) }
        }
        serverCA = try file.path("server-ca", default: nil)
        if let e = file.value("display") {
            do { displays = try DisplaySelection(e.value) } catch {
                throw ConfigError(file: file.path, line: e.line, key: e.key, error.message)
            }
        } else {
            displays = .auto
        }
        xauthority = try file.path("xauthority", default: nil)

        screenIntervalMs = try file.int("screen-interval-ms", default: intDefault("screen-interval-ms"), in: 0...86_400_000)
        if screenIntervalMs != 0 && screenIntervalMs < 100 {
            throw ConfigError(file: file.path, line: file.value("screen-interval-ms")?.line, key: "screen-interval-ms",
                              "expected 0 (off) or at least 100 ms, found \(screenIntervalMs)")
        }
        pngLevel = try file.int("png-level", default: intDefault("png-level"), in: 0...9)
        if let e = file.value("screen-format") {
            guard let format = ScreenFormat(rawValue: e.value) else {
                throw ConfigError(file: file.path, line: e.line, key: e.key,
                                  "expected video or png, found \(SafeText.quoted(e.value))")
            }
            screenFormat = format
        } else {
            screenFormat = ScreenFormat(rawValue: def("screen-format"))!
        }
        keyframeIntervalSeconds = try file.int("keyframe-interval-seconds", default: intDefault("keyframe-interval-seconds"),
                                               in: 0...3600)
        keystrokeIdleMs = try file.int("keystroke-idle-ms", default: intDefault("keystroke-idle-ms"), in: 0...3_600_000)
        if keystrokeIdleMs != 0 && keystrokeIdleMs < 100 {
            throw ConfigError(file: file.path, line: file.value("keystroke-idle-ms")?.line, key: "keystroke-idle-ms",
                              "expected 0 (off) or at least 100 ms, found \(keystrokeIdleMs)")
        }
        sensitiveWindowClasses = try file.values("sensitive-window-class").map { e throws(ConfigError) in
            try typed(e) { v throws(ValueError) in try WindowPattern(v, field: e.key) }
        }
        excludeWindowClasses = try file.values("exclude-window-class").map { e throws(ConfigError) in
            try typed(e) { v throws(ValueError) in try WindowPattern(v, field: e.key) }
        }
        excludeWindowTitles = try file.values("exclude-window-title").map { e throws(ConfigError) in
            try typed(e) { v throws(ValueError) in try WindowPattern(v, field: e.key) }
        }
        activityIntervalSeconds = try file.int("activity-interval-seconds", default: intDefault("activity-interval-seconds"),
                                               in: 0...3600)
        if activityIntervalSeconds != 0 && activityIntervalSeconds < 10 {
            throw ConfigError(file: file.path, line: file.value("activity-interval-seconds")?.line, key: "activity-interval-seconds",
                              "expected 0 (off) or at least 10 seconds, found \(activityIntervalSeconds)")
        }
        idleThresholdSeconds = try file.int("idle-threshold-seconds", default: intDefault("idle-threshold-seconds"), in: 1...86_400)
        spoolDir = try file.path("spool-dir", default: def("spool-dir"))!
        spoolMaxMB = try file.int("spool-max-mb", default: intDefault("spool-max-mb"), in: 1...1_048_576)
        dekRotateBlobs = try file.int("dek-rotate-blobs", default: intDefault("dek-rotate-blobs"), in: 0...Int(Int32.max))
        dekRotateMB = try file.int("dek-rotate-mb", default: intDefault("dek-rotate-mb"), in: 0...1_048_576)
        dekRotateHours = try file.int("dek-rotate-hours", default: intDefault("dek-rotate-hours"), in: 0...87_600)
    }
}

/// How the agent encodes changed screens (`screen-format`).
public enum ScreenFormat: String, Sendable, Equatable, CaseIterable {
    /// One AV1 video stream per monitor, one sealed packet per changed frame.
    case video
    /// One PNG per changed frame.
    case png
}

/// Which graphical sessions the agent records (`display=`).
public enum DisplaySelection: Sendable, Equatable, CustomStringConvertible {
    /// Every local graphical session, as they come and go.
    case auto
    /// These displays (X display names `[host]:N[.S]`, in the order given).
    case list([String])

    /// Parses `auto` or a comma-separated list of display names (spaces around names allowed).
    /// - Throws: ``ValueError`` for an empty name, one not of the form `[host]:N[.S]`, or one
    ///   given twice.
    public init(_ text: String) throws(ValueError) {
        if text == "auto" {
            self = .auto
            return
        }
        var names: [String] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let name = part.trimmingCharacters(in: .whitespaces)
            guard Self.isDisplayName(name) else {
                throw ValueError(field: "display", "expected auto or X display names like :0 or :0,:1 (each [host]:N[.S]), found \(SafeText.quoted(name))")
            }
            guard !names.contains(name) else {
                throw ValueError(field: "display", "\(SafeText.quoted(name)) is given twice")
            }
            names.append(name)
        }
        self = .list(names)
    }

    /// The displays of a list; nil for `auto`.
    public var displays: [String]? {
        if case .list(let names) = self { return names }
        return nil
    }

    public var description: String {
        switch self {
        case .auto: "auto"
        case .list(let names): names.joined(separator: ",")
        }
    }

    /// `[host]:N[.S]` with N and S decimal (`man 7 X`, "DISPLAY NAMES").
    static func isDisplayName(_ name: String) -> Bool {
        guard let colon = name.lastIndex(of: ":") else { return false }
        let host = name[..<colon]
        guard host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-/".contains($0)) }) else { return false }
        let rest = name[name.index(after: colon)...].split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(rest.count) else { return false }
        return rest.allSatisfy { !$0.isEmpty && $0.count <= 5 && $0.allSatisfy { $0.isASCII && $0.isNumber } }
    }
}
