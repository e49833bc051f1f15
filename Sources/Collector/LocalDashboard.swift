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
import ServiceLifecycle

/// The dashboard served on the reviewer's own machine (`custos dashboard`, docs/ADMIN.md
/// "Local dashboard"): the admin listener alone — the same API and pages as a collector's
/// `admin-listen` — over a storage the caller opened (a copy of the collector's database) and
/// runs. The pages come from the reviewer's own installed files, so a compromised collector
/// cannot serve a page that steals the passphrase.
public enum LocalDashboard {
    /// Serves until SIGINT or SIGTERM (or the task is cancelled). `onListening` gets the bound port.
    /// - Throws: ``CollectorError`` `.configuration` for unreadable TLS files or an unusable
    ///   `serverPrivateKeyFile`.
    public static func run(storage: any CollectorStorage, configuration: AdminListenerConfiguration, logger: Logger,
                           onListening: @escaping @Sendable (Int) async -> Void) async throws {
        let tls = try CollectorServer.loadTLS(cert: configuration.tlsCertFile, key: configuration.tlsKeyFile,
                                              certKey: "--tls-cert", keyKey: "--tls-key")
        let ownKey = try CollectorServer.ownKey(configuration.serverPrivateKeyFile)
        let api = AdminAPI(storage: storage, configuration: configuration, ownKey: ownKey, logger: logger)
        let app = CollectorServer.adminApplication(api, tls: tls, listen: configuration, idleTimeout: .seconds(30), logger: logger,
                                                   onListening: onListening)
        let group = ServiceGroup(configuration: .init(services: [.init(service: app)], gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        try await group.run()
    }
}
