import CollectorStorage
import CollectorStorageOpen
import CustosBase
import CustosConfig
import Envelope
import Foundation
import Wire

/// The collector's settings (`collector.cfg`, the same `key=value` syntax as the agent's config).
///
/// Keys (name (type, default)):
/// - `listen` (HOST:PORT, default `0.0.0.0:8443`): address to serve HTTPS on; port 0 picks a free one.
/// - `tls-cert` (path, required): PEM certificate chain, leaf first (intermediates may follow).
/// - `tls-key` (path, required): PEM private key of the leaf certificate.
/// - `database` (path or `postgres://USER@HOST[:PORT]/DBNAME[?sslmode=…][&sslrootcert=…]`, default `collector.db`
///   beside the config file): the storage, parsed by `StorageLocation` (a SQLite file, or a
///   PostgreSQL database).
/// - `database-password-file` (path, optional): the file whose first line is the PostgreSQL
///   password (never in the URL); only with a `postgres://` database.
/// - `blob-dir` (path, optional; `postgres://` databases only; relative to the config file's
///   folder, as `database`): the directory (it must exist, mode 0700; may be one NFS mount shared
///   by every collector instance) where sealed blobs of 32 KiB or more go to append-only blob
///   files, the row keeping a reference; checked at start (`CollectorServer`); unset: every blob
///   stays in the table (`PostgresStorage.Configuration.blobDirectory`, docs/STORAGE.md "Blobs").
/// - `max-request-bytes` (integer 1024...1073741824, default 16777216): larger upload bodies get 413.
/// - `max-records-per-request` (integer 1...1000000, default 10000): more records get 413.
/// - `kek-poll-seconds` (integer 1...3600, default 3): how often `encryption_kek` is re-read (also on SIGHUP).
/// - `max-inflight-bytes` (integer 1048576...68719476736, default 268435456): upload bodies being
///   received and stored at once (by `Content-Length`); past it, uploads get 503 with `Retry-After`.
/// - `retry-after-seconds` (integer 1...3600, default 5): the `Retry-After` of those 503 answers.
/// - `idle-timeout-seconds` (integer 1...3600, default 30): a connection that sends nothing for
///   this long (idle keep-alive, or a request whose body stalled) is closed.
/// - `body-timeout-seconds` (integer 1...3600, default 120): an upload body must arrive within
///   this long of its request head; a slower one gets 408 and its connection is closed.
/// - `max-uploads-per-agent` (integer 1...1000, default 4): uploads one agent may have in flight
///   at once; more get 503 with `Retry-After`.
/// - `max-connections` (integer 1...1000000, default 1024): TLS connections open at once (idle
///   keep-alives included; about 55 KB of memory and one file descriptor each). A connection
///   above it is closed at once, before its handshake; the agent retries with backoff.
/// - `retention-days` (integer 0...36500, default 0 = keep forever): captures older than this
///   many days (by capture time) are deleted with their blob bytes, which are erased from blob
///   files (docs/STORAGE.md "Retention", "Releasing blob bytes").
/// - `retention-days-kind` (KIND:DAYS, repeatable): days for one capture kind (screen,
///   keystrokes, generic, activity), over `retention-days`.
/// - `retention-days-agent` (AGENT:DAYS, repeatable): days for one agent, over every kind rule
///   and `retention-days`. Precedence: agent rule > kind rule > default; 0 keeps forever.
///   Legal holds (`custos hold add`) win over all of them (``RetentionPolicy``).
/// - `retention-interval-minutes` (integer 1...10080, default 60): how often expiry runs (and
///   once at start); nothing runs when every day count is 0.
/// - `admin-listen` (HOST:PORT, optional; unset: no admin listener): the dashboard's HTTPS
///   listener (``AdminListenerConfiguration``), its own port so each can be firewalled.
/// - `admin-tls-cert`, `admin-tls-key` (paths, default `tls-cert`, `tls-key`): its certificate and key.
/// - `admin-session-idle-minutes` (integer 1...1440, default 15): a session unused this long is gone.
/// - `admin-session-max-hours` (integer 1...720, default 12): a session's whole life.
/// - `dashboard-dir` (path, default `/usr/share/custos/dashboard`): the dashboard's static files.
/// - `server-private-key-file` (path, optional): the unencrypted PKCS#8 PEM private key (mode
///   0600 or 0400) of the collector's own KEK (`server-kek-file` of `enable-encryption=0`
///   agents): items sealed to it are opened for logged-in admins; never E2EE items.
public struct CollectorConfiguration: Sendable {
    public var listenHost: String
    public var listenPort: Int
    public var tlsCertFile: String
    public var tlsKeyFile: String
    /// `database=` (and `database-password-file=`).
    public var database: StorageLocation
    /// `blob-dir=` (PostgreSQL only; absolute after resolving against the config file's folder):
    /// the shared blob directory, nil: blobs stay in the table.
    public var blobDirectory: String?
    public var maxRequestBytes: Int
    public var maxRecordsPerRequest: Int
    public var kekPollInterval: Duration
    /// Bytes of upload bodies held at once (memory bound); beyond it, 503 + `Retry-After`.
    public var maxInflightBytes: Int
    /// Seconds announced in `Retry-After` when busy.
    public var retryAfterSeconds: Int
    /// A connection silent this long is closed (a stalled body then frees its in-flight bytes).
    public var idleTimeout: Duration
    /// From an upload's request head to its body's last byte, at most (a trickling body then
    /// gets 408 and frees its in-flight bytes).
    public var bodyTimeout: Duration
    /// Uploads one agent may have in flight at once (beyond: 503 + `Retry-After`).
    public var maxUploadsPerAgent: Int
    /// Connections open at once; a new one above it is closed before its TLS handshake.
    public var maxConnections: Int
    /// Whether SIGHUP triggers a KEK refresh (the executable: yes; in-process tests: no).
    public var trapSIGHUP: Bool
    /// `retention-days`, `retention-days-kind`, `retention-days-agent`.
    public var retention: RetentionPolicy
    /// `retention-interval-minutes`: time between expiry runs.
    public var retentionInterval: Duration
    /// The dashboard's admin listener (`admin-listen` and its keys); nil: none.
    public var admin: AdminListenerConfiguration?

