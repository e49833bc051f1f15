import Foundation
import Testing
import CustosBase
import CustosConfig
import TestSupport

private let path = "/etc/custos/config.cfg"
private let env: [String: String] = ["DISPLAY": ":7", "XAUTHORITY": "/run/x/auth"]

private func parse(_ text: String) throws(ConfigError) -> AgentConfig {
    try AgentConfig(text: text, path: path, environment: env)
}

private func error(_ text: String) -> ConfigError? {
    do { _ = try parse(text); return nil } catch { return error }
}

@Suite struct ConfigSyntaxTests {
    @Test func defaultsWhenEmpty() throws {
        let c = try parse("")
        #expect(c.enableEncryption == false)
        #expect(c.kekFile == "/etc/custos/certs/kek.pem")
        #expect(c.serverKEKFile == "/etc/custos/certs/server-kek.pem")
        #expect(c.activeKEKFile == c.serverKEKFile)
        // display=auto by default (every graphical session), not $DISPLAY; no xauthority forced.
        #expect(c.displays == .auto && c.displays.displays == nil)
        #expect(c.xauthority == nil)
        #expect(c.screenIntervalMs == 1000)
        #expect(c.screenFormat == .video)
        #expect(c.keyframeIntervalSeconds == 300)
        #expect(c.pngLevel == 1)
        #expect(c.keystrokeIdleMs == 2000)
        #expect(c.spoolDir == "/var/lib/custos")
        #expect(c.spoolMaxMB == 512)
        #expect(c.activityIntervalSeconds == 60 && c.idleThresholdSeconds == 300)
        #expect(c.excludeWindowClasses.isEmpty && c.excludeWindowTitles.isEmpty && c.sensitiveWindowClasses.isEmpty)
        #expect(try parse("activity-interval-seconds=0\nidle-threshold-seconds=1\n").activityIntervalSeconds == 0)
        #expect(c.serverURLs.isEmpty)
        #expect(c.serverPins.isEmpty)
        #expect(!c.agentID.rawValue.isEmpty)
    }

    @Test func trimsWhitespaceBOMAndCRLF() throws {
        let c = try parse("\u{FEFF}  enable-encryption =  yes  \r\n\r\n\tdisplay= :3 \r\nagent-id=pc-17\r\n")
        #expect(c.enableEncryption)
        #expect(c.activeKEKFile == "/etc/custos/certs/kek.pem")
        #expect(c.displays == .list([":3"]))
        #expect(c.agentID.rawValue == "pc-17")
    }

    @Test func commentsAreWholeLinesOnly() throws {
        let c = try parse("# a comment\n  ; another\nagent-token=abc#def ; ghi\n")
        #expect(c.agentToken?.revealed == "abc#def ; ghi")
    }

    @Test(arguments: [("1", true), ("0", false), ("true", true), ("FALSE", false), ("Yes", true), ("no", false)])
    func booleans(_ value: String, _ expected: Bool) throws {
        #expect(try parse("enable-encryption=\(value)").enableEncryption == expected)
    }

    @Test(arguments: ["on", "off", "2", "", "enabled", "1 # yes"])
    func badBooleanRefusesToStart(_ value: String) {
        let e = error("agent-id=a\nenable-encryption=\(value)\n")
        #expect(e?.line == 2)
        #expect(e?.key == "enable-encryption")
        #expect(e?.description.contains("expected 1/0, true/false or yes/no") == true)
        #expect(e?.description.contains(path) == true)
    }

    @Test func unknownKeyNamesLine() {
        let e = error("display=:1\n\nenable-encryptoin=1\n")
        #expect(e?.line == 3)
        #expect(e?.key == "enable-encryptoin")
        #expect(e?.message.hasPrefix("unknown key") == true)
    }

    @Test func duplicateKeyIsAnError() {
        let e = error("png-level=1\npng-level=2\n")
        #expect(e?.line == 2)
        #expect(e?.message.contains("line 1") == true)
    }

    @Test func repeatablePinsKeepOrder() throws {
        let a = "sha256/" + Data(repeating: 1, count: 32).base64EncodedString()
        let b = "sha256/" + Data(repeating: 2, count: 32).base64EncodedString()
        let c = try parse("server-pin=\(a)\nserver-pin = \(b)\nserver-url=https://127.0.0.1:8443\n")
        #expect(c.serverPins.map(\.description) == [a, b])
        #expect(c.serverURLs.map(\.port) == [8443])
    }

    @Test(arguments: ["md5/AAAA", "sha256/notbase64!", "sha256/" + Data(count: 31).base64EncodedString()])
    func badPins(_ pin: String) {
        #expect(error("server-pin=\(pin)")?.key == "server-pin")
    }

