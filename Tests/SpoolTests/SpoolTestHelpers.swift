import Foundation
import GRDB
import Logging
import Spool
import Synchronization
import TestSupport

/// A logger for a spool test and the capture of its lines (TestSupport's `LogCapture`).
func memoryLogger() -> (Logger, LogCapture) {
    let capture = LogCapture()
    return (capture.logger("spool-test", level: .trace), capture)
}

/// A 16-byte id: `tag` then the big-endian `n`.
func testID(_ n: Int, tag: UInt8 = 0xB1) -> Data {
    var bytes = [UInt8](repeating: tag, count: 16)
    for i in 0..<8 { bytes[8 + i] = UInt8(truncatingIfNeeded: n >> (56 - 8 * i)) }
    return Data(bytes)
}

let testDEK = Data(repeating: 0xDE, count: 16)

func randomBytes(_ count: Int) -> Data {
    var g = SystemRandomNumberGenerator()
    return Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &g) })
}

func entry(_ n: Int, _ kind: SpoolKind, bytes: Int = 200, time: Int64? = nil, dek: Data = testDEK) -> SpoolEntry {
    SpoolEntry(id: kind == .dekRecord ? dek : testID(n), kind: kind, dekID: dek,
               captureTimeMs: time ?? Int64(1_000 + n), payload: randomBytes(bytes))
}

/// Opens the spool's database directly (independently of the Spool module) for checks.
func rawQueue(_ dir: String) throws -> DatabaseQueue {
    var config = Configuration()
    config.busyMode = .timeout(10)
    return try DatabaseQueue(path: dir + "/spool.db", configuration: config)
}

/// `PRAGMA integrity_check` through the sqlite3 CLI (another SQLite client than ours).
func cliIntegrityCheck(_ dir: String) throws -> String {
    try runChecked(["sqlite3", dir + "/spool.db", "PRAGMA integrity_check;"]).trimmingCharacters(in: .whitespacesAndNewlines)
}

func fileMode(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions]) as? Int) ?? -1
}

