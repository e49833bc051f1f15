import CustosBase
import CustosConfig
import Envelope
import Foundation
import Logging
import ServiceLifecycle
import Spool
import Transport
import UnixSignals

/// Wires Capture → Sealer (Envelope) → Spool → Transport and runs them under one
/// `ServiceGroup`.
///
/// Order: the spool opens first and closes last; services start as uploader, KEK watcher,
/// capture, and stop in reverse (capture first). SIGTERM/SIGINT stop gracefully within 2 s
/// (longer only while a frame is still being encoded: it is finished, never cut)
/// (the uploader makes a bounded final flush). SIGHUP re-reads the config: `enable-encryption`
/// and the KEK files take effect at once (a new DEK, wrapped to the KEK now in force); the
/// spool keeps everything sealed before, each record under the KEK it was sealed to.
struct AgentRunner {
    let config: AgentConfig
    let logger: Logger

    func run() async throws {
        let spool = try Spool(directory: config.spoolDir, maxBytes: Int64(config.spoolMaxMB) << 20, logger: logger)
        defer { try? spool.close() }
        noteStranded(spool)
        let sealer = Sealer(config: config, sink: spool, logger: logger)
        let uploader = try makeUploader(spool: spool)
        let capture = CaptureService(config: config, sealer: sealer, logger: logger, backend: CaptureBackends.standard)
        let watcher = KEKWatcher(config: config, sealer: sealer, spool: spool, uploader: uploader, logger: logger,
                                 onReload: { capture.reload($0) })
        watcher.check(config)

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let uploader { services.append(.init(service: uploader)) }
        services.append(.init(service: watcher))
        services.append(.init(service: capture))
        var groupConfig = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                                    logger: logger)
        // Within the graceful period the uploader makes its final flush (at most
        // `finalFlushTimeout`); after it, the group cancels what still runs. Every transport wait
        // is cancellable, so that ends in milliseconds. The capture thread cannot be cut short
        // inside libaom: it finishes the frame it is encoding (a 1920x1080 keyframe of a noisy
        // screen takes 2-4 s on a loaded 2-core machine; issue 13 QA), seals it and the open
        // keystroke chunk, and ends. The cancellation limit (service-lifecycle traps when it is
        // exceeded: SIGILL, exit 132) therefore allows that, and stays below the unit's
        // TimeoutStopSec=15s.
        groupConfig.maximumGracefulShutdownDuration = .milliseconds(1800)
        groupConfig.maximumCancellationDuration = .seconds(12)
        let group = ServiceGroup(configuration: groupConfig)
        SystemdNotify.send("READY=1\nSTATUS=\(sealer.isAvailable ? "capturing" : "waiting for a usable KEK")")
        logger.info("ready", metadata: ["spool.dir": "\(config.spoolDir)", "encryption.enabled": "\(config.enableEncryption)"])
        try await group.run()
        watcher.recordUploadState()
        SystemdNotify.send("STOPPING=1")
        logger.info("stopped")
    }

    /// Finds spooled records sealed under another agent id than the configured one (the collector
    /// refuses them `agent-mismatch`) and stores the finding for `status`. When `agent-id=` changed
    /// since the last run, the records sealed under the id now configured are made leasable at
    /// once (an earlier refusal delayed them by an hour): setting the old id back drains them now.
    private func noteStranded(_ spool: Spool) {
        do {
            let previous = StrandedRecords.load(from: spool)
            let sealers = try StrandedRecords.sealers(in: spool)
            if let previous, previous.configured != config.agentID.rawValue,
               let groups = sealers[config.agentID.rawValue] {
                let n = try spool.retryNow(dekIDs: groups.map(\.dekID))
                if n > 0 {
                    logger.notice("agent-id changed: records sealed under it are retried now",
                                  metadata: ["agent.id": "\(SafeText.escaped(config.agentID.rawValue))",
                                             "previous.agent_id": "\(SafeText.escaped(previous.configured))",
                                             "spool.records": "\(n)"])
                }
            }
            let scan = try StrandedRecords.scan(spool, configured: config.agentID)
            try scan.save(to: spool)
        } catch {
            logger.warning("cannot check the spool for records sealed under another agent id",
                           metadata: ["spool.error": "\(error)"])
        }
    }

    /// The upload loop, or nil (with a warning) when no `server-url` is configured.
    private func makeUploader(spool: Spool) throws -> Uploader? {
        guard !config.serverURLs.isEmpty else {
            logger.warning("server-url not set: captures stay in the spool")
            return nil
        }
        guard let token = config.agentToken else {
            throw ConfigError(file: config.configPath, key: "agent-token", "required when server-url is set (run `custos agents add` on the collector)")
        }
        let policy = try TLSPolicy(pins: config.serverPins, caFile: config.serverCA)
        let clients = try config.serverURLs.map { url throws(TransportError) in
            try CollectorClient(configuration: TransportConfiguration(server: url, agentID: config.agentID, agentToken: token,
                                                                      policy: policy),
                                logger: logger)
        }
        // The final flush fits inside the 1.8 s graceful period, after capture has stopped.
        return Uploader(queue: spool, clients: clients, configuration: .init(finalFlushTimeout: .seconds(1)), logger: logger)
    }
}

