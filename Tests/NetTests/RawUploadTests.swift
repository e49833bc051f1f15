import Collector
import CustosBase
import CollectorStorage
import Foundation
import Testing
import TestSupport
import Transport
import Wire

/// A client that speaks HTTP/1.1 over TLS byte by byte (Python's `ssl`), for what our own client
/// never sends: bodies that never end, trickle, or carry absurd headers. Prints one JSON line:
/// `{"answer": "<status line and headers>", "sent": <body bytes sent>, "closed": <bool>,
/// "seconds": <from the head to the close>, "error": "..."}`.
///
/// Modes (argv: host port mode head-file [args]):
/// - `flood LIMIT [INTERVAL]`: reads the answer to the head, then sends 64 KiB chunks until the
///   collector closes the connection or LIMIT bytes are sent; with INTERVAL (seconds), one byte
///   every INTERVAL instead, watching for the close in between, for at most 40 s.
/// - `trickle SECONDS`: sends a 1-byte chunk every 0.25 s for at most SECONDS, then reads the answer.
/// - `head`: sends the head only and reads the answer.
let rawClientScript = #"""
import json, select, socket, ssl, sys, time
host, port, mode, head_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=60))
s.settimeout(60)
started = time.monotonic()
s.sendall(open(head_file, 'rb').read())
out = {"answer": "", "sent": 0, "closed": False, "seconds": 0.0, "error": ""}
def read_answer():
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = s.recv(65536)
            if not more:
                out["closed"] = True
                break
            data += more
    except (OSError, ssl.SSLError) as e:
        out["error"] = repr(e)
        out["closed"] = True
    out["answer"] = data.split(b"\r\n\r\n")[0].decode("latin-1")
try:
    if mode == "flood":
        read_answer()
        limit = int(sys.argv[5])
        interval = float(sys.argv[6]) if len(sys.argv) > 6 else 0
        chunk = b"\0" if interval else b"10000\r\n" + b"\0" * 65536 + b"\r\n"
        # A drip gives up after 40 s, so a collector that never closes fails the test, not CI.
        while out["sent"] < limit and not out["closed"] and not (interval and time.monotonic() - started > 40):
            s.sendall(chunk)
            out["sent"] += 1 if interval else 65536
            if interval and select.select([s], [], [], interval)[0]:
                try:
                    if not s.recv(65536):
                        out["closed"] = True
                except (OSError, ssl.SSLError) as e:
                    out["closed"] = True
        out["seconds"] = time.monotonic() - started
    elif mode == "trickle":
        end = time.monotonic() + float(sys.argv[5])
        while time.monotonic() < end:
            s.sendall(b"1\r\nC\r\n")
            out["sent"] += 1
            if s.pending() or select.select([s], [], [], 0.25)[0]:
                break  # the collector answered (or closed)
        read_answer()
    else:
        read_answer()
except (OSError, ssl.SSLError) as e:
    out["error"] = repr(e)
    out["closed"] = True
    out["seconds"] = time.monotonic() - started
