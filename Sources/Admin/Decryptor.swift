import CaptureFormat
import CollectorStorage
import Crypto
import CustosBase
import Envelope
import Foundation
import Synchronization

/// Set by SIGINT/SIGTERM during a decrypt or export; the item loop stops at the next item.
/// (`Atomic` stores are lock-free, so safe in a signal handler.)
let interruptRequested = Atomic<Bool>(false)

/// What a decrypt or export run did. Counts are items (sealed blobs) unless named otherwise.
public struct DecryptReport: Sendable, Codable, Equatable {
    /// Blobs matching the selection (agent, kind, time range).
    public var selected = 0
    /// Blobs opened and written.
    public var decrypted = 0
    /// Screen frames written as PNG (`screen-format=png`).
    public var screens = 0
    /// Video packets (AV1, kind `screen`) written into WebM files.
    public var videoPackets = 0
    /// WebM files written (one per contiguous run of a stream: docs/ADMIN.md "Output layout").
    public var videoFiles = 0
    /// Video packets decrypted but not written, by reason: `no-keyframe` (a packet before it is
    /// missing — not stored, failed, or outside the selection — and no keyframe came since, so it
    /// cannot be decoded), `duplicate` (a second packet with the same stream and index).
    public var videoPacketsSkipped: [String: Int] = [:]
    /// Video packets written from before `--since`: the start of a group of pictures the
    /// selection's start fell inside, so its first selected picture decodes.
    public var videoPacketsBeforeSelection = 0
    /// PNG stills decoded from video (`--stills`).
    public var stills = 0
    /// Keystroke chunks decoded.
    public var keystrokeChunks = 0
    /// Distinct (agent, window title, WM_CLASS) keystroke text files.
    public var keystrokeWindows = 0
    /// Activity chunks decoded (kind `activity`).
    public var activityChunks = 0
    /// Rows of the activity timeline written (periods, continuations joined).
    public var activityPeriods = 0
    /// Generic blobs written as raw `.bin` files.
    public var generic = 0
    /// DEK records unwrapped (each once).
    public var deksUnwrapped = 0
    /// Blobs sealed to other KEKs than the key given, by KEK id (not attempted).
    public var otherKEKs: [String: Int] = [:]
    /// Blobs that failed: blob id and reason (never content).
    public var failures: [Failure] = []
    /// Whether SIGINT/SIGTERM stopped the run early.
    public var interrupted = false

    public struct Failure: Sendable, Codable, Equatable {
        /// The blob that failed; empty for a failure of the source as a whole (a record stream
        /// whose last record was cut short).
        public var blobID: String
        public var reason: String
    }

    /// Selected blobs sealed to the key given.
    public var attempted: Int { selected - otherKEKs.values.reduce(0, +) }

    /// Video packets decrypted but not written (``videoPacketsSkipped``), in all.
    public var videoPacketsSkippedTotal: Int { videoPacketsSkipped.values.reduce(0, +) }

    /// `12 video packets in 2 WebM files (3 skipped: 3 no-keyframe), 4 stills` for the summary line.
    public var videoSummary: String {
        let reasons = videoPacketsSkipped.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
        return "\(counted(videoPackets, "video packet")) in \(counted(videoFiles, "WebM file"))"
            + (videoPacketsBeforeSelection > 0 ? " (\(videoPacketsBeforeSelection) from before --since, to start at a keyframe)" : "")
            + (videoPacketsSkippedTotal > 0 ? " (\(videoPacketsSkippedTotal) skipped: \(reasons))" : "")
            + (stills > 0 ? ", \(counted(stills, "still"))" : "")
    }
}

/// One written file, for the manifest. Video files (`kind` "video") also carry their stream,
/// packet count, duration and first/last packet time; stills (`kind` "still") the video they come from.
struct ManifestFile: Codable {
    var path: String
    var kind: String
    var agent: String
    var blobIds: [String]
    var captureTime: String
    var bytes: Int
    var sha256: String
    var streamId: String? = nil
    var monitor: Int? = nil
    var codec: String? = nil
    var width: Int? = nil
    var height: Int? = nil
    var packets: Int? = nil
    /// Declared WebM duration in ms (last − first packet time + the last packet's display time).
    var durationMs: Int64? = nil
    var firstTime: String? = nil
    var lastTime: String? = nil
    /// For a still: the WebM file holding the packet it was decoded from.
    var video: String? = nil
}

