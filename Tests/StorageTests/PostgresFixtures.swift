import CollectorStorage
import CollectorStoragePostgres
import CustosBase
import Envelope
import Foundation
import Logging
import Synchronization
import Testing
import TestSupport

/// One throwaway PostgreSQL cluster for a whole suite (`@Suite(.postgresCluster)`, nested
/// suites included): started at the first test that asks for it (``cluster()``; none when no
/// test does, e.g. the SQLite cases alone), stopped after the suite's last test; each test
/// takes its own database.
struct PostgresClusterScope: SuiteTrait, TestScoping {
    @TaskLocal static var current: LazyCluster?

    func provideScope(for test: Test, testCase: Test.Case?,
                      performing function: @Sendable () async throws -> Void) async throws {
        let lazy = LazyCluster()
        do {
            try await Self.$current.withValue(lazy) { try await function() }
        } catch {
            await lazy.shutdown()
            throw error
        }
        await lazy.shutdown()
    }

    /// The suite's cluster, started by the first caller. - Throws: outside a suite with the
    /// trait, or when the cluster cannot start (every caller then gets that error).
    static func cluster() async throws -> PostgresCluster {
        guard let lazy = current else { throw TestSupportError("no PostgreSQL cluster: add .postgresCluster to the suite") }
        return try await lazy.cluster()
    }
}

/// A cluster made once, by the first caller; callers at the same time wait for that one.
final class LazyCluster: Sendable {
    private let made = Mutex<Task<PostgresCluster, any Error>?>(nil)

    func cluster() async throws -> PostgresCluster {
        let task = made.withLock { t in
            if let t { return t }
            let new = Task { try await PostgresCluster.make() }
            t = new
            return new
        }
        return try await task.value
    }

    /// Stops and removes the cluster when one was made (waiting for one being made), off the
    /// concurrency pool (`pg_ctl stop`).
    func shutdown() async {
        guard let task = made.withLock({ $0 }), let cluster = try? await task.value else { return }
        _ = try? await offPool { cluster.shutdown() }
    }
}

extension Trait where Self == PostgresClusterScope {
    static var postgresCluster: Self { PostgresClusterScope() }
}

/// The collector's role in test clusters (owns its test databases unless a test says otherwise).
let collectorRole = "custos"

/// A `PostgresStorage` on `database` of `cluster` as `role`, running (its `run()` on a task of
/// the test) until `body` returns or throws; then closed.
func withPostgresStorage<T: Sendable>(
    cluster: PostgresCluster, database: String, role: String = collectorRole, password: String? = nil,
    timeout: Duration = .seconds(20), logger: Logger = Logger(label: "test.storage"),
    listenerBackoff: Backoff = Backoff(initial: .milliseconds(100), cap: .seconds(1)), blobDirectory: String? = nil,
    blobFileQuietPeriod: Duration = .seconds(15 * 60), maximumConnections: Int = 4, tokenCacheTTL: Duration = .seconds(5),
    _ body: (PostgresStorage) async throws -> T
) async throws -> T {
    let storage = try makePostgresStorage(cluster: cluster, database: database, role: role, password: password,
                                          timeout: timeout, logger: logger, listenerBackoff: listenerBackoff,
                                          blobDirectory: blobDirectory, blobFileQuietPeriod: blobFileQuietPeriod,
                                          maximumConnections: maximumConnections, tokenCacheTTL: tokenCacheTTL)
    let runner = Task { try await storage.run() }
    do {
        let result = try await body(storage)
        await storage.close()
        _ = await runner.result
        return result
    } catch {
        await storage.close()
        _ = await runner.result
        throw error
    }
}

func makePostgresStorage(cluster: PostgresCluster, database: String, role: String = collectorRole,
                         password: String? = nil, timeout: Duration = .seconds(20),
                         logger: Logger = Logger(label: "test.storage"),
                         listenerBackoff: Backoff = Backoff(initial: .milliseconds(100), cap: .seconds(1)),
                         blobDirectory: String? = nil, blobFileQuietPeriod: Duration = .seconds(15 * 60),
                         maximumConnections: Int = 4, tokenCacheTTL: Duration = .seconds(5)) throws -> PostgresStorage {
    let pw = try password ?? cluster.password(of: role) ?? cluster.createRole(role)
    let location = try PostgresLocation(cluster.url(database: database, user: role))
    return try PostgresStorage(.init(location: location, password: Secret(pw), operationTimeout: timeout,
                                     maximumConnections: maximumConnections, listenerBackoff: listenerBackoff,
                                     blobDirectory: blobDirectory, blobFileQuietPeriod: blobFileQuietPeriod,
                                     tokenCacheTTL: tokenCacheTTL),
                               logger: logger)
}

/// A fresh database owned by the collector's role, on the suite's cluster.
func freshDatabase(owner: String = collectorRole) async throws -> (PostgresCluster, String) {
    let cluster = try await PostgresClusterScope.cluster()
    _ = try await offPool { try cluster.createRole(owner) }
    return (cluster, try await cluster.createDatabaseAsync(owner: owner))
}

// MARK: Records for tests

func sampleDEK(_ agentID: AgentID, timeMs: Int64 = 1_700_000_000_000, kek: KEKID = KEKID(bytes: [UInt8](repeating: 7, count: 32))!,
               record: Data? = nil) -> StoredDEK {
    let id = DEKID.random()
    return StoredDEK(dekID: id, kekID: kek, agentID: agentID, creationTimeMs: timeMs,
                     record: record ?? Data("dek-record-\(id.hex)".utf8))
}

func sampleBlob(_ dek: StoredDEK, sequence: Int64 = 0, timeMs: Int64 = 1_700_000_000_500, kind: CaptureKind = .screen,
                bytes: Data? = nil, id: BlobID = .random()) -> StoredBlob {
    StoredBlob(blobID: id, agentID: dek.agentID, kind: kind, dekID: dek.dekID, kekID: dek.kekID, sequence: sequence,
               captureTimeMs: timeMs, bytes: bytes ?? Data("sealed-\(id.hex)".utf8))
}
