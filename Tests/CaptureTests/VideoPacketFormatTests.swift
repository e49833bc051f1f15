import CaptureFormat
import Foundation
import Testing

@Suite("Video packet payload")
struct VideoPacketFormatTests {
    let meta = VideoPacketMetadata(codec: "av01.0.08M.08", keyframe: false, width: 1920, height: 1080, monitor: 1,
                                   monitorName: "DP-2", x: 1920, y: 0, captureTimeMs: 1_764_547_200_000,
                                   streamID: String(repeating: "0f", count: 16), packetIndex: 7, groupStart: 5)
    let packet: [UInt8] = [0x12, 0x00, 0x32, 0x10, 1, 2, 3]

    @Test("header layout, round trip, told apart from a PNG frame")
    func roundTrip() throws {
        let payload = VideoPacketPayload.encode(meta, packet: packet)
        #expect(Array(payload.prefix(5)) == Array("CVPK".utf8) + [1])
        #expect(VideoPacketPayload.matches(payload))
        let frame = FramePayload.encode(FrameMetadata(monitor: 0, monitorName: "root", x: 0, y: 0, width: 1, height: 1,
                                                      captureTimeMs: 0),
                                        png: Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
        #expect(!VideoPacketPayload.matches(frame))
        let (decoded, bytes) = try VideoPacketPayload.decode((Data([0xff]) + payload).dropFirst())
        #expect(decoded == meta && Array(bytes) == packet)
    }

    @Test("every malformed input names what is wrong", arguments: [
        ("short", "shorter than"), ("magic", "magic"), ("version", "version"), ("length", "metadata length"),
        ("json", "not VideoPacketMetadata JSON"), ("size", "size"), ("group", "disagree"),
        ("keyframe", "disagree"), ("stream", "streamID"), ("empty", "no packet bytes"),
    ])
    func errors(_ c: (String, String)) throws {
        let good = VideoPacketPayload.encode(meta, packet: packet)
        var m = meta
        let bad: Data
        switch c.0 {
        case "short": bad = good.prefix(8)
        case "magic": var d = good; d[0] = 0x58; bad = d
        case "version": var d = good; d[4] = 2; bad = d
        case "length": var d = good; d[5] = 0xff; bad = d
        case "json": bad = Data("CVPK".utf8) + [1, 0, 0, 0, 2] + Data("{}".utf8) + packet
        case "size": m.width = 0; bad = VideoPacketPayload.encode(m, packet: packet)
        case "group": m.groupStart = 9; bad = VideoPacketPayload.encode(m, packet: packet)
        case "keyframe": m.keyframe = true; bad = VideoPacketPayload.encode(m, packet: packet)
        case "stream": m.streamID = "\u{1B}]0;X\u{7}"; bad = VideoPacketPayload.encode(m, packet: packet)
        default: bad = VideoPacketPayload.encode(m, packet: [UInt8]())
        }
        do {
            _ = try VideoPacketPayload.decode(bad)
            Issue.record("\(c.0): accepted")
        } catch let error as CaptureFormatError {
            #expect(error.description.contains(c.1), "\(c.0): \(error.description)")
            #expect(!error.description.contains("\u{1B}"))
        }
    }
}
