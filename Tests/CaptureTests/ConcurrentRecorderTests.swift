import CaptureCore
import CaptureFormat
@testable import CaptureX11
import Foundation
import TestSupport
import Synchronization
import Testing

/// Several displays' keystroke recorders started and stopped at the same time, and opened while
/// others close (one recorder per graphical session). libXi's per-process display list was
/// freed by one thread's XCloseDisplay while another thread's XIQueryVersion added to it (heap
/// corruption, "malloc(): unsorted double linked list corrupted"); every libXi call and every
/// XCloseDisplay now take `XErrorState.xinputLock` (docs/CAPTURE.md "Keystrokes").
@Suite("Concurrent keystroke recorders")
struct ConcurrentRecorderTests {
    @Test("three displays, recorders started and stopped together ten times, each records its own display's keys")
    func startStopTogether() async throws {
        try requireXTools(["Xvfb", "xdotool"])
        let displays = try (0..<3).map { _ in try Xvfb(width: 160, height: 100, depth: 24) }
        var typists: [Process] = []
        for round in 0..<10 {
            let recorders = try displays.map {
                try KeystrokeRecorder(display: $0.name, xauthority: nil, idleMs: 10_000, maxKeysPerChunk: 100,
                                      logger: testLogger("keys"))
            }
            DispatchQueue.concurrentPerform(iterations: recorders.count) { i in
                do { try recorders[i].start() } catch { Issue.record("start \(i): \(error)") }
            }
            if round % 3 == 0 {
                for (i, x) in displays.enumerated() { try x.run(["xdotool", "type", "--delay", "1", "d\(i)"]) }
            } else {
                // Keys in flight while the contexts are disabled and freed.
                typists = displays.map { x in
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                    p.arguments = ["xdotool", "type", "--delay", "2", String(repeating: "x", count: 40)]
                    p.environment = ProcessInfo.processInfo.environment.merging(x.environment) { $1 }
                    try? p.run()
                    return p
                }
                usleep(30_000)
            }
            DispatchQueue.concurrentPerform(iterations: recorders.count) { i in recorders[i].stop() }
            typists.forEach { $0.waitUntilExit() }
            typists = []
            if round % 3 == 0 {
                for (i, r) in recorders.enumerated() {
                    var text = ""
                    for await chunk in r.chunks { text += chunk.text }
                    #expect(text == "d\(i)", "round \(round), display \(i): \(text)")
                }
            }
        }
    }
}

extension ConcurrentRecorderTests {
    /// One recorder's teardown overlapping another's setup: libXi destroys its per-process
    /// extension list when the last display using XI closes (`XInputClose`) and creates it again
    /// on the next XI call, without a lock; a record session opening (XIQueryVersion) while
    /// another closed its control connection wrote into the freed list. Recorders cycling on
    /// three displays from three threads hit that window many times a second.
    @Test("recorders opened while others close, on three threads (libXi's extension list)")
    func openWhileOthersClose() async throws {
        try requireXTools(["Xvfb"])
        let displays = try (0..<3).map { _ in try Xvfb(width: 160, height: 100, depth: 24) }
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: displays.count) { i in
            for cycle in 0..<12 {
                do {
                    let recorder = try KeystrokeRecorder(display: displays[i].name, xauthority: nil, idleMs: 10_000,
                                                         maxKeysPerChunk: 100, logger: testLogger("keys"))
                    try recorder.start()
                    usleep(UInt32((i * 7 + cycle * 3) % 11) * 1_000)
                    recorder.stop()
                } catch {
                    failures.withLock { $0.append("display \(i), cycle \(cycle): \(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 } == [])
    }
}

extension ConcurrentRecorderTests {
    /// The libXi race itself, many times a second: connections opened, asked for XI 2 (what a
    /// record session does) and closed, on three threads and three displays at once. Without
    /// `XErrorState.xinputLock` a close that empties libXi's list frees it under another
    /// thread's XIQueryVersion: 4 of 4 runs crashed (SIGSEGV, or glibc's abort), 300 rounds.
    @Test("X connections opened, asked for XI 2 and closed on three threads at once (libXi's list)")
    func xinputListOpenClose() throws {
        try requireXTools(["Xvfb"])
        let displays = try (0..<3).map { _ in try Xvfb(width: 64, height: 64, depth: 24) }
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: displays.count) { i in
            for n in 0..<200 {
                do {
                    let connection = try X11Display(name: displays[i].name, xauthority: nil)
                    if !connection.queryXInput2() { failures.withLock { $0.append("display \(i) #\(n): no XI 2") } }
                } catch {
                    failures.withLock { $0.append("display \(i) #\(n): \(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 } == [])
    }
}
