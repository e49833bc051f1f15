import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Foundation
import Testing
import TestSupport

/// `custos hold add / list / remove` on the built binary.
@Suite("custos hold (built binary)")
struct HoldCommandTests {
    @Test("hold add, list (active, --all), remove (the row stays, marked); audit records; output escaped, backslashes too")
    func holdSession() async throws {
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-hold")
        defer { tmp.remove() }
        let db = tmp.file("collector.db")
        try await SQLiteStorage(path: db).close()

        let add = try runCommand([custos, "hold", "add", "--db", db, "--agent", "ws-17", "--until", "2099-01-01",
                                  "--reason", "case 7 \u{1B}[31mred and a typed \\u{1B}"])
        #expect(add.status == 0, "\(add.stderrString)")
        #expect(add.stdoutString == "1\n")
        #expect(add.stderrString.contains("hold 1 placed on agent ws-17 until 2099-01-01"), "\(add.stderrString)")
        let second = try runCommand([custos, "hold", "add", "--db", db, "--agent", "ws-18", "--until", "4102444800000"])
        #expect(second.status == 0 && second.stdoutString == "2\n", "\(second.stderrString)")

        let list = try runCommand([custos, "hold", "list", "--db", db])
        #expect(list.status == 0, "\(list.stderrString)")
        #expect(list.stdoutString.contains("ws-17") && list.stdoutString.contains("ws-18") && list.stdoutString.contains("active"))
        #expect(list.stdoutString.contains("2099-01-01") && list.stdoutString.contains("2 active holds"))
        #expect(!list.stdoutString.contains("\u{1B}"), "a reason's control characters are escaped")
        // The real ESC shows as \u{1B}; the typed backslash is doubled, so the two differ on screen.
        #expect(list.stdoutString.contains("case 7 \\u{1B}[31mred and a typed \\\\u{1B}"), "\(list.stdoutString)")

        let remove = try runCommand([custos, "hold", "remove", "--db", db, "--id", "1"])
        #expect(remove.status == 0, "\(remove.stderrString)")
        #expect(remove.stderrString.contains("hold 1 on agent ws-17 removed: it no longer protects"), "\(remove.stderrString)")
        let again = try runCommand([custos, "hold", "remove", "--db", db, "--id", "1"])
        #expect(again.status == 2 && again.stderrString.contains("--id 1: ") && again.stderrString.contains("legal hold 1 was removed already, by '"),
                "\(again.stderrString)")
        let unknown = try runCommand([custos, "hold", "remove", "--db", db, "--id", "7"])
        #expect(unknown.status == 2 && unknown.stderrString.contains("--id 7: ") && unknown.stderrString.contains("no legal hold 7"),
                "\(unknown.stderrString)")
        let zero = try runCommand([custos, "hold", "remove", "--db", db, "--id", "0"])
        #expect(zero.status == 2 && zero.stderrString.contains("--id 0: expected a hold id"), "\(zero.stderrString)")

        // The default listing shows what is in force; --all shows the removed hold too, with who and when.
        let active = try runChecked([custos, "hold", "list", "--db", db])
        #expect(!active.contains("ws-17") && active.contains("ws-18") && active.contains("1 active hold"), "\(active)")
        #expect(try runChecked([custos, "hold", "list", "--db", db, "--active"]) == active)
        let all = try runChecked([custos, "hold", "list", "--db", db, "--all"])
        let removedLine = all.split(separator: "\n").first { $0.hasPrefix("1 ") }.map(String.init) ?? ""
        #expect(removedLine.contains("ws-17") && removedLine.contains("removed") && all.contains("REMOVED BY") && all.contains("2 holds"),
                "\(all)")

        // Refused before the database is touched: exit 2 naming the option.
        let long = String(repeating: "x", count: 501)
        for (args, expected) in [(["--agent", "bad/id", "--until", "2099-01-01"], "--agent"),
                                 (["--agent", "ws-17", "--until", "soon"], "--until 'soon': not a time (expected ISO 8601"),
                                 (["--agent", "ws-17", "--until", "12345"],
                                  "--until '12345': a number is read as Unix ms only with 10 or more digits (fewer would be in January 1970); expected ISO 8601"),
                                 (["--agent", "ws-17", "--until", "2027-02-30"], "--until '2027-02-30': 2027-02-30 is not a date"),
                                 (["--agent", "ws-17", "--until", "2020-01-01"], "not in the future"),
                                 (["--agent", "ws-17", "--until", "2099-01-01", "--reason", long], "--reason holds 501 characters; at most 500")] {
            let r = try runCommand([custos, "hold", "add", "--db", db] + args)
            #expect(r.status == 2 && r.stderrString.contains(expected), "\(args.prefix(4)): \(r.stderrString)")
        }
        let missing = try runCommand([custos, "hold", "list", "--db", tmp.file("nope.db")])
        #expect(missing.status == 2, "\(missing.stderrString)")

        // Each change is in the audit log, by whoever ran it; the hold's row stays, marked removed.
        let storage = try SQLiteStorage(path: db)
        let audit = try await storage.auditEntries(before: nil, limit: 100)
        #expect(audit.filter { $0.action == "hold.add" }.count == 2)
        #expect(audit.contains { $0.action == "hold.remove" && $0.detail.contains("id=1 agent=ws-17") })
        #expect(audit.contains { $0.action == "hold.list" })
        let holds = try await storage.holds(activeAtMs: nil)
        #expect(holds.map(\.agentID.rawValue) == ["ws-17", "ws-18"])
        #expect(holds[0].removedAtMs != nil && holds[0].removedBy?.isEmpty == false && holds[1].removedAtMs == nil)
        await storage.close()

        // audit list shows the typed backslash doubled too (the hold.add detail quotes the reason).
        let auditList = try runChecked([custos, "audit", "list", "--db", db])
        #expect(auditList.contains("\\\\u{1B}") && !auditList.contains("\u{1B}"), "\(auditList)")
    }
}
