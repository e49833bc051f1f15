import Collector
import CollectorStorage
import CollectorStorageOpen
import Foundation
import Logging

/// A real ``CollectorServer`` running in this process on 127.0.0.1 (port 0 by default), with a
/// temporary SQLite file and certificates made by the `openssl` CLI (``TestPKI``).
///
/// ```swift
/// let dir = try TempDir("net")
/// let collector = try await TestCollector.start(in: dir.path)
/// let token = try await collector.storage.addAgent(try AgentID("host-1"))
/// // ... connect to collector.url pinning collector.pin ...
/// await collector.stop()
/// ```
public final class TestCollector: Sendable {
    /// The bound TCP port.
    public let port: Int
    /// The certificates (shared across restarts).
    public let pki: TestPKI
    /// Name of the certificate the collector presents (`leaf`, `selfSigned`, `expired`, `wrongHost`).
    public let certificateName: String
    /// The SQLite file.
    public let databasePath: String
    public let server: CollectorServer
    /// The admin listener's bound port (`admin-listen`), 0 without one.
    public let adminPort: Int
    private let task: Task<Void, any Error>

    /// `https://127.0.0.1:ADMINPORT`: the dashboard and its API.
    public var adminURL: String { "https://127.0.0.1:\(adminPort)" }

    /// The storage the server writes (closed when the server stops, unless the test gave it).
    public var storage: any CollectorStorage { server.storage }
    /// `https://127.0.0.1:PORT`.
    public var url: String { "https://127.0.0.1:\(port)" }
    /// The `sha256/BASE64` pin of the presented leaf certificate.
    public var pin: String { get throws { try pki.pin(certificateName) } }

    private init(port: Int, adminPort: Int, pki: TestPKI, certificateName: String, databasePath: String, server: CollectorServer,
                 task: Task<Void, any Error>) {
        self.port = port
        self.adminPort = adminPort
        self.pki = pki
        self.certificateName = certificateName
        self.databasePath = databasePath
        self.server = server
        self.task = task
    }