/// The manifest written as `manifest.json` in a decrypt directory or export archive.
struct Manifest: Codable {
    var tool = "custos"
    var operation: String
    var createdAt: String
    var actor: String
    var source: String
    var kekID: String
    var selection: Selection
    var counts: DecryptReport
    var files: [ManifestFile]

    struct Selection: Codable {
        var agent: String?
        var kind: String?
        var since: String?
        var until: String?
        /// `--stills` in ms, when given.
        var stillsEveryMs: Int64? = nil
    }
}

/// Opens sealed items with one private KEK and writes the plaintext captures to a sink.
///
/// Each DEK record needed is unwrapped once (RSA-OAEP) and its opener reused for all its blobs.
/// A blob that fails (tampered, truncated, DEK failed, payload not decodable) is reported by id
/// and skipped; the rest are still written. Plaintext exists only in memory and in the sink.
final class Decryptor {
    let key: KEKPrivateKey
    let source: any SealedItemSource
    let sink: any CaptureSink
    let progress: ProgressReporter
    let video: VideoExportOptions
    var files: [ManifestFile] = []
    private var openers: [DEKID: BlobOpener] = [:]
    private var deadDEKs: [DEKID: String] = [:]

    init(key: KEKPrivateKey, source: any SealedItemSource, sink: any CaptureSink, progress: ProgressReporter,
         video: VideoExportOptions = VideoExportOptions()) {
        self.key = key
        self.source = source
        self.sink = sink
        self.progress = progress
        self.video = video
    }

    /// Keystroke chunks grouped per (agent, user, window); written when the run ends.
    private struct WindowKey: Hashable { var agent: String; var user: UserName?; var title: String; var wmClass: String }
    private struct Chunk { var blobID: BlobID; var chunk: KeystrokeChunk }

    /// Opens one sealed item: its DEK (unwrapped once per run and kept), the blob, a check that
    /// the blob's header matches its row. A failure is added to `report` by blob id; nil then.
    func plaintext(of info: SealedItem, report: inout DecryptReport) async -> Data? {
        func fail(_ reason: String) -> Data? {
            report.failures.append(.init(blobID: info.blobID.hex, reason: reason))
            return nil
        }
        // The DEK, unwrapped once.
        let opener: BlobOpener
        if let o = openers[info.dekID] {
            opener = o
        } else if let why = deadDEKs[info.dekID] {
            return fail(why)
        } else {
            do {
                guard let bytes = try await source.dekRecord(info.dekID) else {
                    throw AdminError(.decryptionFailed, "DEK record \(info.dekID) is missing from \(source.name)")
                }
                let record = try DEKRecord(parsing: bytes)
                guard record.dekID == info.dekID else {
                    throw AdminError(.decryptionFailed, "DEK record stored as \(info.dekID) is \(record.dekID)")
                }
                let o = try key.unwrap(record)
                openers[info.dekID] = o
                report.deksUnwrapped += 1
                opener = o
            } catch {
                let why = "DEK \(info.dekID): \(error)"
                deadDEKs[info.dekID] = why
                return fail(why)
            }
        }

        // The blob.
        do {
            guard let bytes = try await source.blob(info.blobID) else {
                return fail("sealed blob missing from \(source.name)")
            }
            let blob = try SealedBlob(parsing: bytes)
            guard blob.header.blobID == info.blobID, blob.header.agentID == info.agentID,
                  blob.header.kind == info.kind, blob.header.captureTimeMs == info.captureTimeMs,
                  blob.header.session?.user == info.user, blob.header.session?.display == info.display else {
                return fail("the blob's header does not match its database row (agent, kind, time, id, user or display changed)")
            }
            return try opener.open(blob)
        } catch let e as EnvelopeError {
            return fail(e.message)
        } catch {
            return fail("\(error)")
        }
    }