    public init(listenHost: String = "0.0.0.0", listenPort: Int = 8443, tlsCertFile: String, tlsKeyFile: String,
                database: StorageLocation, maxRequestBytes: Int = WireAPI.defaultMaxRequestBytes,
                maxRecordsPerRequest: Int = WireAPI.defaultMaxRecordsPerRequest,
                kekPollInterval: Duration = .seconds(3), maxInflightBytes: Int = 256 << 20,
                retryAfterSeconds: Int = 5, idleTimeout: Duration = .seconds(30), bodyTimeout: Duration = .seconds(120),
                maxUploadsPerAgent: Int = 4, maxConnections: Int = 1024, trapSIGHUP: Bool = false,
                retention: RetentionPolicy = .keepForever, retentionInterval: Duration = .seconds(3600),
                blobDirectory: String? = nil, admin: AdminListenerConfiguration? = nil) {
        self.admin = admin
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.tlsCertFile = tlsCertFile
        self.tlsKeyFile = tlsKeyFile
        self.database = database
        self.maxRequestBytes = maxRequestBytes
        self.maxRecordsPerRequest = maxRecordsPerRequest
        self.kekPollInterval = kekPollInterval
        self.maxInflightBytes = maxInflightBytes
        self.retryAfterSeconds = retryAfterSeconds
        self.idleTimeout = idleTimeout
        self.bodyTimeout = bodyTimeout
        self.maxUploadsPerAgent = maxUploadsPerAgent
        self.maxConnections = maxConnections
        self.trapSIGHUP = trapSIGHUP
        self.retention = retention
        self.retentionInterval = retentionInterval
        self.blobDirectory = blobDirectory
    }

