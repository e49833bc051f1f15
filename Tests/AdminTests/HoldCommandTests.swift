import CollectorStorage
import CollectorStorageSQLite
import CustosBase
import Foundation
import Testing
import TestSupport

/// `custos hold add / list / remove` on the built binary.
@Suite("custos hold (built binary)")
struct HoldCommandTests {
    @Test("hold add, list (all, active), remove; audit records; bad input is exit 2 naming the option; output escaped")
    func holdSession() async throws {
        let custos = try builtProduct("custos")
        let tmp = try TempDir("adm-hold")
        defer { tmp.remove() }
        let db = tmp.file("collector.db")
        try await SQLiteStorage(path: db).close()

        let add = try runCommand([custos, "hold", "add", "--db", db, "--agent", "ws-17", "--until", "2099-01-01",
                                  "--reason", "case 7 \u{1B}[31mred"])
        #expect(add.status == 0, "\(add.stderrString)")
        #expect(add.stdoutString == "1\n")
        #expect(add.stderrString.contains("hold 1 placed on agent ws-17 until 2099-01-01"), "\(add.stderrString)")
        let second = try runCommand([custos, "hold", "add", "--db", db, "--agent", "ws-18", "--until", "4102444800000"])
        #expect(second.status == 0 && second.stdoutString == "2\n", "\(second.stderrString)")

        let list = try runCommand([custos, "hold", "list", "--db", db])
        #expect(list.status == 0, "\(list.stderrString)")
        #expect(list.stdoutString.contains("ws-17") && list.stdoutString.contains("ws-18") && list.stdoutString.contains("active"))
        #expect(list.stdoutString.contains("2099-01-01") && list.stdoutString.contains("2 holds"))
        #expect(!list.stdoutString.contains("\u{1B}"), "a reason's control characters are escaped")
        #expect(list.stdoutString.contains("case 7 \\u{1B}[31mred") || list.stdoutString.contains("case 7 \\x1b[31mred")
                || list.stdoutString.contains("case 7 \\e[31mred"), "\(list.stdoutString)")

        let remove = try runCommand([custos, "hold", "remove", "--db", db, "--id", "1"])
        #expect(remove.status == 0, "\(remove.stderrString)")
        let again = try runCommand([custos, "hold", "remove", "--db", db, "--id", "1"])
        #expect(again.status == 2 && again.stderrString.contains("no legal hold 1"), "\(again.stderrString)")
        let active = try runChecked([custos, "hold", "list", "--db", db, "--active"])
        #expect(!active.contains("ws-17") && active.contains("ws-18") && active.contains("1 hold"))

        // Refused before the database is touched: exit 2 naming the option.
        for (args, expected) in [(["--agent", "bad/id", "--until", "2099-01-01"], "--agent"),
                                 (["--agent", "ws-17", "--until", "soon"], "soon"),
                                 (["--agent", "ws-17", "--until", "2020-01-01"], "not in the future")] {
            let r = try runCommand([custos, "hold", "add", "--db", db] + args)
            #expect(r.status == 2 && r.stderrString.contains(expected), "\(args): \(r.stderrString)")
        }
        let missing = try runCommand([custos, "hold", "list", "--db", tmp.file("nope.db")])
        #expect(missing.status == 2, "\(missing.stderrString)")

        // Each change is in the audit log, by whoever ran it.
        let storage = try SQLiteStorage(path: db)
        let audit = try await storage.auditEntries(before: nil, limit: 100)
        #expect(audit.filter { $0.action == "hold.add" }.count == 2)
        #expect(audit.contains { $0.action == "hold.remove" && $0.detail.contains("id=1 agent=ws-17") })
        #expect(audit.contains { $0.action == "hold.list" })
        #expect(try await storage.holds(activeAtMs: nil).map(\.agentID.rawValue) == ["ws-18"])
        await storage.close()
    }
}