    /// Decrypts the captures `query` selects that are sealed to `key.id` into the sink, walking
    /// them a page at a time (``SealedItemSource/forEachPage(_:_:)``), and counts in `report`
    /// what it selected (`selected`, `otherKEKs`) as well as what it did. `expected` is the
    /// number of items to decrypt counted by an earlier walk (the progress total).
    /// Does not commit the sink.
    ///
    /// Video packets are read twice: the first pass keeps only their metadata (``VideoStreams``),
    /// the second (``writeVideo(_:report:)``) opens each stream's packets again in order and
    /// muxes them, so only one WebM file is in memory at a time, never a whole selection.
    func run(_ query: CaptureQuery, expected: Int, report: inout DecryptReport) async throws {
        var windows: [WindowKey: [Chunk]] = [:]
        var windowOrder: [WindowKey] = []
        var jsonLines = Data()
        var activity = ActivityTimelineExport()
        let videoStreams = VideoStreams()

        progress.start(total: expected)
        try await source.forEachPage(query) { page in
            for info in page {
                report.selected += 1
                guard info.kekID == key.id else {
                    report.otherKEKs[info.kekID.hex, default: 0] += 1
                    continue
                }
                if interruptRequested.load(ordering: .relaxed) { report.interrupted = true; return false }
                defer { progress.advance(failed: report.failures.count) }
                guard let plaintext = await plaintext(of: info, report: &report) else { continue }

                // The payload.
                do {
                    switch info.kind {
                    case .screen where VideoPacketPayload.matches(plaintext):
                        let (meta, packet) = try VideoPacketPayload.decode(plaintext)
                        try videoStreams.add(info, meta: meta, packet: packet)
                    case .screen:
                        let (meta, png) = try FramePayload.decode(plaintext)
                        let name = OutputNaming.screen(agent: info.agentID, user: info.user, meta: meta, timeMs: info.captureTimeMs)
                        let used = try sink.add(png, at: name, compress: false)
                        record(used, kind: "screen", info: info, blobIDs: [info.blobID.hex], data: png)
                        report.screens += 1
                    case .keystrokes:
                        let chunk = try KeystrokeChunk.decode(plaintext)
                        let k = WindowKey(agent: info.agentID, user: info.user, title: chunk.windowTitle, wmClass: chunk.wmClass)
                        if windows[k] == nil { windowOrder.append(k) }
                        windows[k, default: []].append(Chunk(blobID: info.blobID, chunk: chunk))
                        jsonLines.append(OutputNaming.jsonLine(agent: info.agentID, user: info.user?.rawValue, display: info.display,
                                                               blobID: info.blobID.hex, chunk: chunk))
                        report.keystrokeChunks += 1
                    case .activity:
                        activity.add(try ActivityChunk.decode(plaintext), agent: info.agentID, user: info.user?.rawValue,
                                     display: info.display)
                        report.activityChunks += 1
                    default:
                        let name = OutputNaming.generic(agent: info.agentID, user: info.user, timeMs: info.captureTimeMs,
                                                        blobID: info.blobID.hex)
                        let used = try sink.add(plaintext, at: name, compress: true)
                        record(used, kind: info.kind.name, info: info, blobIDs: [info.blobID.hex], data: plaintext)
                        report.generic += 1
                    }
                    report.decrypted += 1
                } catch let e as AdminError where e.code == .io || e.code == .usage {
                    throw e  // the output failed: stop, the rest would fail the same way
                } catch {
                    report.failures.append(.init(blobID: info.blobID.hex,
                                                 reason: "decrypted, but the \(info.kind.name) payload is not decodable: \(error)"))
                }
            }
            return true
        }
        progress.finish()

        // Video: one WebM file per contiguous run of each stream (and stills), read again per stream.
        if !report.interrupted { try await writeVideo(videoStreams, report: &report) }

        // Keystrokes: one readable text file per window, and keystrokes.jsonl.
        for k in windowOrder {
            let chunks = windows[k]!
            let text = OutputNaming.windowText(agent: k.agent, title: k.title, wmClass: k.wmClass,
                                               chunks: chunks.map(\.chunk))
            let used = try sink.add(text, at: OutputNaming.window(agent: k.agent, user: k.user, title: k.title, wmClass: k.wmClass),
                                    compress: true)
            files.append(ManifestFile(path: used, kind: "keystrokes", agent: k.agent, blobIds: chunks.map(\.blobID.hex),
                                      captureTime: OutputNaming.iso(chunks[0].chunk.startMs), bytes: text.count,
                                      sha256: sha256Hex(text)))
        }
        report.keystrokeWindows = windowOrder.count
        if !jsonLines.isEmpty {
            let used = try sink.add(jsonLines, at: "keystrokes.jsonl", compress: true)
            files.append(ManifestFile(path: used, kind: "keystrokes-jsonl", agent: "", blobIds: [],
                                      captureTime: "", bytes: jsonLines.count, sha256: sha256Hex(jsonLines)))
        }

        // Activity: one timeline of every agent, as CSV and JSON.
        if !activity.isEmpty {
            let rows = activity.rows()
            report.activityPeriods = rows.count
            for (name, data) in [("activity.csv", ActivityTimelineExport.csv(rows)), ("activity.json", ActivityTimelineExport.json(rows))] {
                let used = try sink.add(data, at: name, compress: true)
                files.append(ManifestFile(path: used, kind: "activity", agent: "", blobIds: [], captureTime: rows.first?.start ?? "",
                                          bytes: data.count, sha256: sha256Hex(data)))
            }
        }
    }