    /// The keys `collector.cfg` may hold (also listed in `collector.cfg.sample`).
    public static let schema: [ConfigKey] = [
        ConfigKey("listen", type: "HOST:PORT", default: "0.0.0.0:8443",
                  doc: "Address and TCP port to serve HTTPS on (TLS 1.2 minimum, 1.3 preferred). Port 0 picks a free port."),
        ConfigKey("tls-cert", type: "path", default: nil,
                  doc: "PEM certificate chain of the collector, leaf first; intermediates may follow. Required."),
        ConfigKey("tls-key", type: "path", default: nil,
                  doc: "PEM private key of the leaf certificate. Required."),
        ConfigKey("database", type: "path or postgres://USER@HOST[:PORT]/DBNAME[?sslmode=MODE][&sslrootcert=PATH]", default: "collector.db",
                  doc: "Where captures, DEK records, agents, KEKs and the audit log are stored: a SQLite database file (created if missing; relative paths are relative to this file), or a PostgreSQL database URL without a password (sslmode: verify-full (default: TLS, certificate and host checked against sslrootcert or the system's CAs), require (TLS, certificate not checked), disable (no TLS))."),
        ConfigKey("database-password-file", type: "path", default: nil,
                  doc: "File whose first line is the PostgreSQL password (never put it in the URL); a regular file others may not read or write (chmod 640 or 600). Read at start. Only with a postgres:// database."),
        ConfigKey("blob-dir", type: "path", default: nil,
                  doc: "Only with a postgres:// database: directory where sealed blobs of 32 KiB or more go to append-only blob files (fdatasync'ed before the row commits), the row keeping a reference; a relative path is relative to this file's folder, as database= is. It must exist (mode 0700; it is never created) and may be one mount (NFS) shared by every collector instance: each writes only files named with its own random instance id. Its .custos-blobs marker ties it to the database. Checked at start: a missing directory, one group or others may write, or one whose marker names another database (or has no marker although this database used one: an unmounted volume) stops the collector with an error naming it; a volume unmounted later is refused at each upload (uploads get 503 and are retried). Unset: every blob stays in the table (one system to back up)."),
        ConfigKey("max-request-bytes", type: "integer 1024...1073741824", default: "16777216",
                  doc: "Largest accepted upload body in bytes; larger ones get HTTP 413."),
        ConfigKey("max-records-per-request", type: "integer 1...1000000", default: "10000",
                  doc: "Most records accepted in one upload; more get HTTP 413."),
        ConfigKey("kek-poll-seconds", type: "integer 1...3600", default: "3",
                  doc: "How often the encryption_kek table is re-read for new active keys (SIGHUP re-reads at once)."),
        ConfigKey("max-inflight-bytes", type: "integer 1048576...68719476736", default: "268435456",
                  doc: "Upload bodies (by Content-Length) received and stored at once, in bytes: bounds the collector's memory. Past it, uploads get HTTP 503 with Retry-After and the agents keep their data spooled."),
        ConfigKey("retry-after-seconds", type: "integer 1...3600", default: "5",
                  doc: "Retry-After (seconds) of the HTTP 503 sent when max-inflight-bytes is reached."),
        ConfigKey("idle-timeout-seconds", type: "integer 1...3600", default: "30",
                  doc: "A connection that sends nothing for this long is closed: an idle keep-alive, or an upload whose body stalled (its bytes then leave max-inflight-bytes)."),
        ConfigKey("body-timeout-seconds", type: "integer 1...3600", default: "120",
                  doc: "An upload body must arrive within this many seconds of its request head (at the default 16 MiB limit, about 140 KB/s); a slower one gets HTTP 408, its bytes leave max-inflight-bytes and its connection is closed. The agent then retries."),
        ConfigKey("max-uploads-per-agent", type: "integer 1...1000", default: "4",
                  doc: "Uploads one agent may have in flight at once (the agent sends 2); more get HTTP 503 with Retry-After, so one agent, or one stolen token, cannot take all of max-inflight-bytes."),
        ConfigKey("max-connections", type: "integer 1...1000000", default: "1024",
                  doc: "TLS connections open at once, idle keep-alives included (each holds about 55 KB of memory and a file descriptor). A connection above it is closed before its TLS handshake, logged once per episode; agents retry with backoff. Agents keep one connection each: allow for your fleet, and keep it below the file-descriptor limit (LimitNOFILE; the collector raises its soft limit to the hard one at start)."),
        ConfigKey("retention-days", type: "integer 0...36500", default: "0",
                  doc: "Captures whose capture time is more than this many days ago are deleted, with their blob bytes (DEK records stay; bytes in blob files, SQLite's or PostgreSQL's blob-dir=, are erased there: a hole punched, or zeros where the file system cannot punch holes). 0 keeps them forever. Overridden by retention-days-kind and retention-days-agent; never deletes captures of an agent under a legal hold (custos hold add)."),
        ConfigKey("retention-days-kind", type: "KIND:DAYS (KIND: screen, keystrokes, generic, activity; DAYS 0...36500)", default: nil, repeatable: true,
                  doc: "Days for one capture kind, over retention-days (0: keep that kind forever). One line per kind."),
        ConfigKey("retention-days-agent", type: "AGENT:DAYS (DAYS 0...36500)", default: nil, repeatable: true,
                  doc: "Days for one agent's captures, over retention-days-kind and retention-days (0: keep that agent's forever). Precedence: agent rule, then kind rule, then retention-days. One line per agent."),
        ConfigKey("retention-interval-minutes", type: "integer 1...10080", default: "60",
                  doc: "How often expiry runs (and once at start). One collector at a time runs it, through a lease in the database. Nothing runs when retention-days is 0 and no rule is set."),
        ConfigKey("admin-listen", type: "HOST:PORT", default: nil,
                  doc: "Address and TCP port of the admin HTTPS listener: the reviewer's dashboard and its API (docs/API.md \"Admin API\"), on its own port so it can be firewalled apart from the agents' listen=. Unset: no admin listener. Accounts: custos admins add."),
        ConfigKey("admin-tls-cert", type: "path", default: nil,
                  doc: "PEM certificate chain of the admin listener, leaf first. Default: tls-cert."),
        ConfigKey("admin-tls-key", type: "path", default: nil,
                  doc: "PEM private key of admin-tls-cert. Default: tls-key."),
        ConfigKey("admin-session-idle-minutes", type: "integer 1...1440", default: "15",
                  doc: "A dashboard session unused this long is gone (checked in the database, so on every collector instance)."),
        ConfigKey("admin-session-max-hours", type: "integer 1...720", default: "12",
                  doc: "A dashboard session's whole life, however busy."),
        ConfigKey("dashboard-dir", type: "path", default: AdminListenerConfiguration.defaultDashboardDirectory,
                  doc: "Directory of the dashboard's static files (index.html, app.css, js/). Only files under it with the extensions html, js, css, svg, png, ico, woff2 are served; symbolic links out of it are refused."),
        ConfigKey("server-private-key-file", type: "path", default: nil,
                  doc: "Private key (PKCS#8 or PKCS#1 PEM, unencrypted, mode 0600 or 0400) of the collector's own KEK, the one agents with enable-encryption=0 wrap to (their server-kek-file). When set, items sealed under it are opened by the collector for any logged-in admin; end-to-end encrypted items never are. Unset: those items are masked like E2EE ones."),
    ]