    @Test(arguments: ["http://collector:80", "collector:8443", "https://", "ftp://x"])
    func serverURLMustBeHTTPS(_ url: String) {
        #expect(error("server-url=\(url)")?.key == "server-url")
    }

    /// issue 14: `server-url` repeats (failover in file order); the same collector twice is an
    /// error naming both lines.
    @Test func serverURLRepeatsInOrderButNotTwiceTheSame() throws {
        let c = try AgentConfig(text: "server-url=https://a:8443\nserver-url=https://b\n", path: "/etc/custos/config.cfg")
        #expect(c.serverURLs.map(\.description) == ["https://a:8443", "https://b:443"])
        let e = error("server-url=https://a:8443\nserver-url=https://b\nserver-url=https://A:8443\n")
        #expect(e?.key == "server-url" && e?.line == 3, "\(String(describing: e))")
        #expect(e?.description.contains("already given on line 1") == true, "\(String(describing: e))")
    }

    /// Issue 12: a line without '=' was echoed whole to stderr and the journal, secret included.
    @Test(arguments: ["agent-token S3CRET-t0ken", "agent-token:S3CRET-t0ken", "S3CRET-t0ken", "  agent-token\tS3CRET-t0ken  "])
    func lineWithoutEqualsIsNotEchoed(_ line: String) {
        let e = error("display=:1\n\(line)\n")
        #expect(e?.line == 2, "\(String(describing: e))")
        #expect(e?.description.contains("S3CRET") == false, "\(String(describing: e))")
        #expect(e?.description.contains("without '='") == true, "\(String(describing: e))")
        if line.contains("agent-token") {
            #expect(e?.key == "agent-token")
            #expect(e?.description.contains("expected agent-token=VALUE") == true)
        }
    }

    @Test func malformedLines() {
        #expect(error("display\n")?.line == 1)
        #expect(error("x\n=3\n")?.line == 1)
        #expect(error("display=:1\n=3\n")?.message.contains("expected a key") == true)
    }

    @Test(arguments: ["png-level=10", "png-level=-1", "png-level=one", "screen-interval-ms=50",
                      "spool-max-mb=0", "keystroke-idle-ms=5", "agent-id=has space", "agent-id=",
                      "dek-rotate-hours=1e3", "screen-format=mp4", "screen-format=", "keyframe-interval-seconds=3601",
                      "keyframe-interval-seconds=-1", "activity-interval-seconds=5", "activity-interval-seconds=3601",
                      "idle-threshold-seconds=0", "idle-threshold-seconds=86401"])
    func outOfRangeValuesNameTheKey(_ line: String) {
        let key = String(line.split(separator: "=")[0])
        let e = error(line)
        #expect(e?.key == key, "\(line) gave \(String(describing: e))")
    }

    @Test func relativePathsResolveBesideTheConfig() throws {
        let c = try parse("kek-file=keys/k.pem\nserver-ca=/abs/ca.pem\nspool-dir=../spool\n")
        #expect(c.kekFile == "/etc/custos/keys/k.pem")
        #expect(c.serverCA == "/abs/ca.pem")
        #expect(c.spoolDir == "/etc/spool")
    }

    @Test func missingFileNamesIt() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        do {
            _ = try AgentConfig(contentsOf: dir.file("nope.cfg"))
            Issue.record("expected an error")
        } catch {
            #expect(error.file == dir.file("nope.cfg"))
            #expect(error.message.contains("cannot read"))
        }
    }

    @Test func directoryAndControlCharactersAreErrors() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        do { _ = try AgentConfig(contentsOf: dir.path); Issue.record("expected an error") } catch {
            #expect(error.message.contains("is a directory"))
        }
        #expect(error("display=:15\u{0}0\n")?.line == 1)
        #expect(error("agent-id=a\nagent-token=x\u{1b}y\n")?.line == 2)
        #expect(try parse("agent-token=a\tb\n").agentToken?.revealed == "a\tb")
    }

    @Test func invalidUTF8IsAnError() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try Data([0x64, 0x3d, 0x31, 0x0a, 0x64, 0x3d, 0xff, 0xfe, 0x0a]).write(to: URL(fileURLWithPath: dir.file("c.cfg")))
        do { _ = try AgentConfig(contentsOf: dir.file("c.cfg")); Issue.record("expected an error") } catch {
            #expect(error.line == 2)
            #expect(error.message.contains("UTF-8"))
        }
    }

    /// `config.cfg.sample` and `AgentConfig.schema` list the same keys, types, defaults and
    /// meanings; the sample also parses as a valid config whose values are the defaults.
    @Test func sampleAgreesWithParser() throws {
        let samplePath = packageRoot + "/config.cfg.sample"
        let expected = renderSample(AgentConfig.schema, title: "Custos agent configuration (config.cfg)")
        if ProcessInfo.processInfo.environment["CUSTOS_WRITE_SAMPLE"] == "1" {
            try expected.write(toFile: samplePath, atomically: true, encoding: .utf8)
        }
        let sample = try String(contentsOfFile: samplePath, encoding: .utf8)
        #expect(sample == expected, "config.cfg.sample is out of date: run `make sample`")
        let parsed = try AgentConfig(text: sample, path: path, environment: env)
        let defaults = try parse("")
        #expect(parsed == defaults)
        for key in AgentConfig.schema {
            #expect(sample.contains("# \(key.name) ("), "sample lacks \(key.name)")
        }
    }
}