    private func record(_ path: String, kind: String, info: SealedItem, blobIDs: [String], data: Data) {
        files.append(ManifestFile(path: path, kind: kind, agent: info.agentID, blobIds: blobIDs,
                                  captureTime: OutputNaming.iso(info.captureTimeMs), bytes: data.count,
                                  sha256: sha256Hex(data)))
    }
}

func sha256Hex(_ data: Data) -> String {
    SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
}

/// File names and text layouts of decrypted output (docs/ADMIN.md, "Output layout").
enum OutputNaming {
    /// `2026-11-30T23:59:01.123Z`.
    static func iso(_ ms: Int64) -> String { isoTime(unixMs: ms) }

    /// `2026-11-30T23-59-01.123Z`: ISO 8601 with `-` for `:` (portable file names).
    static func fileTime(_ ms: Int64) -> String { iso(ms).replacingOccurrences(of: ":", with: "-") }

    /// Makes `s` (an agent id, a monitor name, a window title or class, a blob id: all read from
    /// a database row, a record header or a decrypted payload) one path component of at most
    /// `maxBytes` UTF-8 bytes. `SafeText.fileNameComponent` (CustosBase) removes controls and
    /// bidi controls (U+202E would show `gpj.exe` as `exe.jpg`) and replaces `/`; on top of it,
    /// the characters other systems refuse in zip entry names (`\ : * ? " < > |`) become `_`,
    /// and leading dots and outer spaces go (no hidden files, no `..`). "_" when nothing is left.
    static func component(_ s: String, maxBytes: Int = 80) -> String {
        let base = SafeText.fileNameComponent(s, maxBytes: maxBytes)
        var out = String(String.UnicodeScalarView(base.unicodeScalars.map { ch in
            "\\:*?\"<>|".unicodeScalars.contains(ch) ? "_" : ch
        }))
        while out.hasPrefix(".") { out.removeFirst() }
        out = out.trimmingCharacters(in: .whitespaces)
        return out.isEmpty ? "_" : out
    }

    /// The folder of a capture's files: `<agent>`, or `<agent>/users/<user>` for a capture of a
    /// graphical session (a sealed session blob names its user), so each user's captures are in
    /// a folder named after the user, apart from the agent's own `screens/`, `keystrokes/` and
    /// `other/` (a user may be called `screens`). A name that file-name sanitising changed
    /// (`CORP\\carol` → `CORP_carol`, `?` → `_`, cut at 64 bytes) gets `~` and the first 8 hex
    /// digits of its SHA-256, so two users never share a folder (`CORP:carol` is another one).
    static func folder(agent: String, user: UserName?) -> String {
        guard let user else { return component(agent) }
        let name = component(user.rawValue, maxBytes: 64)
        let unique = name == user.rawValue ? name : name + "~" + sha256Hex(Data(user.rawValue.utf8)).prefix(8)
        return component(agent) + "/users/" + unique
    }

    /// `<folder>/screens/<agent>_mon<N>-<name>_<time>.png`: a PNG frame, or a still decoded from video.
    static func screen(agent: String, user: UserName? = nil, meta: FrameMetadata, timeMs: Int64) -> String {
        screen(agent: agent, user: user, monitor: meta.monitor, monitorName: meta.monitorName, timeMs: timeMs)
    }

    static func screen(agent: String, user: UserName? = nil, monitor: Int, monitorName: String, timeMs: Int64) -> String {
        let a = component(agent)
        return "\(folder(agent: agent, user: user))/screens/\(a)_mon\(monitor)-\(component(monitorName, maxBytes: 32))_\(fileTime(timeMs)).png"
    }

