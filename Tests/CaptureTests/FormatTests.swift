import CaptureFormat
import Foundation
import Testing

@Suite("Capture payload formats")
struct FormatTests {
    let meta = FrameMetadata(monitor: 1, monitorName: "DP-2", x: 1920, y: 0, width: 2, height: 1,
                             captureTimeMs: 1_764_547_200_000)
    let png = Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 1, 2, 3])

    @Test("frame payload: header layout and round trip")
    func framePayload() throws {
        let payload = FramePayload.encode(meta, png: png)
        #expect(Array(payload.prefix(5)) == Array("CFRM".utf8) + [1])
        let length = Int(payload[5]) << 24 | Int(payload[6]) << 16 | Int(payload[7]) << 8 | Int(payload[8])
        let json = try JSONSerialization.jsonObject(with: payload[9..<(9 + length)]) as? [String: Any]
        #expect(json?["monitorName"] as? String == "DP-2" && json?["captureTimeMs"] as? Int == 1_764_547_200_000)
        #expect(payload.suffix(png.count) == png)
        let (decoded, decodedPNG) = try FramePayload.decode(payload)
        #expect(decoded == meta && decodedPNG == png)
        // A slice with a non-zero start index decodes too.
        let sliced = (Data([0xff]) + payload).dropFirst()
        #expect(try FramePayload.decode(sliced).0 == meta)
    }

    @Test("frame payload: every malformed input names what is wrong")
    func framePayloadErrors() {
        let good = FramePayload.encode(meta, png: png)
        var badMagic = good; badMagic[0] = 0x58
        var badVersion = good; badVersion[4] = 9
        var badLength = good; badLength[5] = 0x7f
        let notPNG = FramePayload.encode(meta, png: Data("GIF89a".utf8))
        for (input, word) in [(Data(good.prefix(4)), "shorter"), (badMagic, "magic"), (badVersion, "version"),
                              (badLength, "length"), (notPNG, "PNG signature")] {
            do {
                _ = try FramePayload.decode(input)
                Issue.record("decoded a malformed payload (\(word))")
            } catch let error as CaptureFormatError {
                #expect(error.description.contains(word))
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
    }

    @Test("keystroke chunk: JSON round trip, text joins presses only, [ is escaped")
    func keystrokeChunk() throws {
        let chunk = KeystrokeChunk(windowTitle: "Terminal — bash", wmClass: "xterm.XTerm", startMs: 10, endMs: 30, keys: [
            Keystroke(timeMs: 10, text: "ü"), Keystroke(timeMs: 11, text: "ü", pressed: false),
            Keystroke(timeMs: 20, text: KeyToken.literal("[")), Keystroke(timeMs: 30, text: KeyToken.make(modifiers: ["Ctrl"], name: "c")),
        ])
        #expect(chunk.text == "ü[[[Ctrl+c]")
        let data = chunk.encoded()
        #expect(try KeystrokeChunk.decode(data) == chunk)
        let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        #expect(object?["wmClass"] as? String == "xterm.XTerm")
        #expect(throws: CaptureFormatError.self) { try KeystrokeChunk.decode(Data("{}".utf8)) }
    }
}
