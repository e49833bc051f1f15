import ArgumentParser
import CollectorStorage
import Foundation

/// `custos audit …`.
public struct AuditCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Read the collector's append-only audit log (who added agents, registered keys, decrypted or exported).",
        subcommands: [AuditListCommand.self]
    )
    public init() {}
}

/// `custos audit list --db collector.db [--limit N] [--before ID]`: newest entries first.
public struct AuditListCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List audit log entries, newest first: id, time, actor, action, detail.",
        discussion: "Entries are read a page at a time. When --limit stops the listing early, the last line gives the --before value that continues it."
    )

    @OptionGroup var database: DatabaseOptions
    @Option(help: "At most N entries (default 100).")
    var limit = 100
    @Option(help: ArgumentHelp("Only entries older than this entry id.", valueName: "id"))
    var before: Int64?

    public init() {}

    /// Entries asked of the storage at once.
    static let pageSize = 1000

    public func validate() throws {
        if limit < 1 { throw ValidationError("--limit \(limit): expected at least 1") }
        if let before, before < 1 { throw ValidationError("--before \(before): expected an entry id (1 or more)") }
    }

    public func run() async throws {
        try await withStorage(try database.location(), createIfMissing: false) { storage in
            var widths: [Int] = []
            var header = true, count = 0, cursor = before, exhausted = false
            while count < limit && !exhausted {
                let (asked, from) = (min(Self.pageSize, limit - count), cursor)
                let page = try await storageCall { () throws(StorageError) in
                    try await storage.auditEntries(before: from, limit: asked)
                }
                // Actor, action and detail come from the database: Console.table escapes each cell.
                var rows = header ? [["ID", "TIME (UTC)", "ACTOR", "ACTION", "DETAIL"]] : []
                rows += page.map { ["\($0.id)", OutputNaming.iso($0.atMs), $0.actor, $0.action, $0.detail] }
                header = false
                Console.out(Console.table(rows, widths: &widths))
                count += page.count
                cursor = page.last?.id ?? cursor
                exhausted = page.count < asked
            }
            var next = ""
            if !exhausted, let last = cursor {
                let older = try await storageCall { () throws(StorageError) in try await storage.auditEntries(before: last, limit: 1) }
                if !older.isEmpty { next = "; older entries: --before \(last)" }
            }
            Console.out("\(count) entr\(count == 1 ? "y" : "ies")\(next)")
        }
    }
}
