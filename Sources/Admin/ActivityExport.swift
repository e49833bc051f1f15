import CaptureFormat
import CustosBase
import Foundation

/// The activity timeline of a decrypt or export (kind `activity`): every period of every chunk,
/// per agent, written at the end of the run as `activity.csv` and `activity.json` (docs/ADMIN.md
/// "Output layout"). A period the agent cut where it sealed a chunk (`continues`) is joined with
/// its continuation in the next chunk, so a window that kept the focus for an hour is one row.
struct ActivityTimelineExport {
    struct Row: Codable, Equatable {
        var agent: String
        /// The graphical session's user and display (sealed session blobs), else nil.
        var user: String?
        var display: String?
        var type: String
        var start: String
        var end: String
        var startMs: Int64
        var endMs: Int64
        var durationMs: Int64
        var wmClass: String?
        var windowTitle: String?
        var excluded: Bool?
    }

    /// Whose periods: agent, and the session's user and display.
    struct Owner: Hashable, Comparable {
        var agent: String
        var user: String?
        var display: String?
        static func < (a: Owner, b: Owner) -> Bool { (a.agent, a.user ?? "", a.display ?? "") < (b.agent, b.user ?? "", b.display ?? "") }
    }

    private var periods: [(owner: Owner, period: ActivityPeriod)] = []
    private(set) var chunks = 0

    var isEmpty: Bool { periods.isEmpty }

    mutating func add(_ chunk: ActivityChunk, agent: String, user: String? = nil, display: String? = nil) {
        chunks += 1
        let owner = Owner(agent: agent, user: user, display: display)
        periods += chunk.periods.map { (owner, $0) }
    }

    /// The rows: per agent and session, focus periods and active/idle periods in time order,
    /// continuations joined.
    func rows() -> [Row] {
        var out: [Row] = []
        let byOwner = Dictionary(grouping: periods, by: \.owner)
        for owner in byOwner.keys.sorted() {
            let list = byOwner[owner]!.map(\.period)
            for group in [[ActivityPeriod.Kind.focus], [.active, .idle]] {
                var open: ActivityPeriod?
                for p in list.filter({ group.contains($0.type) }).sorted(by: { ($0.startMs, $0.endMs) < ($1.startMs, $1.endMs) }) {
                    if var o = open, o.isContinued(by: p) {
                        o.endMs = p.endMs
                        o.continues = p.continues
                        open = o
                        continue
                    }
                    if let o = open { out.append(Self.row(owner, o)) }
                    open = p
                }
                if let o = open { out.append(Self.row(owner, o)) }
            }
        }
        return out.sorted { ($0.agent, $0.user ?? "", $0.display ?? "", $0.startMs, $0.type) < ($1.agent, $1.user ?? "", $1.display ?? "", $1.startMs, $1.type) }
    }

    private static func row(_ owner: Owner, _ p: ActivityPeriod) -> Row {
        Row(agent: owner.agent, user: owner.user, display: owner.display, type: p.type.rawValue, start: OutputNaming.iso(p.startMs), end: OutputNaming.iso(p.endMs),
            startMs: p.startMs, endMs: p.endMs, durationMs: p.endMs - p.startMs, wmClass: p.wmClass,
            windowTitle: p.windowTitle, excluded: p.excluded)
    }

    /// `activity.json`: the rows as one JSON array (sorted keys).
    static func json(_ rows: [Row]) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted]
        return (try? encoder.encode(rows)) ?? Data("[]".utf8)
    }

    /// `activity.csv`: RFC 4180 (header line, CRLF line ends, a field with `"`, `,`, CR or LF
    /// quoted with `"` doubled). Text fields (from the endpoint, whose user controls window
    /// titles and classes) have their controls and bidi controls escaped with
    /// `SafeText.escaped` (ESC as `\u{1B}`, a newline as `\u{A}`, U+202E as `\u{202E}`), as the
    /// keystroke text's header has, so `cat` or a terminal pager shows no escape sequences and
    /// every row is one line. A text field starting with `=`, `+`, `-`, `@`, tab or CR gets a
    /// leading `'`, so a spreadsheet shows a window title as text instead of running it as a
    /// formula (OWASP "CSV Injection"). `activity.json` keeps the raw values (JSON escapes controls).
    static func csv(_ rows: [Row]) -> Data {
        func text(_ s: String) -> String {
            var v = SafeText.escaped(s)
            if let first = v.unicodeScalars.first, "=+-@\t\r".unicodeScalars.contains(first) { v = "'" + v }
            if v.contains(where: { $0 == "\"" || $0 == "," || $0 == "\r" || $0 == "\n" || $0 == "\r\n" }) {
                v = "\"" + v.replacingOccurrences(of: "\"", with: "\"\"") + "\""
            }
            return v
        }
        var out = "agent,user,display,type,start,end,duration_ms,wm_class,window_title,excluded\r\n"
        for r in rows {
            let fields = [text(r.agent), text(r.user ?? ""), text(r.display ?? ""), r.type, r.start, r.end, String(r.durationMs),
                          text(r.wmClass ?? ""),
                          text(r.windowTitle ?? ""), r.excluded == true ? "1" : ""]
            out += fields.joined(separator: ",") + "\r\n"
        }
        return Data(out.utf8)
    }
}
