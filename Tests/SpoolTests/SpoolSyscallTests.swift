import Foundation
import Testing
import TestSupport

/// The spool must not read its own files' timestamps while it works: on Linux 6.13+
/// (multigrain timestamps) a `stat` marks them queried, the next SQLite write then stamps a
/// fine-grained mtime, and every commit's `fdatasync` has to write the inode as well (it made
/// 200-byte enqueues 0.61 of raw SQLite; docs/SPOOL.md). Sizes come from `statx(STATX_SIZE)`.
@Suite struct SpoolSyscallTests {
    struct Trace {
        var enqueued = 0
        var sizeOnly = 0
        var withTimestamps: [Substring] = []
    }

    /// Runs `count` enqueues (with leases and acks) of `spool-crash-child` under `strace` on a
    /// new spool and sorts the stat-family calls on `spool.db*`.
    func trace(count: Int, in tmp: TempDir) throws -> Trace {
        let child = try builtProduct("spool-crash-child")
        let log = tmp.file("strace-\(count).log")
        let spoolDir = tmp.file("spool-\(count)")
        let result = try runCommand(["strace", "-f", "-qq", "-y", "-e", "trace=%stat,%fstat", "-o", log,
                                     child, spoolDir, "0", String(count)], timeout: 90)
        guard result.status == 0 else {
            throw TestSupportError("strace spool-crash-child exited \(result.status): \(result.stderrString)")
        }
        var trace = Trace()
        trace.enqueued = result.stdoutString.split(separator: "\n").filter { $0.hasPrefix("E ") }.count
        for line in try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        where line.contains(spoolDir + "/spool.db") {
            if line.contains("statx(") && line.contains(", STATX_SIZE, ") {
                trace.sizeOnly += 1
            } else {
                trace.withTimestamps.append(line)
            }
        }
        return trace
    }

    /// SQLite's own few `fstat`s at open are allowed; calls that grow with the number of
    /// operations are not. 300 more enqueues must add fewer than 30 timestamp reads (the
    /// old code made four per enqueue).
    @Test(.timeLimit(.minutes(2))) func enqueueLoopReadsNoTimestampsOfItsFiles() throws {
        try requireTool("strace")
        let tmp = try TempDir("spool-syscalls")
        defer { tmp.remove() }
        let short = try trace(count: 30, in: tmp)
        let long = try trace(count: 330, in: tmp)
        #expect(short.enqueued == 30 && long.enqueued == 330)
        // The size reads are there and seen, so strace traced the calls we look for.
        #expect(long.sizeOnly >= 330, "expected a statx(STATX_SIZE) per enqueue, saw \(long.sizeOnly)")
        let added = long.withTimestamps.count - short.withTimestamps.count
        let examples = long.withTimestamps.suffix(3).joined(separator: " | ")
        #expect(added < 30, "300 more enqueues added \(added) calls that read the spool files' timestamps, e.g. \(examples)")
    }
}
