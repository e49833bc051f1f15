import CaptureCore
import CustosBase
import CustosConfig
import Envelope
import Foundation
import Logging
import Spool
import Transport

/// `custos-agent --check-config`: validates the config, the KEK in force, the pins and CA, connects
/// to the collector as the daemon would (TCP, TLS handshake, certificate and pin check; no request
/// is sent), and checks display access; prints one line per check (`ok` / `FAIL` with the reason).
/// Returns whether all required checks passed.
enum CheckConfig {
    /// Limit for the collector probe (connect and handshake).
    static let probeTimeout = Duration.seconds(5)

    static func run(config: AgentConfig, backend: any CaptureBackend = CaptureBackends.standard,
                    print: (String) -> Void) async -> Bool {
        var ok = true
        func line(_ good: Bool, _ what: String, _ detail: String, required: Bool = true) {
            print("\(good ? "ok  " : (required ? "FAIL" : "warn")) \(what): \(detail)")
            if !good && required { ok = false }
        }
        line(true, "config", "\(config.configPath) parsed")
        line(true, "encryption", config.enableEncryption ? "on: sealed end to end under kek-file" : "off: sealed under the collector's key (server-kek-file)")
        do {
            let kek = try KEKPublicKey(pemFile: config.activeKEKFile)
            line(true, "kek", "\(config.activeKEKFile): RSA-\(kek.bits), KEK id \(kek.id.hex)")
        } catch {
            line(false, "kek", "\(error)")
        }
        line(true, "agent-id", config.agentID.rawValue)
        line(true, "window rules", Self.windowRulesSummary(config))
        if config.screenIntervalMs == 0 && config.keystrokeIdleMs == 0 && config.activityIntervalSeconds == 0 {
            line(false, "capture", "screen-interval-ms=0, keystroke-idle-ms=0 and activity-interval-seconds=0: nothing is captured; the agent only uploads what is spooled",
                 required: false)
        }
        if !config.serverURLs.isEmpty {
            line(config.agentToken != nil, "agent-token", config.agentToken != nil ? "set" : "missing: uploads will be refused")
            let detail = "\(config.serverPins.count) pin(s)\(config.serverCA.map { ", CA \($0)" } ?? "")"
            // Every collector is probed; one that works is enough (the agent fails over), so the
            // others are warnings then, and failures when none works.
            var results: [(CollectorURL, Bool, String)] = []
            for url in config.serverURLs {
                let (good, what) = await probe(url, config: config)
                results.append((url, good, what))
            }
            let anyGood = results.contains { $0.1 }
            for (url, good, what) in results {
                line(good, "server", good ? "\(url): \(what) (\(detail))"
                     : "\(url): \(what)" + (anyGood ? " (uploads go to another server-url meanwhile)" : ""),
                     required: !anyGood)
            }
            if config.serverPins.isEmpty && config.serverCA == nil {
                line(true, "server-pin", "none: the collector must have a certificate the system trusts", required: false)
            }
        } else {
            line(true, "server-url", "not set: captures stay in the spool", required: false)
        }
        let quiet = Logger(label: "check-config") { _ in SwiftLogNoOpLogHandler() }
        let source = backend.makeSessionSource(displays: config.displays.displays, credentials: config.xauthority, logger: quiet)
        let sessions = source.sessions()
        // The displays found but not recorded, with the reason the daemon logs.
        for (display, reason) in source.notRecorded() {
            line(true, "display", "\(display): not recorded: \(reason)", required: false)
        }
        if sessions.isEmpty {
            // With display=auto nobody may be logged in yet: recording starts when someone is.
            line(config.displays == .auto, "display", config.displays == .auto
                 ? "auto: no graphical session now; sessions are recorded as they start"
                 : "\(config.displays): no display", required: config.displays != .auto)
        }
        var monitors: [(name: String, width: Int, height: Int)] = []
        for session in sessions {
            let cookie = session.credentials.map { "cookie \(SafeText.escaped($0))" + (session.credentialsSource.map { " (\($0))" } ?? " (xauthority=)") }
                ?? "\(session.credentialsSource ?? "no cookie file"); the agent's own $XAUTHORITY or ~/.Xauthority is used"
            let about = " (user \(SafeText.escaped(session.userName.rawValue)), \(session.origin), \(cookie))"
            do {
                let capturer = try backend.makeFrameSource(session.target, encoding: config.screenEncoding,
                                                           policy: CapturePolicy(config.windowRules), logger: quiet,
                                                           health: DisplayHealth(logger: quiet))
                // The reason the first connection failed (no server / authorization refused), not a retry delay.
                if let problem = capturer.connectError { throw problem }
                let frames = try capturer.captureAll(now: Date())
                line(true, "display", "\(session.display): \(frames.count) monitor(s) readable" + about)
                monitors += capturer.monitorSizes()
                for warning in capturer.unrecordableMonitors() {
                    line(false, "display", warning, required: false)
                }
            } catch let error as CaptureError {
                line(false, "display", "\(session.display): \(error.message)" + about)
            } catch {
                line(false, "display", "\(session.display): \(error)" + about)
            }
        }
        if let advice = CaptureService.spoolCapAdvice(spoolMaxMB: config.spoolMaxMB, format: config.screenFormat,
                                                      monitors: monitors) {
            line(false, "spool-max-mb", advice, required: false)
        }
        let spool = probeSpoolDirectory(config.spoolDir)
        line(spool.ok, "spool-dir", "\(config.spoolDir): \(spool.detail)")
        if let stranded = strandedRecords(config) {
            for text in stranded.lines {
                line(false, "spool", text + "; set agent-id back to that id (with its agent-token) until they drain",
                     required: false)
            }
        }
        return ok
    }

