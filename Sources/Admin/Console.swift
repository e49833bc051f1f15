import CustosBase
import Foundation

/// Text that may be written to the administrator's terminal. Only ``Console`` makes it, and only
/// from text it escaped with `SafeText.escaped` (CustosBase): a value read from a collector
/// database, a record header, a KEK file or a blob can therefore never start an escape sequence
/// (ESC, BEL, CSI…), move the cursor (CR), start a new line or row (LF), or reorder what
/// follows (U+202E and the other bidi controls). It shows instead as `\u{1B}`, `\u{A}`, ….
struct TerminalText: Sendable, CustomStringConvertible, Equatable {
    /// The text; lines are separated by `\n`, which only ``Console`` puts there.
    let description: String
    fileprivate init(safe: String) { description = safe }
}

/// The one place where the admin CLI turns text into terminal output and writes it: every
/// message, listing, summary and error of every `custos` command goes through here.
///
/// A line is escaped as a whole (a message never holds a newline of its own: one call, one
/// line; parts of it may be escaped already where the message was made, so escaping is
/// idempotent there); a table's cells are raw values from the database, escaped one by one
/// (`SafeText.escapedVerbatim`: backslashes doubled too, so a typed `\u{1B}` is told apart from
/// an escaped ESC) before they are laid out, so a cell can neither add a row nor shift a column.
/// Callers never escape anything themselves.
enum Console {
    /// `text` as one line: controls (newlines included) and bidi controls escaped.
    static func line(_ text: String) -> TerminalText { TerminalText(safe: SafeText.escaped(text)) }

    /// Left-aligned columns separated by two spaces, each cell escaped (backslashes doubled); one
    /// line per row.
    static func table(_ rows: [[String]]) -> TerminalText {
        var widths: [Int] = []
        return table(rows, widths: &widths)
    }

    /// ``table(_:)`` for a table printed in parts (a listing page by page): each column is at
    /// least as wide as `widths` says, and `widths` grows to what these rows need, so the
    /// columns of later parts line up with the earlier ones unless a wider cell comes.
    static func table(_ rows: [[String]], widths: inout [Int]) -> TerminalText {
        let cells = rows.map { $0.map { SafeText.escapedVerbatim($0) } }
        guard let first = cells.first else { return TerminalText(safe: "") }
        if widths.count < first.count { widths += Array(repeating: 0, count: first.count - widths.count) }
        for r in cells { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        let text = cells.map { r in
            r.enumerated().map { i, c in
                i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
        return TerminalText(safe: text)
    }

    /// `parts` one below the other.
    static func lines(_ parts: [TerminalText]) -> TerminalText {
        TerminalText(safe: parts.map(\.description).joined(separator: "\n"))
    }

    /// Writes `text` and a newline to standard output.
    static func out(_ text: TerminalText) { write(text, to: .standardOutput) }
    /// Writes `line` (escaped) and a newline to standard output.
    static func out(_ line: String) { out(Console.line(line)) }
    /// Writes `text` and a newline to standard error.
    static func error(_ text: TerminalText) { write(text, to: .standardError) }
    /// Writes `line` (escaped) and a newline to standard error.
    static func error(_ line: String) { error(Console.line(line)) }

    private static func write(_ text: TerminalText, to handle: FileHandle) {
        handle.write(Data((text.description + "\n").utf8))
    }
}

/// Writes one message line to standard error, escaped (`Console.error`).
func printError(_ line: String) { Console.error(line) }

/// Writes one line to standard output, escaped (`Console.out`).
func printOut(_ line: String) { Console.out(line) }

/// `1 WebM file`, `2 WebM files`: `n` and the noun, plural unless `n` is 1 (`plural` when not
/// the noun plus `s`).
func counted(_ n: Int, _ noun: String, plural: String? = nil) -> String {
    "\(n) \(n == 1 ? noun : plural ?? noun + "s")"
}
