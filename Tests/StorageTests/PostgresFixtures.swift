import CollectorStorage
import CollectorStoragePostgres
import CustosBase
import Envelope
import Foundation
import Logging
import Testing
import TestSupport

/// One throwaway PostgreSQL cluster for a whole suite (`@Suite(.postgresCluster)`): started
/// before its first test, stopped after its last; each test takes its own database.
struct PostgresClusterScope: SuiteTrait, TestScoping {
    @TaskLocal static var current: PostgresCluster?

    func provideScope(for test: Test, testCase: Test.Case?,
                      performing function: @Sendable () async throws -> Void) async throws {
        let cluster = try await PostgresCluster.make()
        defer { cluster.shutdown() }
        try await Self.$current.withValue(cluster) { try await function() }
    }

    /// The suite's cluster. - Throws: outside a suite with the trait.
    static func cluster() throws -> PostgresCluster {
        guard let c = current else { throw TestSupportError("no PostgreSQL cluster: add .postgresCluster to the suite") }
        return c
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
    timeout: Duration = .seconds(5), logger: Logger = Logger(label: "test.storage"),
    listenerBackoff: Backoff = Backoff(initial: .milliseconds(100), cap: .seconds(1)),
    _ body: (PostgresStorage) async throws -> T
) async throws -> T {
    let storage = try makePostgresStorage(cluster: cluster, database: database, role: role, password: password,
                                          timeout: timeout, logger: logger, listenerBackoff: listenerBackoff)
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
                         password: String? = nil, timeout: Duration = .seconds(5),
                         logger: Logger = Logger(label: "test.storage"),
                         listenerBackoff: Backoff = Backoff(initial: .milliseconds(100), cap: .seconds(1))) throws -> PostgresStorage {
    let pw = try password ?? cluster.password(of: role) ?? cluster.createRole(role)
    let url = try PostgresURL(cluster.url(database: database, user: role))
    return try PostgresStorage(.init(url: url, password: Secret(pw), operationTimeout: timeout, maximumConnections: 4,
                                     listenerBackoff: listenerBackoff),
                               logger: logger)
}

/// A fresh database owned by the collector's role, on the suite's cluster.
func freshDatabase(owner: String = collectorRole) async throws -> (PostgresCluster, String) {
    let cluster = try PostgresClusterScope.cluster()
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