    /// The window rules in force, per key: how many patterns, exact and regular expressions
    /// (each already compiled while the config was parsed), and what always applies.
    static func windowRulesSummary(_ config: AgentConfig) -> String {
        func count(_ key: String, _ patterns: [WindowPattern]) -> String {
            let regex = patterns.filter(\.isRegularExpression).count
            return "\(key) \(patterns.count) (\(patterns.count - regex) exact, \(regex) regular expression\(regex == 1 ? "" : "s"))"
        }
        return [count("sensitive-window-class", config.sensitiveWindowClasses),
                count("exclude-window-class", config.excludeWindowClasses),
                count("exclude-window-title", config.excludeWindowTitles)].joined(separator: ", ")
            + "; keystrokes are suppressed while another program grabs the keyboard (password prompts)"
    }

    /// Records in an existing spool sealed under another agent id than `agent-id` (the collector
    /// refuses them `agent-mismatch`), read through the spool's read-only open: one header per
    /// DEK. Nil when there is no spool yet or it cannot be read (the daemon reports that).
    static func strandedRecords(_ config: AgentConfig) -> StrandedRecords? {
        guard let spool = try? Spool.openReadOnly(directory: config.spoolDir) else { return nil }
        defer { try? spool.close() }
        return try? StrandedRecords.scan(spool, configured: config.agentID)
    }

    /// Connects to the collector through the daemon's own connect path (``CollectorClient/probe(timeout:)``).
    /// Returns whether it passed and what happened: the handshake and pin check passed, or why
    /// not (connection refused, permission denied, certificate refused with the presented pins,
    /// no answer within ``probeTimeout``).
    static func probe(_ url: CollectorURL, config: AgentConfig) async -> (ok: Bool, detail: String) {
        let logger = Logger(label: "check-config") { _ in SwiftLogNoOpLogHandler() }
        do throws(TransportError) {
            let transport = TransportConfiguration(server: url, agentID: config.agentID,
                                                   agentToken: config.agentToken ?? Secret(""),
                                                   policy: try TLSPolicy(pins: config.serverPins, caFile: config.serverCA),
                                                   connectTimeout: probeTimeout)
            let client = try CollectorClient(configuration: transport, logger: logger)
            let presented = try await client.probe(timeout: probeTimeout)
            let check = config.serverPins.isEmpty ? "certificate check" : "pin check"
            return (true, "TLS handshake and \(check) passed (presented \(presented.first ?? "-"))")
        } catch {
            let presented = error.presentedPins.isEmpty ? "" : "; presented \(error.presentedPins.joined(separator: ", "))"
            // The line already names the collector: drop the message's own "collector HOST:PORT: ".
            let prefix = "collector \(url.host):\(url.port): "
            let reason = error.message.hasPrefix(prefix) ? String(error.message.dropFirst(prefix.count)) : error.message
            return (false, reason + presented)
        }
    }

    /// Tries what the daemon will do, without leaving anything behind: in an existing folder,
    /// create and delete a probe file; else create and remove a probe folder in the nearest
    /// existing ancestor (so root, which `access(2)` always lets write, is checked for real).
    static func probeSpoolDirectory(_ path: String) -> (ok: Bool, detail: String) {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { return (false, "exists and is not a directory") }
            let probe = path + "/.custos-check-\(getpid())"
            let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else { return (false, "not writable: \(String(cString: strerror(errno)))") }
            close(fd); unlink(probe)
            return (true, "writable")
        }
        var ancestor = (path as NSString).deletingLastPathComponent
        while !ancestor.isEmpty && ancestor != "/" && !fm.fileExists(atPath: ancestor) {
            ancestor = (ancestor as NSString).deletingLastPathComponent
        }
        if ancestor.isEmpty { ancestor = "/" }
        guard fm.fileExists(atPath: ancestor, isDirectory: &isDir), isDir.boolValue else {
            return (false, "\(ancestor) is not a directory, so the spool folder cannot be created")
        }
        let probe = (ancestor == "/" ? "" : ancestor) + "/.custos-check-\(getpid())"
        guard mkdir(probe, 0o700) == 0 else {
            return (false, "cannot be created under \(ancestor): \(String(cString: strerror(errno)))")
        }
        rmdir(probe)
        return (true, "does not exist yet; will be created (0700) under \(ancestor)")
    }
}
