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
        discussion: "TIME as --since takes it: 2027-06-30, 2027-06-30T12:00:00Z or Unix ms (10 or more digits); it must be in the future. The agent need not be registered (a removed agent's captures stay and may be held). Place holds before a backup rotation drops the evidence."
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Agent id: 1-64 characters of A-Z a-z 0-9 . _ -, not '.' or '..'")
    var agent: String

    @Option(help: ArgumentHelp("When the hold ends: ISO 8601, a date (UTC midnight) or Unix ms (10 or more digits).", valueName: "time"))
    var until: String

    @Option(help: "Why (case number, request; at most 500 characters); stored and shown with the hold.")
    var reason: String = ""

    public init() {}

    public func run() async throws {
        // The one agent-id, time and reason validators, before the database is touched.
        let agentID: AgentID
        do { agentID = try AgentID(agent, field: "--agent") } catch { throw AdminError(.usage, error.description) }
        let untilMs = try parseTime(until, field: "--until")
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        guard untilMs > nowMs else {
            throw AdminError(.usage, "--until \(SafeText.quoted(until)) is \(OutputNaming.iso(untilMs)), not in the future: a hold ends then")
        }
        if let problem = LegalHold.reasonProblem(reason) { throw AdminError(.usage, "--reason \(problem)") }
        let (reason, actor) = (self.reason, loginUser())
        let hold = try await withAuditedCall(try database.location(), action: "hold.add") { storage in
            try await storageCall { () throws(StorageError) in
                try await storage.addHold(agent: agentID, untilMs: untilMs, reason: reason, createdBy: actor)
            }
        } detail: { hold in
            "id=\(hold.id) agent=\(agentID) until=\(OutputNaming.iso(untilMs)) reason=\(SafeText.quoted(reason))"
        }
        printError("hold \(hold.id) placed on agent \(agentID) until \(OutputNaming.iso(untilMs)) UTC")
        printOut("\(hold.id)")
    }
}

/// `custos hold list --db collector.db [--all]`: the holds in force now (or every hold, ended
/// and removed ones too), by id.
public struct HoldListCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Show the legal holds in force: id, agent, until, state, placed by, placed at (UTC), reason; --all adds ended and removed ones."
    )

    @OptionGroup var database: DatabaseOptions

    @Flag(help: "Every hold: also those that ended, and those removed (with who removed them and when).")
    var all = false

    @Flag(help: .hidden)
    var active = false  // the default; kept so that scripts written for the first `hold list` still run

    public init() {}

    public func validate() throws {
        if all && active { throw ValidationError("--all and --active exclude each other (the default shows the active holds)") }
    }

    public func run() async throws {
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        let all = self.all
        let rows = try await withAuditedCall(try database.location(), action: "hold.list", required: false) { storage in
            try await storageCall { () throws(StorageError) in try await storage.holds(activeAtMs: all ? nil : nowMs) }
        } detail: { rows in
            "holds=\(rows.count)\(all ? " all" : "")"
        }
        Console.out(HoldListing.table(rows, nowMs: nowMs, all: all))
    }
}

/// The `hold list` table. Every cell goes through `Console.table`, which escapes it (a reason
/// or a name from the database may hold control characters or backslashes).
enum HoldListing {
    /// With `all`, two more columns: who removed a hold and when (`-` for one not removed).
    static func table(_ rows: [LegalHold], nowMs: Int64, all: Bool = false) -> TerminalText {
        if rows.isEmpty { return Console.line(all ? "no holds" : "no active holds (--all lists ended and removed ones)") }
        var header = ["ID", "AGENT", "UNTIL (UTC)", "STATE", "BY", "PLACED (UTC)"]
        if all { header += ["REMOVED BY", "REMOVED (UTC)"] }
        return Console.lines([
            Console.table([header + ["REASON"]] + rows.map { h in
                var row = ["\(h.id)", h.agentID.rawValue, OutputNaming.iso(h.untilMs), h.state(atMs: nowMs), h.createdBy,
                           OutputNaming.iso(h.createdAtMs)]
                if all { row += [h.removedBy ?? "-", h.removedAtMs.map(OutputNaming.iso) ?? "-"] }
                return row + [h.reason]
            }),
            Console.line("\(counted(rows.count, all ? "hold" : "active hold"))"),
        ])
    }
}

/// `custos hold remove --db collector.db --id N`: marks the hold removed (its row stays, with who
/// removed it and when); it no longer protects, so the agent's expired captures go at the
/// collector's next retention run.
public struct HoldRemoveCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove a legal hold by id (its agent's expired captures then go at the next retention run); the hold stays listed with --all."
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: "The hold's id (custos hold list).")
    var id: Int64

    public init() {}

    public func validate() throws {
        if id < 1 { throw ValidationError("--id \(id): expected a hold id (1 or more; custos hold list shows them)") }
    }

    public func run() async throws {
        let (id, actor) = (self.id, loginUser())
        let hold = try await withAuditedCall(try database.location(), action: "hold.remove") { storage throws -> LegalHold in
            do throws(StorageError) {
                return try await storage.removeHold(id: id, removedBy: actor)
            } catch where error.code == .notFound {
                throw AdminError(.usage, "--id \(id): \(error.message)")
            } catch {
                throw AdminError.fromStorage(error)
            }
        } detail: { (hold: LegalHold) in
            "id=\(id) agent=\(hold.agentID) until=\(OutputNaming.iso(hold.untilMs)) reason=\(SafeText.quoted(hold.reason))"
        }
        printError("hold \(id) on agent \(hold.agentID) removed: it no longer protects that agent's captures (custos hold list --all still shows it)")
    }
}