    /// Reads `collector.cfg`.
    /// - Throws: `ConfigError` naming the file, line and key.
    public init(file path: String) throws(ConfigError) {
        let f = try ConfigFile(contentsOf: path, schema: Self.schema)
        let listen = try f.string("listen") ?? "0.0.0.0:8443"
        guard let (host, port) = Self.parseListen(listen) else {
            throw ConfigError(file: path, line: f.value("listen")?.line, key: "listen",
                              "expected HOST:PORT (IPv6 as [ADDR]:PORT, port 0...65535), found '\(listen)'")
        }
        guard let cert = try f.path("tls-cert", default: nil) else {
            throw ConfigError(file: path, key: "tls-cert", "required: the collector serves HTTPS only")
        }
        guard let key = try f.path("tls-key", default: nil) else {
            throw ConfigError(file: path, key: "tls-key", "required: the collector serves HTTPS only")
        }
        let databaseText = try f.string("database") ?? "collector.db"
        let passwordFile = try f.string("database-password-file")
        let database: StorageLocation
        do {
            database = try StorageLocation(databaseText, passwordFile: passwordFile, resolvingPath: f.resolvePath)
        } catch {
            let key = error.field == "database" ? "database" : "database-password-file"
            throw ConfigError(file: path, line: f.value(key)?.line, key: key, error.message)
        }
        let blobDirectory = try f.path("blob-dir", default: nil)
        if blobDirectory != nil, case .sqlite = database {
            throw ConfigError(file: path, line: f.value("blob-dir")?.line, key: "blob-dir",
                              "is for a postgres:// database only; a SQLite database keeps its blob files in the directory beside it (DATABASE.blobs)")
        }
        let admin = try Self.adminListener(f, tlsCert: cert, tlsKey: key)
        if let admin, admin.host == host, admin.port == port, port != 0 {
            throw ConfigError(file: path, line: f.value("admin-listen")?.line, key: "admin-listen",
                              "must differ from listen (both are \(SafeText.quoted(listen))): the dashboard needs a port of its own")
        }
        self.init(listenHost: host, listenPort: port, tlsCertFile: cert, tlsKeyFile: key,
                  database: database,
                  maxRequestBytes: try f.int("max-request-bytes", default: WireAPI.defaultMaxRequestBytes,
                                             in: 1024...1_073_741_824),
                  maxRecordsPerRequest: try f.int("max-records-per-request", default: WireAPI.defaultMaxRecordsPerRequest,
                                                  in: 1...1_000_000),
                  kekPollInterval: .seconds(try f.int("kek-poll-seconds", default: 3, in: 1...3600)),
                  maxInflightBytes: try f.int("max-inflight-bytes", default: 256 << 20, in: 1 << 20...64 << 30),
                  retryAfterSeconds: try f.int("retry-after-seconds", default: 5, in: 1...3600),
                  idleTimeout: .seconds(try f.int("idle-timeout-seconds", default: 30, in: 1...3600)),
                  bodyTimeout: .seconds(try f.int("body-timeout-seconds", default: 120, in: 1...3600)),
                  maxUploadsPerAgent: try f.int("max-uploads-per-agent", default: 4, in: 1...1000),
                  maxConnections: try f.int("max-connections", default: 1024, in: 1...1_000_000),
                  trapSIGHUP: true,
                  retention: try Self.retentionPolicy(f),
                  retentionInterval: .seconds(60 * (try f.int("retention-interval-minutes", default: 60, in: 1...10_080))),
                  blobDirectory: blobDirectory, admin: admin)
    }

