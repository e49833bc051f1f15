import Foundation
import Testing
import TestSupport

/// The throwaway cluster itself: it starts, takes a password over TCP (and refuses a wrong
/// one), and stops.
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"))
struct PostgresClusterTests {
    @Test func startsConnectsAndStops() async throws {
        let cluster = try await PostgresCluster.make()
        defer { cluster.shutdown() }
        let version = try await cluster.psqlAsync("SHOW server_version_num;")
        #expect(Int(version.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 >= 130000)

        // Password authentication is real: a wrong password is refused over TCP.
        let wrong = try await offPool { try cluster.psqlResult("SELECT 1;", password: "wrong") }
        #expect(wrong.status != 0)
        #expect(wrong.stderrString.contains("password authentication failed"))

        let pw = try cluster.createRole("custos_probe")
        let db = try await cluster.createDatabaseAsync(owner: "custos_probe")
        let who = try await cluster.psqlAsync("SELECT current_user || '@' || current_database();", database: db,
                                              user: "custos_probe", password: pw)
        #expect(who.trimmingCharacters(in: .whitespacesAndNewlines) == "custos_probe@\(db)")

        try await cluster.stopAsync()
        #expect(!cluster.isRunning)
        let down = try await offPool { try cluster.psqlResult("SELECT 1;") }
        #expect(down.status != 0)
        try await cluster.startAsync()
        #expect(try await cluster.psqlAsync("SELECT 41 + 1;").contains("42"))

        cluster.shutdown()
        #expect(!FileManager.default.fileExists(atPath: cluster.directory))
    }
}