/// Values with a CustosBase type are validated by that type while parsing, so every consumer
/// (the daemon, `--check-config`, `status`) gets the same verdict; errors name file, line and key.
@Suite struct ConfigValueTests {
    @Test(arguments: [("server-url", "https://h:8443/p"), ("server-url", "http://h"), ("server-url", "https://u@h"),
                      ("server-pin", "sha256/" + Data(count: 31).base64EncodedString()),
                      ("agent-id", ".."), ("agent-id", ".")])
    func baseValidatorRefusesNamingLineAndKey(_ key: String, _ value: String) {
        let e = error("display=:1\n\(key)=\(value)\n")
        #expect(e?.line == 2 && e?.key == key, "\(String(describing: e))")
        #expect(e?.description.hasPrefix("\(path):2: \(key): ") == true, "\(String(describing: e))")
    }

    @Test func displayIsAutoOrAListOfDisplayNames() throws {
        #expect(try parse("display=auto\n").displays == .auto)
        #expect(try parse("display=:0\n").displays == .list([":0"]))
        #expect(try parse("display=:0, :1 ,unix:2.1,host.example:10.0\n").displays == .list([":0", ":1", "unix:2.1", "host.example:10.0"]))
        #expect(try parse("display=:0,:1\n").displays.description == ":0,:1")
        for bad in ["display=0", "display=:0,", "display=:a", "display=:0,:0", "display=:1.2.3", "display=AUTO", "display=:0 :1"] {
            let e = error("agent-id=x\n\(bad)\n")
            #expect(e?.line == 2 && e?.key == "display", "\(bad): \(String(describing: e))")
        }
        #expect(error("display=:0,:0\n")?.message.contains("given twice") == true)
    }

    @Test func windowPatternsRepeatInOrderAndABadRegexNamesItsLine() throws {
        let c = try parse("sensitive-window-class=KeePassXC\nsensitive-window-class=/(?i)^pass/\n")
        #expect(c.sensitiveWindowClasses.map(\.text) == ["KeePassXC", "/(?i)^pass/"])
        #expect(c.sensitiveWindowClasses.map(\.isRegularExpression) == [false, true])
        #expect(try parse("").sensitiveWindowClasses.isEmpty)
        let e = error("display=:1\nsensitive-window-class=ok\nsensitive-window-class=/a(b/\n")
        #expect(e?.line == 3 && e?.key == "sensitive-window-class", "\(String(describing: e))")
        #expect(e?.description.hasPrefix("\(path):3: sensitive-window-class: '/a(b/' is not a valid regular expression") == true,
                "\(String(describing: e))")
        // Foundation's generic text says nothing: not appended.
        #expect(e?.description.contains("could not be completed") == false, "\(String(describing: e))")
        #expect(error("sensitive-window-class=//\n")?.line == 1)
        #expect(error("sensitive-window-class=\n")?.line == 1)
    }

    @Test func typedValues() throws {
        let pin = "sha256/" + Data(repeating: 9, count: 32).base64EncodedString()
        let c = try parse("server-url=https://[::1]:8443/\nserver-pin=\(pin)\nagent-id=pc.1\nagent-token=s3cret\n")
        #expect(c.serverURLs == [try CollectorURL("https://[::1]:8443")])
        #expect(c.serverURLs.first?.host == "::1")
        #expect(c.serverPins == [try SPKIPin(pin)])
        #expect(c.agentID == (try AgentID("pc.1")))
        #expect(c.agentToken == Secret("s3cret"))
        // The token never shows in the config's description or dump.
        #expect(!"\(c)".contains("s3cret"))
        var dumped = ""
        dump(c, to: &dumped)
        #expect(!dumped.contains("s3cret"))
    }
}