    /// `admin-listen` and the keys that go with it; nil when `admin-listen` is unset.
    /// - Throws: `ConfigError` naming the file, line and key: a listen address that is not
    ///   HOST:PORT, a number out of range, a `server-private-key-file` that is missing, not a
    ///   regular file or readable by group or others.
    static func adminListener(_ f: ConfigFile, tlsCert: String, tlsKey: String) throws(ConfigError) -> AdminListenerConfiguration? {
        let idle = try f.int("admin-session-idle-minutes", default: 15, in: 1...1440)
        let maxHours = try f.int("admin-session-max-hours", default: 12, in: 1...720)
        let dashboard = try f.path("dashboard-dir", default: AdminListenerConfiguration.defaultDashboardDirectory)
            ?? AdminListenerConfiguration.defaultDashboardDirectory
        let privateKey = try f.path("server-private-key-file", default: nil)
        if let privateKey, let line = f.value("server-private-key-file")?.line {
            var st = stat()
            guard lstat(privateKey, &st) == 0 else {
                throw ConfigError(file: f.path, line: line, key: "server-private-key-file",
                                  "expected a private key file, found nothing at \(SafeText.quoted(privateKey)) (\(String(cString: strerror(errno))))")
            }
            guard st.st_mode & S_IFMT == S_IFREG else {
                throw ConfigError(file: f.path, line: line, key: "server-private-key-file",
                                  "expected a regular file, \(SafeText.quoted(privateKey)) is not one (a symbolic link is refused)")
            }
            guard st.st_mode & 0o077 == 0 else {
                throw ConfigError(file: f.path, line: line, key: "server-private-key-file",
                                  "\(SafeText.quoted(privateKey)) has mode \(String(st.st_mode & 0o777, radix: 8)); expected 0600 or 0400 (run chmod 600 on it)")
            }
        }
        guard let listen = try f.string("admin-listen") else { return nil }
        guard let (host, port) = Self.parseListen(listen) else {
            throw ConfigError(file: f.path, line: f.value("admin-listen")?.line, key: "admin-listen",
                              "expected HOST:PORT (IPv6 as [ADDR]:PORT, port 0...65535), found \(SafeText.quoted(listen))")
        }
        return AdminListenerConfiguration(
            host: host, port: port, tlsCertFile: try f.path("admin-tls-cert", default: nil) ?? tlsCert,
            tlsKeyFile: try f.path("admin-tls-key", default: nil) ?? tlsKey,
            sessionIdle: .seconds(60 * idle), sessionMax: .seconds(3600 * maxHours),
            dashboardDirectory: dashboard, serverPrivateKeyFile: privateKey)
    }

