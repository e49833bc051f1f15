import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Progress of a long run on standard error: a redrawn bar when standard error is a terminal,
/// plain lines (about every 10 % or 5 s) otherwise, nothing when quiet.
/// Used from one thread (the CLI's), so it needs no locking.
final class ProgressReporter {
    enum Style { case bar, lines, quiet }
    let style: Style
    let label: String
    private var total = 0
    private var done = 0
    private var failed = 0
    private var lastDraw = Date.distantPast
    private var nextLine = 0
    private let write: (String) -> Void

    /// - Parameters:
    ///   - style: nil picks `.bar` when stderr is a TTY (`isatty(2)`), else `.lines`.
    ///   - write: where text goes (stderr by default; tests capture it).
    init(label: String, style: Style? = nil, write: @escaping (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }) {
        self.label = Console.line(label).description  // the only text in a progress line that is not a count
        self.style = style ?? (isatty(2) == 1 ? .bar : .lines)
        self.write = write
    }

    func start(total: Int) {
        self.total = total
        done = 0
        nextLine = 0
        if style == .lines { write("\(label): 0/\(total) items\n") }
    }

    /// One more item; a run that meets more items than `start(total:)` said (captures stored
    /// meanwhile) raises the total with it.
    func advance(failed: Int) {
        done += 1
        total = max(total, done)
        self.failed = failed
        switch style {
        case .quiet: return
        case .bar:
            let now = Date()
            if done == total || now.timeIntervalSince(lastDraw) >= 0.1 {
                lastDraw = now
                write("\r" + bar())
            }
        case .lines:
            let step = max(1, total / 10)
            let now = Date()
            if done == total || done >= nextLine + step || now.timeIntervalSince(lastDraw) >= 5 {
                nextLine = done
                lastDraw = now
                write("\(label): \(done)/\(total) items" + (failed > 0 ? " (\(failed) failed)" : "") + "\n")
            }
        }
    }

    func finish() {
        if style == .bar, total > 0 { write("\r" + bar() + "\n") }
    }

    private func bar() -> String {
        let width = 30
        let filled = total == 0 ? width : done * width / total
        let pct = total == 0 ? 100 : done * 100 / total
        return "\(label) [" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            + "] \(pct)% \(done)/\(total)" + (failed > 0 ? " (\(failed) failed)" : "")
    }
}