    /// Starts a collector and waits until it listens.
    /// - Parameters:
    ///   - directory: a test's temp dir; certificates go to `directory/pki` (made unless `pki` is given),
    ///     the database to `directory/collector.db` unless `databasePath` is given.
    ///   - certificate: which ``TestPKI`` leaf to present (`leaf` presents leaf + intermediate).
    ///   - port: 0 for a free port, or a port to reuse after ``stop()``.
    ///   - maxRequestBytes: the collector's upload limit.
    ///   - storage: a storage to serve instead of opening `databasePath` (the test closes it).
    ///   - retention: the policy its ``RetentionService`` applies every `retentionInterval`.
    ///   - admin: the admin listener (the dashboard) on a free port of 127.0.0.1 with the same
    ///     certificate, nil: none. Accounts: `storage.addAdmin` or ``TestAdmin/add(to:name:role:password:totpSecret:)``.
    ///   - location: a storage to open instead of `databasePath` (a PostgreSQL database; the
    ///     server opens, runs and closes it).
    public static func start(in directory: String, pki: TestPKI? = nil, certificate: String = "leaf", port: Int = 0,
                             databasePath: String? = nil, storage: (any CollectorStorage)? = nil,
                             maxRequestBytes: Int = 16 * 1024 * 1024,
                             kekPollInterval: Duration = .seconds(3), maxInflightBytes: Int = 256 << 20,
                             retryAfterSeconds: Int = 5, idleTimeout: Duration = .seconds(30),
                             bodyTimeout: Duration = .seconds(120), maxUploadsPerAgent: Int = 4, maxConnections: Int = 1024,
                             retention: RetentionPolicy = .keepForever, retentionInterval: Duration = .seconds(3600),
                             admin: TestAdminListener? = nil, location: StorageLocation? = nil,
                             logger: Logger = Logger(label: "test-collector")) async throws -> TestCollector {
        let pki = try pki ?? makeTestPKI(in: directory)
        let db = databasePath ?? directory + "/collector.db"
        let adminConfig = admin.map {
            AdminListenerConfiguration(host: "127.0.0.1", port: 0, tlsCertFile: pki.chain(certificate), tlsKeyFile: pki.key(certificate),
                                       sessionIdle: $0.sessionIdle, sessionMax: $0.sessionMax,
                                       dashboardDirectory: $0.dashboardDirectory ?? packageRoot + "/dashboard",
                                       serverPrivateKeyFile: $0.serverPrivateKeyFile)
        }
        let config = CollectorConfiguration(listenHost: "127.0.0.1", listenPort: port,
                                            tlsCertFile: pki.chain(certificate), tlsKeyFile: pki.key(certificate),
                                            database: location ?? .sqlite(path: db), maxRequestBytes: maxRequestBytes,
                                            kekPollInterval: kekPollInterval, maxInflightBytes: maxInflightBytes,
                                            retryAfterSeconds: retryAfterSeconds, idleTimeout: idleTimeout,
                                            bodyTimeout: bodyTimeout, maxUploadsPerAgent: maxUploadsPerAgent,
                                            maxConnections: maxConnections, trapSIGHUP: false,
                                            retention: retention, retentionInterval: retentionInterval, admin: adminConfig)
        let server = try await CollectorServer(configuration: config, storage: storage, logger: logger)
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let (adminPorts, adminContinuation) = AsyncStream<Int>.makeStream()
        // On threads of its own, like the separate process it is in production.
        let task = Task(executorPreference: ThreadTaskExecutor.collectors) {
            defer { continuation.finish(); adminContinuation.finish() }
            try await server.run(onListening: { continuation.yield($0) }, onAdminListening: { adminContinuation.yield($0) })
        }
        // Wait for the port(s) (or the server failing first), at most 60 s.
        let wantsAdmin = admin != nil
        let bound: Int? = await withTaskGroup(of: Int?.self) { group in
            group.addTask { for await p in ports { return p }; return nil }
            group.addTask { try? await Task.sleep(for: .seconds(60)); return nil }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        guard let bound, bound > 0 else {
            task.cancel()
            if case .failure(let error) = await task.result { throw error }
            throw TestSupportError("collector did not start listening within 60 s")
        }
        var adminBound = 0
        if wantsAdmin {
            adminBound = await withTaskGroup(of: Int.self) { group in
                group.addTask { for await p in adminPorts { return p }; return 0 }
                group.addTask { try? await Task.sleep(for: .seconds(60)); return 0 }
                let first = await group.next() ?? 0
                group.cancelAll()
                return first
            }
            guard adminBound > 0 else {
                task.cancel()
                throw TestSupportError("the admin listener did not start within 60 s")
            }
        }
        return TestCollector(port: bound, adminPort: adminBound, pki: pki, certificateName: certificate, databasePath: db, server: server,
                             task: task)
    }

    /// Stops the server (closes the listener and its connections) and waits for it to end.
    public func stop() async {
        task.cancel()
        _ = await task.result
    }
}

/// How a ``TestCollector``'s admin listener is set up (the certificate is the collector's).
public struct TestAdminListener: Sendable {
    /// `dashboard-dir`; nil: the repository's `dashboard/`.
    public var dashboardDirectory: String?
    /// `server-private-key-file`.
    public var serverPrivateKeyFile: String?
    public var sessionIdle: Duration
    public var sessionMax: Duration

    public init(dashboardDirectory: String? = nil, serverPrivateKeyFile: String? = nil,
                sessionIdle: Duration = .seconds(15 * 60), sessionMax: Duration = .seconds(12 * 3600)) {
        self.dashboardDirectory = dashboardDirectory
        self.serverPrivateKeyFile = serverPrivateKeyFile
        self.sessionIdle = sessionIdle
        self.sessionMax = sessionMax
    }
}

/// Makes an RSA-2048 KEK with the openssl CLI in `directory`: `keypair.pem` (unencrypted) and
/// `publickey.crt` (`openssl rsa -pubout`). Returns the public key's path.
public func makeTestKEK(in directory: String, name: String = "kek") throws -> (publicKey: String, privateKey: String) {
    try requireTool("openssl")
    let dir = directory + "/" + name
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try runChecked(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", dir + "/keypair.pem"])
    try runChecked(["openssl", "rsa", "-in", dir + "/keypair.pem", "-pubout", "-out", dir + "/publickey.crt"])
    return (dir + "/publickey.crt", dir + "/keypair.pem")
}