    /// `retention-days`, `retention-days-kind` and `retention-days-agent` as one policy.
    /// - Throws: `ConfigError` naming the file, line and key: a day count that is not 0...36500,
    ///   a rule that is not NAME:DAYS, an unknown kind, an invalid agent id, a second rule for
    ///   the same kind or agent.
    static func retentionPolicy(_ f: ConfigFile) throws(ConfigError) -> RetentionPolicy {
        func days(_ entry: ConfigFile.Entry, _ text: String) throws(ConfigError) -> Int {
            do { return try RetentionPolicy.days(text, field: entry.key) } catch {
                throw ConfigError(file: f.path, line: entry.line, key: entry.key, error.message)
            }
        }
        /// Splits `NAME:DAYS` at its ':' (neither a kind nor an agent id holds one).
        func rule(_ entry: ConfigFile.Entry, _ what: String) throws(ConfigError) -> (String, Int) {
            let example = what == "KIND" ? "screen:30" : "host-17:365"
            let parts = entry.value.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty else {
                let form = parts.count > 2 ? "\(what):DAYS with one ':' (e.g. \(example); one line per \(what == "KIND" ? "kind" : "agent"))"
                    : "\(what):DAYS (e.g. \(example))"
                throw ConfigError(file: f.path, line: entry.line, key: entry.key, "expected \(form), found \(SafeText.quoted(entry.value))")
            }
            return (String(parts[0]), try days(entry, String(parts[1])))
        }
        let defaultDays = try f.value("retention-days").map { e throws(ConfigError) in try days(e, e.value) } ?? 0
        var kinds: [CaptureKind: Int] = [:], kindLines: [CaptureKind: Int] = [:]
        for e in f.values("retention-days-kind") {
            let (name, d) = try rule(e, "KIND")
            guard let kind = CaptureKind(name: name) else {
                throw ConfigError(file: f.path, line: e.line, key: e.key,
                                  "expected a capture kind (screen, keystrokes, generic or activity) before ':', found \(SafeText.quoted(name))")
            }
            if let first = kindLines[kind] {
                throw ConfigError(file: f.path, line: e.line, key: e.key, "a second rule for kind \(kind.name) (first on line \(first)); expected one per kind")
            }
            kinds[kind] = d
            kindLines[kind] = e.line
        }
        var agents: [AgentID: Int] = [:], agentLines: [AgentID: Int] = [:]
        for e in f.values("retention-days-agent") {
            let (name, d) = try rule(e, "AGENT")
            let agent: AgentID
            do { agent = try AgentID(name, field: e.key) } catch {
                throw ConfigError(file: f.path, line: e.line, key: e.key, "before ':', " + error.message)
            }
            if let first = agentLines[agent] {
                throw ConfigError(file: f.path, line: e.line, key: e.key, "a second rule for agent \(agent) (first on line \(first)); expected one per agent")
            }
            agents[agent] = d
            agentLines[agent] = e.line
        }
        do {
            return try RetentionPolicy(defaultDays: defaultDays, kindDays: kinds, agentDays: agents)
        } catch {
            throw ConfigError(file: f.path, key: error.field, error.message)  // unreachable: each count was checked
        }
    }

    /// Splits `HOST:PORT` / `[V6]:PORT`.
    static func parseListen(_ s: String) -> (String, Int)? {
        guard let colon = s.lastIndex(of: ":") else { return nil }
        var host = String(s[..<colon])
        guard let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        return (host, port)
    }
}

/// The dashboard's admin listener (`admin-listen=` and its keys; docs/API.md "Admin API").
public struct AdminListenerConfiguration: Sendable {
    public static let defaultDashboardDirectory = "/usr/share/custos/dashboard"

    public var host: String
    /// 0 picks a free port.
    public var port: Int
    public var tlsCertFile: String
    public var tlsKeyFile: String
    /// `admin-session-idle-minutes`.
    public var sessionIdle: Duration
    /// `admin-session-max-hours`.
    public var sessionMax: Duration
    /// `dashboard-dir`: the static files.
    public var dashboardDirectory: String
    /// `server-private-key-file`: the collector's own KEK's private key, nil: none.
    public var serverPrivateKeyFile: String?

    public init(host: String = "127.0.0.1", port: Int, tlsCertFile: String, tlsKeyFile: String,
                sessionIdle: Duration = .seconds(15 * 60), sessionMax: Duration = .seconds(12 * 3600),
                dashboardDirectory: String = defaultDashboardDirectory, serverPrivateKeyFile: String? = nil) {
        self.host = host
        self.port = port
        self.tlsCertFile = tlsCertFile
        self.tlsKeyFile = tlsKeyFile
        self.sessionIdle = sessionIdle
        self.sessionMax = sessionMax
        self.dashboardDirectory = dashboardDirectory
        self.serverPrivateKeyFile = serverPrivateKeyFile
    }
}
