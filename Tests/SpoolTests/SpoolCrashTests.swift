import Foundation
import GRDB
import Spool
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The records `spool-crash-child` writes: the same pure function of the index
/// (Sources/spool-crash-child/CrashRecord.swift).
enum ExpectedCrashRecord {
    static let sizes = [120, 1_500, 9_000, 70_000, 300]

    static func id(_ index: Int) -> Data {
        var bytes = [UInt8](repeating: 0xC5, count: 16)
        for i in 0..<8 { bytes[i] = UInt8(truncatingIfNeeded: index >> (56 - 8 * i)) }
        return Data(bytes)
    }

    static func index(of id: Data) -> Int { id.prefix(8).reduce(0) { $0 << 8 | Int($1) } }

    static func payload(_ index: Int) -> Data {
        var state = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15 | 1
        var bytes = [UInt8](repeating: 0, count: sizes[index % sizes.count])
        for i in bytes.indices {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            bytes[i] = UInt8(truncatingIfNeeded: state)
        }
        return Data(bytes)
    }
}

/// Reads the child's stdout line by line (only complete lines count).
final class LineReader {
    let handle: FileHandle
    var buffer = Data()
    init(_ handle: FileHandle) { self.handle = handle }

    /// Complete lines available now, or nil at end of file.
    func readLines() -> [String]? {
        let chunk = handle.availableData
        if chunk.isEmpty { return nil }
        buffer.append(chunk)
        var lines: [String] = []
        while let nl = buffer.firstIndex(of: 0x0A) {
            lines.append(String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self))
            buffer = Data(buffer[(nl + 1)...])
        }
        return lines
    }
}

@Suite struct SpoolCrashTests {
    /// Kills a child that enqueues (and leases/acks) in a loop with SIGKILL at random
    /// moments, 50 times; after each kill every enqueue the child reported as returned must
    /// be present byte for byte (unless it reported acking it), every acked record gone,
    /// and `PRAGMA integrity_check` must say ok.
    @Test(.timeLimit(.minutes(3))) func sigkillFiftyTimesLosesNothing() throws {
        try requireTool("sqlite3")
        let child = try builtProduct("spool-crash-child")
        let tmp = try TempDir("spool-crash")
        defer { tmp.remove() }
        var enqueued = Set<Int>()
        var acked = Set<Int>()
        var inDoubt = Set<Int>()  // leased for an ack the child may have finished without reporting
        var next = 0
        for round in 0..<50 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: child)
            process.arguments = [tmp.path, String(next)]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            try process.run()
            let reader = LineReader(out.fileHandleForReading)
            // Wait until it has opened the spool, then let it run a random while.
            var opened = false
            var roundLines: [String] = []
            while !opened, let lines = reader.readLines() {
                roundLines += lines
                opened = lines.contains("O")
            }
            #expect(opened, "round \(round): child did not open the spool")
            usleep(UInt32.random(in: 5_000...120_000))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            #expect(process.terminationReason == .uncaughtSignal, "round \(round): child exited by itself")
            while let lines = reader.readLines() { roundLines += lines }
            for line in roundLines {
                let parts = line.split(separator: " ")
                if parts.first == "E", let n = Int(parts[1]) {
                    enqueued.insert(n)
                    next = max(next, n + 1)
                } else if parts.first == "L" {
                    for p in parts.dropFirst() { inDoubt.insert(Int(p)!) }
                } else if parts.first == "A" {
                    for p in parts.dropFirst() {
                        acked.insert(Int(p)!)
                        inDoubt.remove(Int(p)!)
                    }
                }
            }
            // The child may have finished an enqueue it had no time to report: skip past it.
            next += 1

            #expect(try cliIntegrityCheck(tmp.path) == "ok", "round \(round)")
            let rows = try rawQueue(tmp.path).read { db in
                try Row.fetchAll(db, sql: "SELECT id, payload, size FROM record")
            }
            var present: [Int: Data] = [:]
            for row in rows {
                let id: Data = row["id"]
                let payload: Data = row["payload"]
                #expect((row["size"] as Int) == payload.count)
                present[ExpectedCrashRecord.index(of: id)] = payload
            }
            for n in enqueued.subtracting(acked).subtracting(inDoubt) {
                guard let payload = present[n] else {
                    Issue.record("round \(round): record \(n) was acknowledged as enqueued but is missing")
                    continue
                }
                #expect(payload == ExpectedCrashRecord.payload(n), "round \(round): record \(n) is not intact")
            }
            for n in acked { #expect(present[n] == nil, "round \(round): acked record \(n) is back") }
            // Any row present must be a complete record (none half-written).
            for (n, payload) in present { #expect(payload == ExpectedCrashRecord.payload(n)) }
            inDoubt.subtract(present.keys)  // still there: it will be leased again, so no longer in doubt
        }
        #expect(enqueued.count > 100, "the child enqueued only \(enqueued.count) records in 50 rounds")
        #expect(!acked.isEmpty)
        // Opening with Spool after all this works and sees every surviving record.
        let (logger, _) = memoryLogger()
        let spool = try Spool(directory: tmp.path, maxBytes: 512 << 20, logger: logger)
        #expect(try spool.stats().totalSpooled.count >= enqueued.subtracting(acked).subtracting(inDoubt).count)
        try spool.close()
    }
}

