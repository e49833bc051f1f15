import CustosBase
import Foundation
import Logging
import Testing
import TestSupport

@Suite struct SafeTextTests {
    @Test func plainTextIsUnchanged() {
        #expect(SafeText.escaped("agent-7 screen <Encrypted> é 日本") == "agent-7 screen <Encrypted> é 日本")
    }

    @Test func terminalEscapesAndBidiControlsAreEscaped() {
        // The tampered-database row of issue 12: OSC 0 (set window title) ended by BEL.
        #expect(SafeText.escaped("\u{1B}]0;X\u{07}") == "\\u{1B}]0;X\\u{7}")
        #expect(SafeText.escaped("a\nb\rc\td") == "a\\u{A}b\\u{D}c\\u{9}d")
        #expect(SafeText.escaped("\u{9B}31m") == "\\u{9B}31m")  // C1 CSI
        #expect(SafeText.escaped("\u{7F}") == "\\u{7F}")
        #expect(SafeText.escaped("invoice\u{202E}fdp.exe") == "invoice\\u{202E}fdp.exe")
        for bidi: UInt32 in [0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069] {
            let s = String(Unicode.Scalar(bidi)!)
            #expect(SafeText.escaped(s) != s, "U+\(String(bidi, radix: 16)) must be escaped")
        }
    }

    @Test func escapingIsIdempotent() {
        for text in ["\u{1B}]0;X\u{7}", "a\\b", "x\u{202E}y\n", "plain", "\\u{1B}"] {
            let once = SafeText.escaped(text)
            #expect(SafeText.escaped(once) == once, "\(once)")
            #expect(!once.unicodeScalars.contains { SafeText.needsEscape($0) })
        }
        #expect(SafeText.escaped("a\\b") == "a\\b")
    }

    /// A raw value shown verbatim (a listing's cell): a typed `\u{1B}` and a real ESC must not
    /// look alike, so backslashes are doubled before the controls are escaped.
    @Test func verbatimEscapingTellsATypedEscapeFromARealOne() {
        let real = "\u{1B}[31m", typed = "\\u{1B}[31m"  // an ESC, and the six characters \u{1B} typed
        #expect(SafeText.escapedVerbatim(real) == "\\u{1B}[31m")
        #expect(SafeText.escapedVerbatim(typed) == "\\\\u{1B}[31m")
        #expect(SafeText.escaped(real) == SafeText.escaped(typed), "escaped(_:) alone cannot tell them apart")
        #expect(SafeText.escapedVerbatim("C:\\x\\") == "C:\\\\x\\\\")
        #expect(SafeText.escapedVerbatim("plain é") == "plain é")
    }

    @Test func invalidUTF8BecomesReplacementCharacters() {
        #expect(SafeText.escaped(utf8: [0x61, 0xFF, 0x1B, 0x62]) == "a\u{FFFD}\\u{1B}b")
    }

    @Test func fileNameComponentsLoseControlsSlashesAndDotNames() {
        #expect(SafeText.fileNameComponent("report\u{202E}fdp.zip") == "reportfdp.zip")
        #expect(SafeText.fileNameComponent("../../etc/passwd") == ".._.._etc_passwd")
        #expect(SafeText.fileNameComponent(".") == "_")
        #expect(SafeText.fileNameComponent("..") == "_")
        #expect(SafeText.fileNameComponent("") == "_")
        #expect(SafeText.fileNameComponent("\u{1B}\u{7}") == "_")
        #expect(SafeText.fileNameComponent("a\u{0}b") == "ab")
        let long = SafeText.fileNameComponent(String(repeating: "é", count: 300))
        #expect(long.utf8.count <= 200 && long.utf8.count == 200)
    }
}

@Suite struct ValueTests {
    @Test func agentIDs() throws {
        #expect(try AgentID("host-1.example_A").rawValue == "host-1.example_A")
        for bad in ["", ".", "..", "a/b", "a b", "a:b", String(repeating: "x", count: 65), "\u{1B}]0;X\u{7}", "é"] {
            #expect(throws: ValueError.self, "\(SafeText.quoted(bad))") { try AgentID(bad) }
        }
        do { _ = try AgentID("\u{1B}x"); Issue.record("accepted") } catch {
            #expect(error.field == "agent-id")
            #expect(!error.description.contains("\u{1B}"), "the refused value is escaped")
        }
    }

