import CaptureFormat
import Foundation

/// The activity timeline of a decrypt or export (kind `activity`): every period of every chunk,
/// per agent, written at the end of the run as `activity.csv` and `activity.json` (docs/ADMIN.md
/// "Output layout"). A period the agent cut where it sealed a chunk (`continues`) is joined with
/// its continuation in the next chunk, so a window that kept the focus for an hour is one row.
struct ActivityTimelineExport {
    struct Row: Codable, Equatable {
        var agent: String
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

    private var periods: [(agent: String, period: ActivityPeriod)] = []
    private(set) var chunks = 0

    var isEmpty: Bool { periods.isEmpty }

    mutating func add(_ chunk: ActivityChunk, agent: String) {
        chunks += 1
        periods += chunk.periods.map { (agent, $0) }
    }

    /// The rows: per agent, focus periods and active/idle periods in time order, continuations joined.
    func rows() -> [Row] {
        var out: [Row] = []
        let byAgent = Dictionary(grouping: periods, by: \.agent)
        for agent in byAgent.keys.sorted() {
            let list = byAgent[agent]!.map(\.period)
            for group in [[ActivityPeriod.Kind.focus], [.active, .idle]] {
                var open: ActivityPeriod?
                for p in list.filter({ group.contains($0.type) }).sorted(by: { ($0.startMs, $0.endMs) < ($1.startMs, $1.endMs) }) {
                    if var o = open, o.isContinued(by: p) {
                        o.endMs = p.endMs
                        o.continues = p.continues
                        open = o
                        continue
                    }
                    if let o = open { out.append(Self.row(agent, o)) }
                    open = p
                }
                if let o = open { out.append(Self.row(agent, o)) }
            }
        }
        return out.sorted { ($0.agent, $0.startMs, $0.type) < ($1.agent, $1.startMs, $1.type) }
    }

    private static func row(_ agent: String, _ p: ActivityPeriod) -> Row {
        Row(agent: agent, type: p.type.rawValue, start: OutputNaming.iso(p.startMs), end: OutputNaming.iso(p.endMs),
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
    /// quoted with `"` doubled). A text field starting with `=`, `+`, `-`, `@`, tab or CR gets a
    /// leading `'`, so a spreadsheet shows a window title as text instead of running it as a
    /// formula (OWASP "CSV Injection").
    static func csv(_ rows: [Row]) -> Data {
        func text(_ s: String) -> String {
            var v = s
            if let first = v.unicodeScalars.first, "=+-@\t\r".unicodeScalars.contains(first) { v = "'" + v }
            if v.contains(where: { $0 == "\"" || $0 == "," || $0 == "\r" || $0 == "\n" || $0 == "\r\n" }) {
                v = "\"" + v.replacingOccurrences(of: "\"", with: "\"\"") + "\""
            }
            return v
        }
        var out = "agent,type,start,end,duration_ms,wm_class,window_title,excluded\r\n"
        for r in rows {
            let fields = [text(r.agent), r.type, r.start, r.end, String(r.durationMs), text(r.wmClass ?? ""),
                          text(r.windowTitle ?? ""), r.excluded == true ? "1" : ""]
            out += fields.joined(separator: ",") + "\r\n"
        }
        return Data(out.utf8)
    }
}
