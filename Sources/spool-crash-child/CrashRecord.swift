import Foundation
import Spool

/// The deterministic records the crash child writes (a copy lives in the tests).
enum CrashRecord {
    /// Payload sizes in bytes, cycled by index: inline rows and multi-page overflow chains.
    static let sizes = [120, 1_500, 9_000, 70_000, 300]

    static func id(_ index: Int) -> Data {
        var bytes = [UInt8](repeating: 0xC5, count: 16)
        for i in 0..<8 { bytes[i] = UInt8(truncatingIfNeeded: index >> (56 - 8 * i)) }
        return Data(bytes)
    }

    static func index(of id: Data) -> Int {
        id.prefix(8).reduce(0) { $0 << 8 | Int($1) }
    }

    static func payload(_ index: Int) -> Data {
        var state = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15 | 1
        var bytes = [UInt8](repeating: 0, count: sizes[index % sizes.count])
        for i in bytes.indices {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            bytes[i] = UInt8(truncatingIfNeeded: state)
        }
        return Data(bytes)
    }

    static func entry(_ index: Int) -> SpoolEntry {
        let kinds: [SpoolKind] = [.keystrokes, .screen, .generic, .screen]
        return SpoolEntry(id: id(index), kind: kinds[index % kinds.count], dekID: Data(repeating: 0xD0, count: 16),
                          captureTimeMs: 1_700_000_000_000 + Int64(index), payload: payload(index))
    }
}