    @Test func collectorURLs() throws {
        let u = try CollectorURL("https://collector.example:8443")
        #expect(u.host == "collector.example" && u.port == 8443 && !u.hostIsIPAddress)
        #expect(try CollectorURL("HTTPS://h/").port == 443)
        let v6 = try CollectorURL("https://[::1]:9000")
        #expect(v6.host == "::1" && v6.port == 9000 && v6.hostIsIPAddress && v6.description == "https://[::1]:9000")
        #expect(try CollectorURL("https://127.0.0.1:1").hostIsIPAddress)
        // The issue's case: a path passed --check-config, then the daemon refused it.
        for bad in ["https://h:8443/p", "http://h", "https://", "h:443", "https://h?x=1", "https://u@h", "https://h#f",
                    "https://h:0", "https://h:70000", "ftp://h"] {
            #expect(throws: ValueError.self, "\(bad)") { try CollectorURL(bad) }
        }
    }

    @Test func spkiPins() throws {
        let good = "sha256/" + Data(repeating: 7, count: 32).base64EncodedString()
        #expect(try SPKIPin(" \(good) ").description == good)
        for bad in ["sha256/", "sha1/" + Data(repeating: 7, count: 32).base64EncodedString(),
                    "sha256/" + Data(repeating: 7, count: 31).base64EncodedString(), "sha256/!!!"] {
            #expect(throws: ValueError.self) { try SPKIPin(bad) }
        }
    }

    @Test func secretsAreRedactedEverywhere() {
        struct Holder { var token: Secret }
        let h = Holder(token: Secret("s3cr3t-token"))
        #expect("\(h.token)" == "<redacted>")
        #expect(!String(describing: h).contains("s3cr3t"))
        #expect(!String(reflecting: h).contains("s3cr3t"))
        var dumped = ""
        dump(h, to: &dumped)
        #expect(!dumped.contains("s3cr3t"))
        #expect(h.token.revealed == "s3cr3t-token")
    }
}

@Suite struct BackoffTests {
    @Test func doublesToTheCapWithinTheJitterRange() {
        let fixed = Backoff(initial: .seconds(1), cap: .seconds(300), jitter: 1...1)
        #expect((1...10).map { fixed.delay(afterFailures: $0) }
                == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300].map { Duration.seconds($0) })
        #expect(fixed.delay(afterFailures: 0) == .seconds(1))
        #expect(fixed.delay(afterFailures: Int.max) == .seconds(300))
        #expect(fixed.delayMs(afterFailures: 3) == 4000)
        let jittered = Backoff(initial: .milliseconds(250), cap: .seconds(30))
        var seen = Set<Duration>()
        for _ in 0..<200 {
            let d = jittered.delay(afterFailures: 3)
            #expect(d >= .milliseconds(500) && d <= .milliseconds(1000))
            seen.insert(d)
        }
        #expect(seen.count > 10, "jitter varies the delay")
    }

    @Test func scheduleCountsFailuresAndResets() {
        var s = RetrySchedule(Backoff(initial: .seconds(1), cap: .seconds(4), jitter: 1...1))
        #expect(s.failed() == .seconds(1))
        #expect(s.failed() == .seconds(2))
        #expect(s.failed() == .seconds(4))
        #expect(s.failed() == .seconds(4))
        #expect(s.failures == 4)
        s.succeeded()
        #expect(s.failed() == .seconds(1))
    }
}

@Suite struct RepeatedErrorLogTests {
    @Test func aRepeatedErrorIsLoggedOnceAndItsRecoveryOnce() {
        let capture = LogCapture()
        let logger = capture.logger("test", level: .trace)
        let log = RepeatedErrorLog()
        for i in 0..<25 { log.failure("cannot open display :197 (attempt \(i), next in \(i * 250) ms)", logger: logger) }
        #expect(log.isFailing)
        #expect(log.success("display :197 is back", logger: logger))
        #expect(!log.success("display :197 is back", logger: logger))
        log.failure("another failure", logger: logger)
        let loud = capture.lines(atLeast: .info)
        #expect(loud.count == 3, "\(loud)")
        #expect(loud[0].hasPrefix("error cannot open display :197 (attempt 0, next in 0 ms)"))
        #expect(loud[1].hasPrefix("notice display :197 is back") && loud[1].contains("repeats=24"))
        #expect(loud[2].hasPrefix("error another failure"))
        #expect(capture.lines(at: .debug).count == 24)
    }

    @Test func explicitKeysGroupDifferentMessages() {
        let log = RepeatedErrorLog()
        #expect(log.isNew("refused: pin A", key: "peer-refused"))
        #expect(!log.isNew("refused: pin B", key: "peer-refused"))
        #expect(log.lastMessage == "refused: pin B")
        #expect(log.recovered() == 1)
    }
}
