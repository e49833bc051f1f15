import ArgumentParser
import CollectorStorage
import CustosBase
import Foundation

/// `custos hold …`: legal holds. While a hold is active no capture of its agent expires,
/// whatever the collector's retention policy (docs/STORAGE.md "Legal holds"). Each command
/// appends an audit record (`hold.add`, `hold.remove`, `hold.list`).
public struct HoldCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hold",
        abstract: "Place, list and remove legal holds (captures of a held agent never expire).",
        subcommands: [HoldAddCommand.self, HoldListCommand.self, HoldRemoveCommand.self]
    )
    public init() {}
}

/// `custos hold add --db collector.db --agent ID --until TIME [--reason TEXT]`: prints the new hold's id.
public struct HoldAddCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Place a legal hold on an agent's captures until a time; prints the hold's id.",
        discussion: "TIME as --since takes it: 2027-06-30, 2027-06-30T12:00:00Z or Unix ms; it must be in the future. The agent need not be registered (a removed agent's captures stay and may be held). Place holds before a backup rotation drops the evidence."
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Agent id: 1-64 characters of A-Z a-z 0-9 . _ -, not '.' or '..'")
    var agent: String

    @Option(help: ArgumentHelp("When the hold ends: ISO 8601, a date (UTC midnight) or Unix ms.", valueName: "time"))
    var until: String

    @Option(help: "Why (case number, request); stored and shown with the hold.")
    var reason: String = ""

    public init() {}

    public func run() async throws {
        // The one agent-id validator and the one time parser, before the database is touched.
        let agentID: AgentID
        do { agentID = try AgentID(agent, field: "--agent") } catch { throw AdminError(.usage, error.description) }
        let untilMs = try parseTime(until)
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        guard untilMs > nowMs else {
            throw AdminError(.usage, "--until \(SafeText.quoted(until)) is \(OutputNaming.iso(untilMs)), not in the future: a hold ends then")
        }
        guard !reason.utf8.contains(0) else { throw AdminError(.usage, "--reason holds a NUL character") }
        let actor = loginUser()
        let hold = try await withStorage(try database.location(), createIfMissing: false) { storage in
            let hold = try await storageCall { () throws(StorageError) in
                try await storage.addHold(agent: agentID, untilMs: untilMs, reason: reason, createdBy: actor)
            }
            _ = try await storageCall { () throws(StorageError) in
                try await storage.appendAudit(actor: actor, action: "hold.add",
                                              detail: "id=\(hold.id) agent=\(agentID) until=\(OutputNaming.iso(untilMs)) reason=\(SafeText.quoted(reason))")
            }
            return hold
        }
        printError("hold \(hold.id) placed on agent \(agentID) until \(OutputNaming.iso(untilMs)) UTC")
        printOut("\(hold.id)")
    }
}

/// `custos hold list --db collector.db [--active]`: every hold (or only active ones), by id.
public struct HoldListCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Show legal holds: id, agent, until, state, placed by, placed at (UTC), reason."
    )

    @OptionGroup var database: DatabaseOptions

    @Flag(help: "Only holds active now.")
    var active = false

    public init() {}

    public func run() async throws {
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        let rows = try await withStorage(try database.location(), createIfMissing: false) { storage in
            let rows = try await storageCall { () throws(StorageError) in try await storage.holds(activeAtMs: active ? nowMs : nil) }
            _ = try? await storage.appendAudit(actor: loginUser(), action: "hold.list", detail: "holds=\(rows.count)")
            return rows
        }
        Console.out(HoldListing.table(rows, nowMs: nowMs))
    }
}

/// The `hold list` table. Every cell goes through `Console.table`, which escapes it (a reason
/// or a name from the database may hold control characters).
enum HoldListing {
    static func table(_ rows: [LegalHold], nowMs: Int64) -> TerminalText {
        if rows.isEmpty { return Console.line("no holds") }
        return Console.lines([
            Console.table([["ID", "AGENT", "UNTIL (UTC)", "STATE", "BY", "PLACED (UTC)", "REASON"]] + rows.map {
                ["\($0.id)", $0.agentID.rawValue, OutputNaming.iso($0.untilMs), $0.isActive(atMs: nowMs) ? "active" : "ended",
                 $0.createdBy, OutputNaming.iso($0.createdAtMs), $0.reason]
            }),
            Console.line("\(rows.count) hold\(rows.count == 1 ? "" : "s")"),
        ])
    }
}

/// `custos hold remove --db collector.db --id N`: the agent's expired captures may then go at
/// the collector's next retention run.
public struct HoldRemoveCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove a legal hold by id (its agent's expired captures then go at the next retention run)."
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: "The hold's id (custos hold list).")
    var id: Int64

    public init() {}

    public func run() async throws {
        let actor = loginUser()
        try await withStorage(try database.location(), createIfMissing: false) { storage in
            let before = try await storageCall { () throws(StorageError) in try await storage.holds(activeAtMs: nil) }
                .first { $0.id == id }
            try await storageCall { () throws(StorageError) in try await storage.removeHold(id: id) }
            _ = try await storageCall { () throws(StorageError) in
                try await storage.appendAudit(actor: actor, action: "hold.remove",
                                              detail: "id=\(id)" + (before.map { " agent=\($0.agentID) until=\(OutputNaming.iso($0.untilMs))" } ?? ""))
            }
        }
        printError("hold \(id) removed")
    }
}
