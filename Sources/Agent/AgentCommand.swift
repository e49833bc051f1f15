import ArgumentParser
import CustosBase
import CustosConfig
import Envelope
import Foundation
import Logging
import Spool
import Transport

/// `custos-agent`: the Custos endpoint daemon and its diagnostics.
///
/// - `custos-agent --config /etc/custos/config.cfg` runs the daemon (the default subcommand).
/// - `custos-agent --config F --check-config` validates config, KEK, pins and display access.
/// - `custos-agent status --config F` prints encryption state, spool depth, last upload.
/// - `custos-agent record --config F --seconds N --out REC` captures for N seconds into one
///   sealed record-stream file (never plaintext).
/// Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.
public struct AgentCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "custos-agent",
        abstract: "Custos endpoint agent: captures X11 frames and keystrokes, sealed end to end.",
        subcommands: [RunCommand.self, StatusCommand.self, RecordCommand.self],
        defaultSubcommand: RunCommand.self)
    public init() {}

    /// Parses the command line and runs the chosen subcommand. (Used instead of `main()`, whose
    /// overload resolution picks ArgumentParser's synchronous entry point from top-level code.)
    public static func runMain(_ arguments: [String]? = nil) async {
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            // Usage errors exit 2, as for `custos` (ArgumentParser's own code would be 64).
            if exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Path of config.cfg.")
    var config: String = "/etc/custos/config.cfg"

    func load() throws -> AgentConfig {
        do { return try AgentConfig(contentsOf: config) } catch {
            FileHandle.standardError.write(Data("custos-agent: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}

func makeLogger(_ label: String = "custos-agent") -> Logger {
    var logger = Logger(label: label) { JournalLogHandler(label: $0) }
    if let level = ProcessInfo.processInfo.environment["CUSTOS_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) {
        logger.logLevel = level
    }
    return logger
}

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the daemon (default).")
    @OptionGroup var options: ConfigOption
    @Flag(name: .long, help: "Validate the config, KEK, pins and display, print what was found, and exit.")
    var checkConfig = false

    func run() async throws {
        let config = try options.load()
        if checkConfig {
            let ok = await CheckConfig.run(config: config) { print($0) }
            throw ExitCode(ok ? 0 : 2)
        }
        let hardening = Hardening.apply()
        let mallocTuned = MemoryPolicy.apply()
        let logger = makeLogger()
        logger.info("starting", metadata: ["config.path": "\(config.configPath)", "hardening": "\(hardening)",
                                           "malloc.tuned": "\(mallocTuned)",
                                           "agent.id": "\(config.agentID)"])
        do {
            try await AgentRunner(config: config, logger: logger).run()
        } catch {
            logger.critical("stopped: \(error)")
            throw ExitCode(1)
        }
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status",
        abstract: "Print encryption state and KEK id, spool depth by kind, oldest spooled capture, last upload, evictions, dropped captures by reason.")
    @OptionGroup var options: ConfigOption

    func run() async throws {
        let config = try options.load()
        print("encryption:       \(config.enableEncryption ? "on (end to end)" : "off (sealed to the collector's key)")")
        print("kek file:         \(config.activeKEKFile)")
        let spool: Spool
        do { spool = try Spool.openReadOnly(directory: config.spoolDir) } catch {
            print("spool:            \(config.spoolDir): \(error) (has the agent run yet?)")
            throw ExitCode(1)
        }
        let stats = try spool.stats()
        func state(_ k: String) -> String { ((try? spool.state(k)) ?? nil) ?? "-" }
        print("kek id (in use):  \(state(AgentState.kekID))")
        print("sealing:          \(state(AgentState.sealing))")
        print("spool:            \(config.spoolDir)")
        print(StatusFormatter.spool(stats))
        print(StatusFormatter.stranded(StrandedRecords.load(from: spool)))
        print("last upload:      \(StatusFormatter.time(state(AgentState.lastUploadMs)))")
        print("collector:        \(SafeText.escaped(state(AgentState.collector)))")
        try? spool.close()
    }
}

/// Keys the agent keeps in the spool's small state table (read by `status`).
enum AgentState {
    static let kekID = "kek-id"
    static let sealing = "sealing"
    static let lastUploadMs = "last-upload-ms"
    /// The collector uploads go to (with several `server-url`s: the one that last worked).
    static let collector = "collector"
}

enum StatusFormatter {
    static func time(_ ms: String) -> String {
        guard let v = Int64(ms) else { return ms }
        return time(v)
    }
    static func time(_ ms: Int64) -> String {
        ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }
    static func counts(_ byKind: [SpoolKind: SpoolCount]) -> String {
        SpoolKind.allCases.map { k in
            let c = byKind[k] ?? SpoolCount()
            return "\(k.rawValue) \(c.count) (\(c.bytes) bytes)"
        }.joined(separator: ", ")
    }
    /// Captures not kept, by reason: `0` or `N captures (too-large 12 (3145728 bytes), sealing-paused 3)`.
    static func dropped(_ s: SpoolStats) -> String {
        let total = s.totalDropped
        guard total.count > 0 else { return "0" }
        let reasons = s.dropped.filter { $0.value.count > 0 }.sorted { $0.key.rawValue < $1.key.rawValue }.map { r, c in
            c.bytes > 0 ? "\(r) \(c.count) (\(c.bytes) bytes)" : "\(r) \(c.count)"
        }
        return "\(total.count) captures (\(reasons.joined(separator: ", ")))"
    }
    /// Records sealed under another agent id (the collector refuses them), from the agent's last
    /// scan: `stranded:         0`, or one line per sealing id.
    static func stranded(_ s: StrandedRecords?) -> String {
        let lines = s?.lines ?? []
        guard !lines.isEmpty else { return "stranded:         0" }
        return lines.map { "stranded:         " + $0 }.joined(separator: "\n")
            + "\n                  (set agent-id back to that id, with its agent-token, until they drain)"
    }
    /// Multi-line spool summary. The `spooled:` line's first number is the total record count.
    static func spool(_ s: SpoolStats) -> String {
        """
        spooled:          \(s.totalSpooled.count) records, \(s.totalSpooled.bytes) bytes (\(s.leased) leased)
        spool by kind:    \(counts(s.spooled))
        oldest capture:   \(s.oldestCaptureTimeMs.map { time($0) } ?? "-")
        evictions:        \(s.totalEvicted.count) records, \(s.totalEvicted.bytes) bytes (\(counts(s.evicted)))
        dropped:          \(dropped(s))
        quarantined:      \(s.quarantined)
        spool files:      \(s.fileBytes) bytes of a \(s.maxBytes)-byte cap
        """
    }
}
