import CaptureFormat
import CollectorStorage
import CollectorStorageSQLite
import Envelope
import Foundation
import TestSupport
import Testing
@testable import Admin

/// `custos decrypt` turns sealed `activity` chunks into one timeline, activity.csv and
/// activity.json: continuations joined, per agent in time order, CSV escaped for spreadsheets.
@Suite("Activity timeline decrypt")
struct ActivityDecryptTests {
    @Test("activity.csv escapes controls and bidi controls of window titles (ESC, newline, U+202E), keeps RFC 4180 quoting and the formula guard; activity.json escapes them as JSON")
    func controlsInTitles() throws {
        var export = ActivityTimelineExport()
        let title = "=1+2 \u{1B}]0;pwned\u{7} \"a\",b\nline2 \u{202E}txt.exe"
        export.add(ActivityChunk(startMs: 0, endMs: 1000, idleThresholdMs: 5000, periods: [
            ActivityPeriod(type: .focus, startMs: 0, endMs: 1000, wmClass: "x\u{1B}[31m", windowTitle: title)]), agent: "pc-1")
        let rows = export.rows()
        let csv = String(decoding: ActivityTimelineExport.csv(rows), as: UTF8.self)
        #expect(!csv.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x7 || $0.value == 0x202E })
        #expect(csv.components(separatedBy: "\r\n").filter { !$0.isEmpty }.count == 2, "one header and one row: \(csv)")
        #expect(csv.contains(",x\\u{1B}[31m,\"'=1+2 \\u{1B}]0;pwned\\u{7} \"\"a\"\",b\\u{A}line2 \\u{202E}txt.exe\","), "\(csv)")
        let json = try #require(try JSONSerialization.jsonObject(with: ActivityTimelineExport.json(rows)) as? [[String: Any]])
        #expect(json.first?["windowTitle"] as? String == title)
        let jsonText = String(decoding: ActivityTimelineExport.json(rows), as: UTF8.self)
        #expect(!jsonText.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" && $0 != " " }, "\(jsonText)")
    }

    @Test("two chunks of a collector database: periods cut at the seal are one row; CSV and JSON agree")
    func timeline() async throws {
        let tmp = try TempDir("adm-activity")
        defer { tmp.remove() }
        let k = try makeOpenSSLKeyPair(in: tmp.path)
        let store = try SQLiteStorage(path: tmp.file("c.db"))
        let session = try DEKSession(kek: try KEKPublicKey(pemFile: k.publicKey), agentID: "pc-7")
        let t0: Int64 = 1_764_547_200_000
        let first = ActivityChunk(startMs: t0, endMs: t0 + 60_000, idleThresholdMs: 300_000, periods: [
            ActivityPeriod(type: .focus, startMs: t0, endMs: t0 + 20_000, wmClass: "xterm.XTerm", windowTitle: "=cmd|' /C calc'!A0"),
            ActivityPeriod(type: .focus, startMs: t0 + 20_000, endMs: t0 + 60_000, wmClass: "firefox.Firefox",
                           windowTitle: "News, \"quoted\"", continues: true),
            ActivityPeriod(type: .active, startMs: t0, endMs: t0 + 60_000, continues: true),
        ])
        let second = ActivityChunk(startMs: t0 + 60_000, endMs: t0 + 120_000, idleThresholdMs: 300_000, periods: [
            ActivityPeriod(type: .focus, startMs: t0 + 60_000, endMs: t0 + 90_000, wmClass: "firefox.Firefox",
                           windowTitle: "News, \"quoted\""),
            ActivityPeriod(type: .focus, startMs: t0 + 90_000, endMs: t0 + 120_000, wmClass: "keepassxc.KeePassXC",
                           windowTitle: "", excluded: true),
            ActivityPeriod(type: .active, startMs: t0 + 60_000, endMs: t0 + 70_000),
            ActivityPeriod(type: .idle, startMs: t0 + 70_000, endMs: t0 + 120_000),
        ])
        var items = [ingestItem(session.record)]
        for chunk in [first, second] {
            items.append(ingestItem(try session.seal(chunk.encoded(), kind: .activity, captureTimeMs: chunk.startMs)))
        }
        #expect(try await store.ingest(items, receivedAtMs: t0).allSatisfy { $0 == .stored })
        // The listing selects the kind by name.
        #expect(try await allCaptures(store, CaptureQuery(kind: .activity)).count == 2)

        let out = tmp.file("out")
        let r = try await DecryptJob.run(input: .database(.sqlite(path: tmp.file("c.db"))), keyFile: k.privateKey,
                                         passphrase: secret("correct horse battery staple"),
                                         options: DecryptOptions(output: .directory(out)), actor: "t", log: { _ in },
                                         progressStyle: .quiet)
        #expect(r.failures.isEmpty && r.activityChunks == 2 && r.activityPeriods == 5, "\(r)")
        let csv = try String(contentsOfFile: out + "/activity.csv", encoding: .utf8)
        let lines = csv.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        #expect(lines.first == "agent,user,display,type,start,end,duration_ms,wm_class,window_title,excluded")
        // Time order (ties by type): active and xterm at t0, firefox at +20 s, idle at +70 s, KeePassXC at +90 s.
        #expect(lines.dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false).prefix(4).joined(separator: ",") } == [
            "pc-7,,,active", "pc-7,,,focus", "pc-7,,,focus", "pc-7,,,idle", "pc-7,,,focus",
        ])
        // The firefox period cut at the seal is one row of 70 s; a formula-like title is text.
        #expect(lines.contains("pc-7,,,focus,2025-12-01T00:00:20.000Z,2025-12-01T00:01:30.000Z,70000,firefox.Firefox,\"News, \"\"quoted\"\"\","),
                "\(csv)")
        #expect(lines.contains("pc-7,,,focus,2025-12-01T00:00:00.000Z,2025-12-01T00:00:20.000Z,20000,xterm.XTerm,'=cmd|' /C calc'!A0,"),
                "\(csv)")
        #expect(lines.contains("pc-7,,,active,2025-12-01T00:00:00.000Z,2025-12-01T00:01:10.000Z,70000,,,"), "\(csv)")
        #expect(lines.contains("pc-7,,,focus,2025-12-01T00:01:30.000Z,2025-12-01T00:02:00.000Z,30000,keepassxc.KeePassXC,,1"), "\(csv)")
        #expect(lines.count == 6)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/activity.json")))
            as? [[String: Any]] ?? []
        #expect(json.count == 5)
        #expect(json.map { $0["startMs"] as? Int64 ?? -1 } == json.map { $0["startMs"] as? Int64 ?? -1 }.sorted())
        #expect(json.first { $0["type"] as? String == "idle" }?["durationMs"] as? Int == 50_000)
    }
}