/// Re-checks the KEK periodically while there is none usable (an admin may add it later), and
/// re-reads the config on SIGHUP. Records the sealing state in the spool for `status`.
final class KEKWatcher: Service, Sendable {
    private let config: AgentConfig
    private let sealer: Sealer
    private let spool: Spool
    private let uploader: Uploader?
    private let logger: Logger
    /// Called with the re-read config on SIGHUP (the capture service applies `display`/`xauthority`).
    private let onReload: @Sendable (AgentConfig) -> Void
    /// How often a missing or unusable KEK is looked for again.
    static let recheckInterval = Duration.seconds(5)

    init(config: AgentConfig, sealer: Sealer, spool: Spool, uploader: Uploader?, logger: Logger,
         onReload: @escaping @Sendable (AgentConfig) -> Void = { _ in }) {
        self.config = config; self.sealer = sealer; self.spool = spool; self.uploader = uploader; self.logger = logger
        self.onReload = onReload
    }

    /// Copies the uploader's last success time into the spool's state table for `status`.
    func recordUploadState() {
        guard let status = uploader?.status else { return }
        if let ms = status.lastSuccessMs {
            try? spool.setState(AgentState.lastUploadMs, String(ms))
        }
        try? spool.setState(AgentState.collector, status.collector.description)
    }

    func check(_ config: AgentConfig) {
        sealer.refresh(config: config)
        let s = sealer.status
        try? spool.setState(AgentState.kekID, s.kekID?.hex ?? "-")
        try? spool.setState(AgentState.sealing, s.reason.map { "paused: \($0)" }
                            ?? (s.encryption ? "sealing end to end" : "sealing to the collector's key"))
    }

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in signals.cancelOnGracefulShutdown() {
                    do {
                        let fresh = try AgentConfig(contentsOf: self.config.configPath)
                        self.logger.info("SIGHUP: config re-read", metadata: ["encryption.enabled": "\(fresh.enableEncryption)",
                                                                             "kek.file": "\(fresh.activeKEKFile)"])
                        self.check(fresh)
                        self.onReload(fresh)
                    } catch {
                        self.logger.error("SIGHUP: config not reloaded, keeping the running one", metadata: ["config.error": "\(error)"])
                    }
                }
            }
            group.addTask {
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    try? await Task.sleep(for: Self.recheckInterval)
                    self.recordUploadState()
                    if !self.sealer.isAvailable {
                        let cfg = (try? AgentConfig(contentsOf: self.config.configPath)) ?? self.config
                        self.check(cfg)
                    }
                }
            }
            await group.next()
            group.cancelAll()
        }
        recordUploadState()
    }
}