    /// `<folder>/screens/<agent>_mon<N>-<name>_<time of the first packet>_<first 8 digits of the stream id>.webm`.
    static func video(agent: String, user: UserName? = nil, monitor: Int, monitorName: String, startMs: Int64,
                      streamID: String) -> String {
        let a = component(agent)
        return "\(folder(agent: agent, user: user))/screens/\(a)_mon\(monitor)-\(component(monitorName, maxBytes: 32))_\(fileTime(startMs))_"
            + "\(component(String(streamID.prefix(8)))).webm"
    }

    /// `<folder>/keystrokes/<WM_CLASS>_<window title>.txt`.
    static func window(agent: String, user: UserName? = nil, title: String, wmClass: String) -> String {
        let cls = wmClass.isEmpty ? "no-class" : component(wmClass, maxBytes: 40)
        let t = title.isEmpty ? "untitled" : component(title, maxBytes: 80)
        return "\(folder(agent: agent, user: user))/keystrokes/\(cls)_\(t).txt"
    }

    /// `<folder>/other/<time>_<blob id>.bin`.
    static func generic(agent: String, user: UserName? = nil, timeMs: Int64, blobID: String) -> String {
        "\(folder(agent: agent, user: user))/other/\(fileTime(timeMs))_\(component(blobID)).bin"
    }

    /// The readable keystroke text of one window: a header, then each chunk as a time range
    /// line followed by its text (`KeystrokeChunk.text`). The header's values (from a record
    /// header and the endpoint's window properties, which its user controls) are escaped with
    /// `SafeText.escaped`, so a title cannot add header lines or send escape sequences to the
    /// terminal of whoever reads the file with `cat`.
    static func windowText(agent: String, title: String, wmClass: String, chunks: [KeystrokeChunk]) -> Data {
        var s = "# agent: \(SafeText.escaped(agent))\n# window: \(SafeText.escaped(title))\n# WM_CLASS: \(SafeText.escaped(wmClass))\n"
        for c in chunks {
            s += "\n[\(iso(c.startMs)) – \(iso(c.endMs))]\n\(c.text)\n"
            // Keys left out (docs/CAPTURE.md): when, and how many where they are counted.
            for m in c.keys where m.isMarker {
                s += "# \(m.text) \(iso(m.timeMs)) – \(iso(m.untilMs ?? m.timeMs))\(m.count.map { ", \($0) key\($0 == 1 ? "" : "s")" } ?? "")\n"
            }
        }
        return Data(s.utf8)
    }

    struct JSONLine: Codable {
        var time: String
        var startMs: Int64
        var endMs: Int64
        var agent: String
        var blobId: String
        var windowTitle: String
        var wmClass: String
        var text: String
        /// The graphical session's user and display (sealed session blobs).
        var user: String?
        var display: String?
        /// The markers for keys left out (`[suppressed]`, `[excluded]`): their spans and counts.
        var markers: [Marker]?

        struct Marker: Codable {
            var text: String
            var startMs: Int64
            var untilMs: Int64
            var count: Int?
        }
    }

    /// One `keystrokes.jsonl` line (JSON Lines, https://jsonlines.org), newline-terminated.
    static func jsonLine(agent: String, user: String? = nil, display: String? = nil, blobID: String,
                         chunk: KeystrokeChunk) -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var line = JSONLine(time: iso(chunk.startMs), startMs: chunk.startMs, endMs: chunk.endMs, agent: agent,
                            blobId: blobID, windowTitle: chunk.windowTitle, wmClass: chunk.wmClass, text: chunk.text,
                            user: user, display: display)
        let markers = chunk.keys.filter(\.isMarker).map {
            JSONLine.Marker(text: $0.text, startMs: $0.timeMs, untilMs: $0.untilMs ?? $0.timeMs, count: $0.count)
        }
        line.markers = markers.isEmpty ? nil : markers
        var d = (try? enc.encode(line)) ?? Data("{}".utf8)
        d.append(0x0a)
        return d
    }
}

extension DecryptReport {
    /// The closing error line when items failed: how many of how many `noun`s failed to `verb`,
    /// then what was written — "the others were written" only when something was; with nothing
    /// decrypted and written, the output holds only its manifest, and the line says so.
    func failureLine(_ noun: String, verb: String) -> String {
        let head = "\(failures.count) of \(counted(attempted, noun)) failed to \(verb) (listed above)"
        return head + (decrypted - videoPacketsSkippedTotal > 0 ? "; the others were written"
                       : "; nothing was written but manifest.json")
    }
}
