// spool-crash-child: the process the Spool crash test kills with SIGKILL.
//
// Usage: spool-crash-child <spool-dir> <first-index> [<count>]
// Enqueues records first-index, first-index+1, … forever (or `count` of them, then exits 0); after each enqueue returns it
// prints "E <index>"; every fifth record it leases up to four records, prints
// "L <index> …", acks them and prints "A <index> …". Output is written unbuffered, so a line the parent has
// read describes an operation that had returned. Record contents are a pure function of
// the index (`CrashRecord`), so the parent can check every byte.
import Foundation
import Logging
import Spool

#if canImport(Glibc)
import Glibc
#endif

func emit(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        if n <= 0 { exit(3) }
        offset += n
    }
}

let arguments = CommandLine.arguments
guard arguments.count == 3 || arguments.count == 4, let first = Int(arguments[2]),
      arguments.count == 3 || Int(arguments[3]) != nil else {
    FileHandle.standardError.write(Data("usage: spool-crash-child <spool-dir> <first-index> [<count>]\n".utf8))
    exit(2)
}
let last = arguments.count == 4 ? first + Int(arguments[3])! : Int.max
let logger = Logger(label: "spool-crash-child", factory: { _ in SwiftLogNoOpLogHandler() })
do {
    let spool = try Spool(directory: arguments[1], maxBytes: 512 * 1024 * 1024, logger: logger)
    emit("O")
    var index = first
    while index < last {
        try spool.enqueue(CrashRecord.entry(index))
        emit("E \(index)")
        if index % 5 == 4 {
            let leased = try spool.lease(maxItems: 4, maxBytes: 1 << 30)
            let indices = leased.map { String(CrashRecord.index(of: $0.id)) }.joined(separator: " ")
            emit("L " + indices)
            try spool.ack(leased.map(\.id))
            emit("A " + indices)
        }
        index += 1
    }
    try spool.close()
} catch {
    FileHandle.standardError.write(Data("spool-crash-child: \(error)\n".utf8))
    exit(1)
}
