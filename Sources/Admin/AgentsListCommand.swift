import ArgumentParser
import CollectorStorage
import Foundation

/// `custos agents list --db collector.db`: the agents allowed to upload, with when each was
/// added. Tokens are never shown (only their SHA-256 is stored).
public struct AgentsListCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Show the agents allowed to upload: agent id and when it was added (UTC)."
    )

    @OptionGroup var database: DatabaseOptions

    public init() {}

    public func run() async throws {
        let rows = try await withStorage(try database.location(), createIfMissing: false) { storage in
            try await storageCall { () throws(StorageError) in try await storage.agents() }
        }
        Console.out(AgentListing.table(rows))
    }
}

/// The `agents list` table. Ids come from the database (a stolen copy may have been edited;
/// the backend refuses ids `AgentID` does not accept): `Console.table` escapes each cell.
enum AgentListing {
    static func table(_ rows: [AgentInfo]) -> TerminalText {
        if rows.isEmpty { return Console.line("no agents") }
        return Console.lines([
            Console.table([["AGENT", "ADDED (UTC)"]] + rows.map { [$0.id.rawValue, OutputNaming.iso($0.createdAtMs)] }),
            Console.line("\(rows.count) agent\(rows.count == 1 ? "" : "s")"),
        ])
    }
}