print(json.dumps(out))
"""#

struct RawResult: Decodable {
    let answer: String
    let sent: Int
    let closed: Bool
    let seconds: Double
    let error: String

    var status: Int? { answer.split(separator: " ").dropFirst().first.flatMap { Int($0) } }
    func header(_ name: String) -> String? {
        answer.split(separator: "\r\n").dropFirst().first { $0.lowercased().hasPrefix(name.lowercased() + ":") }
            .map { $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces) }
    }
}

extension NetFixture {
    /// A request head for `POST /v1/records` with `headers` (Authorization, Content-Type and the
    /// framing header the test chooses).
    func rawHead(_ requestLine: String = "POST \(WireAPI.recordsPath)", token: String? = nil, agent: String? = nil,
                 extra: [String]) -> String {
        (["\(requestLine) HTTP/1.1", "Host: 127.0.0.1",
          "Authorization: Bearer \(agent ?? agentID):\(token ?? self.token)",
          "Content-Type: \(WireAPI.recordsContentType)"] + extra).joined(separator: "\r\n") + "\r\n\r\n"
    }

    /// Runs the raw client to completion (off the concurrency pool, which the in-process
    /// collector needs meanwhile).
    func raw(_ mode: String, head: String, _ args: [String] = [], name: String) async throws -> RawResult {
        try requireTool("python3")
        let headFile = dir.file("\(name).head")
        try head.write(toFile: headFile, atomically: true, encoding: .utf8)
        let out = try await runCheckedOffPool(["python3", "-c", rawClientScript, "127.0.0.1", "\(collector.port)", mode,
                                               headFile] + args, timeout: 120)
        return try JSONDecoder().decode(RawResult.self, from: Data(out.utf8))
    }

    /// Uploads a DEK record and a blob with our own client, expecting a request-level refusal;
    /// returns it (nil, with an issue recorded, when `what` was accepted).
    func refusedUpload(_ what: String) async throws -> TransportError? {
        let (records, _) = try self.records(count: 1)
        let client = try self.client()
        defer { Task { await client.close() } }
        do {
            _ = try await client.upload(stream(records))
            Issue.record("\(what) was accepted")
            return nil
        } catch {
            return error
        }
    }

    /// Starts the raw client in the background; its JSON line goes to `name.out`.
    func rawInBackground(_ mode: String, head: String, _ args: [String] = [], name: String) throws -> BackgroundProcess {
        try requireTool("python3")
        let headFile = dir.file("\(name).head")
        try head.write(toFile: headFile, atomically: true, encoding: .utf8)
        return try BackgroundProcess("/usr/bin/env", ["python3", "-c", rawClientScript, "127.0.0.1", "\(collector.port)",
                                                      mode, headFile] + args, logPath: dir.file("\(name).out"))
    }
}

/// What a client that does not play by the rules can make the collector do (found by QA):
/// every refusal closes the connection instead of reading a body of any size; a trickling body
/// is cut off; one agent cannot hold every in-flight slot; bad records do not flood the log.
@Suite struct RawUploadTests {
    /// A refused request (here: wrong token, no login at all) is answered with `Connection: close`,
    /// and the collector stops reading its endless body and closes the connection: it does not
    /// decrypt and discard gigabytes for a stranger. Before, it drained any amount.
    @Test func refusedEndlessBodyIsNotReadToTheEnd() async throws {
        // A small max-request-bytes keeps the authenticated drain (and this test's load on the
        // other suites running beside it) small.
        let f = try await NetFixture.start("flood", maxRequestBytes: 64 * 1024)
        defer { Task { await f.stop() } }
        // More than the collector could read in the drain plus its 1 s TLS shutdown wait.
        let limit = 4 << 30
        for (name, status, head) in [
            ("wrong-token", 401, f.rawHead(token: String(repeating: "A", count: 43), extra: ["Transfer-Encoding: chunked"])),
            ("too-large", 413, f.rawHead(extra: ["Content-Length: \(1 << 40)"])),
            ("wrong-type", 415, f.rawHead(extra: ["Transfer-Encoding: chunked"]).replacingOccurrences(
                of: WireAPI.recordsContentType, with: "text/plain")),
            // Any other path with a body: an unknown one, and the health check.
            ("unknown-path", 404, f.rawHead("POST /v1/nothing", extra: ["Transfer-Encoding: chunked"])),
            ("health-with-body", 200, f.rawHead("GET \(WireAPI.healthPath)", extra: ["Content-Length: \(1 << 40)"])),
        ] {
            let r = try await f.raw("flood", head: head, ["\(limit)"], name: name)
            #expect(r.status == status, "\(name): \(r.answer) \(r.error)")
            #expect(r.header("connection")?.lowercased() == "close", "\(name): \(r.answer)")
            // What the kernel buffers on both sides hold, plus the 64 KiB drain: a few MiB. Not the
            // hundreds of MiB NIOSSL decrypts in its shutdown wait if the socket is still read.
            #expect(r.closed && r.sent < 48 << 20, "\(name): the collector read \(r.sent) bytes of a refused body before closing")
        }
        #expect(f.logs.contains("wrong token"))
        // Still serving.
        let (records, _) = try f.records(count: 2)
        #expect(try await f.client().upload(stream(records)).results.allSatisfy { $0.status == .stored })
    }

    /// A refused request's body is drained until a deadline (here the 2 s body timeout) even when
    /// no byte arrives then: a client sending a byte every 30 s is cut off at the deadline, not at
    /// its next byte (nor at the idle timeout). The bound leaves room for a loaded machine.
    @Test func refusedTrickleIsClosedAtTheDrainDeadline() async throws {
        let f = try await NetFixture.start("drain-deadline", idleTimeout: .seconds(30), bodyTimeout: .seconds(2))
        defer { Task { await f.stop() } }
        let head = f.rawHead(token: String(repeating: "B", count: 43), extra: ["Content-Length: 100000"])
        let r = try await f.raw("flood", head: head, ["100000", "30"], name: "drip")
        #expect(r.status == 401, "\(r.answer) \(r.error)")
        #expect(r.closed, "\(r)")
        // About 2 s, alone and in the full parallel NetTests run since in-process collectors run on
        // threads of their own (ThreadTaskExecutor; before, tests waiting on child processes
        // starved them: this closed after 20 s, and once CI saw no answer at all). The bound tells the
        // deadline from the next byte and the idle timeout (both at 30 s) on a loaded machine.
        #expect(r.seconds < 10, "closed after \(r.seconds) s; the drain deadline was 2 s after the head")
    }

    /// A Content-Length the HTTP parser accepts but that does not fit an Int (2^63 and up) is
    /// refused 413 at once, like any other too-large length, not treated as a chunked body.
    @Test func hugeContentLengthIs413AtOnce() async throws {
        let f = try await NetFixture.start("huge-length")
        defer { Task { await f.stop() } }
        for length in ["9223372036854775807", "9223372036854775808", "18446744073709551615"] {
            let r = try await f.raw("head", head: f.rawHead(extra: ["Content-Length: \(length)"]), name: "len-\(length.count)")
            #expect(r.status == 413, "Content-Length \(length): \(r)")
        }
        #expect(f.collector.server.inflightPeakBytes == 0, "a refused length reserved in-flight bytes")
    }

    /// A body that trickles in (a byte every 0.25 s: never silent for idle-timeout-seconds) is
    /// refused 408 once body-timeout-seconds have passed, and its in-flight bytes come back.
    @Test func tricklingBodyIsCutOffAtTheBodyTimeout() async throws {
        let f = try await NetFixture.start("trickle", idleTimeout: .seconds(30), bodyTimeout: .seconds(2))
        defer { Task { await f.stop() } }
        let started = ContinuousClock.now
        let r = try await f.raw("trickle", head: f.rawHead(extra: ["Transfer-Encoding: chunked"]), ["60"], name: "trickle")
        let elapsed = started.duration(to: .now)
        #expect(r.status == 408, "\(r.answer) \(r.error)")
        #expect(elapsed < .seconds(30), "cut off after \(elapsed), not at the 2 s body timeout")
        #expect(f.logs.contains("body too slow"))
        #expect(f.collector.server.inflightBytes == 0)
        #expect(f.collector.server.inflightPeakBytes > 0)
    }

    /// One agent with max-uploads-per-agent uploads stalled in flight gets 503 for one more; every
    /// other agent is still served (before, 16 trickling uploads of one agent blocked everyone).
    @Test func oneAgentCannotHoldEveryUploadSlot() async throws {
        let f = try await NetFixture.start("per-agent", retryAfterSeconds: 3, maxUploadsPerAgent: 2)
        defer { Task { await f.stop() } }
        let held = try (0..<2).map { i in
            try f.rawInBackground("trickle", head: f.rawHead(extra: ["Transfer-Encoding: chunked"]), ["60"],
                                  name: "held-\(i)")
        }
        defer { for p in held { p.send(SIGKILL) } }
        // Both reserved (a chunked body reserves max-request-bytes).
        #expect(try await waitUntil(timeout: 30, every: .milliseconds(50)) { f.collector.server.inflightBytes >= 2 * 16 * 1024 * 1024 })
        let error = try await f.refusedUpload("a third upload of the same agent")
        #expect(error?.httpStatus == 503 && error?.retryAfter == .seconds(3), "\(String(describing: error))")
        #expect("\(String(describing: error))".contains("max-uploads-per-agent"))
        #expect(f.logs.contains("agent has too many uploads in flight"))
        // Another agent is served meanwhile.
        let other = "other-\(UInt32.random(in: 0...UInt32.max))"
        let otherToken = try await f.collector.storage.addAgent(try AgentID(other)).revealed
        let (otherRecords, _) = try f.records(count: 1, agent: other)
        let answer = try await f.client(token: otherToken, agentID: other).upload(stream(otherRecords))
        #expect(answer.results.allSatisfy { $0.status == .stored })
    }

    /// A body of thousands of bad records is one request: five records are logged one by one,
    /// the rest in one line with their count by reason.
    @Test func badRecordsDoNotFloodTheLog() async throws {
        let f = try await NetFixture.start("log-flood")
        defer { Task { await f.stop() } }
        let tenByteRecord = Data([0x43, 0x53, 0x54, 0x53, 1, 2, 0, 0, 0, 10])
        let body = Data((0..<3000).flatMap { _ in tenByteRecord })
        let answer = try await f.client().upload(body)
        #expect(answer.results.count == 3000 && answer.results.allSatisfy { $0.reason == .malformed })
        #expect(f.logs.count("record refused") == Ingestor.refusalsLoggedPerUpload)
        #expect(f.logs.count("more records of this upload refused") == 1)
        #expect(f.logs.contains("collector.records=2995"), "\(f.logs.text.suffix(500))")
        #expect(f.logs.contains("malformed=2995"))
    }

    /// When the agent table cannot be read, the 503's Retry-After is retry-after-seconds (it was
    /// a fixed 5).
    @Test func unreadableAgentTableAnswersTheConfiguredRetryAfter() async throws {
        try requireTool("sqlite3")
        let f = try await NetFixture.start("no-agents", retryAfterSeconds: 7)
        defer { Task { await f.stop() } }
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", f.collector.databasePath, "alter table agents rename to agents_gone"])
        let error = try await f.refusedUpload("an upload without an agent table")
        #expect(error?.httpStatus == 503 && error?.retryAfter == .seconds(7), "\(String(describing: error))")
        try runChecked(["sqlite3", "-cmd", ".timeout 10000", f.collector.databasePath, "alter table agents_gone rename to agents"])
        let (records, _) = try f.records(count: 1)
        #expect(try await f.client().upload(stream(records)).results.allSatisfy { $0.status == .stored })
    }
}
