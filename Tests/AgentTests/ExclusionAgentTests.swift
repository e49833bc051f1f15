import Foundation
import Testing
import TestSupport

/// `exclude-window-class` through the whole pipeline: an xterm of an excluded class, painted
/// one colour, is magenta in every decrypted frame exactly where it is and nowhere else; keys
/// typed into it arrive as `[excluded]` with their count; SIGHUP without the rule shows it again.
@Suite(.serialized) struct ExclusionAgentTests {
    /// The xterm's outer rectangle in root coordinates (xwininfo: absolute corner, size, border).
    static func geometry(_ rig: AgentRig, window: String) throws -> (x: Int, y: Int, w: Int, h: Int) {
        let info = try rig.xvfb.run(["xwininfo", "-id", window])
        func value(_ label: String) -> Int {
            info.split(separator: "\n").first { $0.contains(label) }
                .flatMap { Int($0.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) } ?? -1
        }
        let border = value("Border width")
        return (value("Absolute upper-left X"), value("Absolute upper-left Y"), value("Width") + 2 * border,
                value("Height") + 2 * border)
    }

    @Test func excludedXtermIsMaskedUntilSIGHUPDropsTheRule() throws {
        try requireTool("xterm")
        try requireTool("xwininfo")
        let rig = try AgentRig(name: "exclude")
        rig.screenFormat = "png"  // exact pixels
        rig.extraConfig = "exclude-window-class=SecretTerm\n"
        try rig.writeConfig(encryption: true)
        // The xterm is all one colour: text, cursor and background green, no scroll bar.
        let xterm = Process()
        xterm.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        xterm.arguments = ["xterm", "-class", "SecretTerm", "-name", "vault", "-T", "Vault", "-geometry", "20x6+40+30",
                           "-bg", "#00ff00", "-fg", "#00ff00", "-cr", "#00ff00", "-bw", "0", "-b", "0", "+sb", "-e", "cat"]
        xterm.environment = ProcessInfo.processInfo.environment.merging(rig.xvfb.environment) { _, n in n }
        xterm.standardError = FileHandle.nullDevice
        try xterm.run()
        defer { kill(xterm.processIdentifier, SIGKILL); xterm.waitUntilExit() }
        var window = ""
        #expect(waitUntil(timeout: 10) {
            let r = try? runCommand(["xdotool", "search", "--classname", "^vault$"], environment: rig.xvfb.environment)
            window = r?.stdoutString.split(separator: "\n").first.map(String.init) ?? ""
            return !window.isEmpty
        })
        let g = try Self.geometry(rig, window: window)
        #expect(g.w > 50 && g.h > 30, "\(g)")

        // The collector knows the KEK from the start: captures flow at once.
        try rig.startCollector()
        try rig.registerKEK(publicKey: rig.e2e.publicKey, privateKey: rig.e2e.privateKey)
        try rig.startAgent()
        #expect(try waitUntil(timeout: 30) { try rig.count("select count(*) from captures where kind='screen'") > 0 },
                "agent log: \(rig.agent!.log.suffix(2000))")
        try rig.xvfb.run(["xdotool", "windowfocus", "--sync", window])
        try rig.xvfb.run(["xdotool", "type", "--delay", "20", "topsecret"])
        #expect(try waitUntil(timeout: 20) { try rig.count("select count(*) from captures where kind='keystrokes'") > 0 })
        // The root changes, so frames keep coming; then the rule goes (SIGHUP).
        try rig.xvfb.run(["xsetroot", "-solid", "#336698"])
        usleep(800_000)
        let reload = Date()
        rig.extraConfig = ""
        try rig.writeConfig(encryption: true)
        rig.agent!.send(SIGHUP)
        #expect(waitUntil(timeout: 10) { rig.agent!.log.contains("window rules changed") })
        // Frames sealed before the change may still be uploading: wait for two changed ones after it.
        let before = try rig.count("select count(*) from captures where kind='screen'")
        try rig.xvfb.run(["xsetroot", "-solid", "#336699"])
        usleep(600_000)
        try rig.xvfb.run(["xsetroot", "-solid", "#336698"])
        #expect(try waitUntil(timeout: 20) { try rig.count("select count(*) from captures where kind='screen'") >= before + 2 })
        rig.agent!.send(SIGTERM)
        #expect(rig.agent!.waitExit(timeout: 10) == 0)

        let (status, out) = try rig.decrypt(key: rig.e2e, name: "decrypted")
        #expect(status == 0)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/manifest.json")))
            as? [String: Any]
        let files = (manifest?["files"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "screen" }
        let iso = ISO8601DateFormatter()
        iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var masked = 0, shown = 0
        for file in files {
            let path = out + "/" + (file["path"] as? String ?? "")
            let time = iso.date(from: file["captureTime"] as? String ?? "") ?? .distantPast
            let rgb = [UInt8](try rig.rgb(ofPNG: path))
            try #require(rgb.count == 320 * 240 * 3)
            func pixel(_ x: Int, _ y: Int) -> (UInt8, UInt8, UInt8) { let i = (y * 320 + x) * 3; return (rgb[i], rgb[i + 1], rgb[i + 2]) }
            let inside = { (x: Int, y: Int) in x >= g.x && x < g.x + g.w && y >= g.y && y < g.y + g.h }
            let insideAll = (0..<240).allSatisfy { y in (0..<320).allSatisfy { x in !inside(x, y) || pixel(x, y) == (0xff, 0x00, 0xff) } }
            let outsideNone = (0..<240).allSatisfy { y in (0..<320).allSatisfy { x in inside(x, y) || pixel(x, y) != (0xff, 0x00, 0xff) } }
            let green = (0..<240).contains { y in (0..<320).contains { x in pixel(x, y) == (0x00, 0xff, 0x00) } }
            if time < reload {
                // Before the reload: the xterm's whole rectangle is the mask, nothing else is, no green.
                #expect(insideAll && outsideNone && !green, "\(file["path"] ?? "")")
                masked += 1
            } else if green {
                shown += 1
            }
        }
        #expect(masked >= 1 && shown >= 1, "masked \(masked), shown after SIGHUP \(shown) of \(files.count)")

        let jsonl = try String(contentsOfFile: out + "/keystrokes.jsonl", encoding: .utf8)
        #expect(!jsonl.contains("topsecret") && !jsonl.contains("t\",\"timeMs"))
        let vault = jsonl.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }.filter { $0["wmClass"] as? String == "vault.SecretTerm" }
        let markers = vault.flatMap { ($0["markers"] as? [[String: Any]]) ?? [] }
        #expect(vault.map { $0["text"] as? String ?? "" }.joined() == "[excluded]", "\(vault)")
        #expect(markers.compactMap { $0["count"] as? Int }.reduce(0, +) == 9, "\(markers)")
    }
}
