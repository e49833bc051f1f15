import Foundation

/// What a decoder needs to place one sealed video packet (docs/CAPTURE.md "Video packet payload").
///
/// A *stream* is one monitor recorded at one size by one encoder: it starts with a keyframe
/// (`packetIndex` 0) and gets a new random `streamID` whenever the agent starts a new encoder
/// (agent start, DEK rotation, display reconnect, size or monitor change, a packet lost).
/// A *group of pictures* is a keyframe and the packets after it up to the next keyframe; it
/// decodes on its own, and `groupStart` (the `packetIndex` of its keyframe) names it.
public struct VideoPacketMetadata: Codable, Sendable, Equatable {
    /// WebCodecs codec string (W3C WebCodecs AV1 Codec Registration), e.g. `av01.0.08M.08`.
    public var codec: String
    /// Whether this packet is a keyframe (decodable without earlier packets).
    public var keyframe: Bool
    /// Coded picture size in pixels.
    public var width: Int
    public var height: Int
    /// Monitor index, RandR name and position in the root window (as ``FrameMetadata``).
    public var monitor: Int
    public var monitorName: String
    public var x: Int
    public var y: Int
    /// When the pixels were read, ms since the Unix epoch (UTC); the packet's presentation time.
    public var captureTimeMs: Int64
    /// The stream this packet belongs to: 32 lowercase hex digits (128 random bits).
    public var streamID: String
    /// 0-based position in the stream.
    public var packetIndex: Int
    /// `packetIndex` of the keyframe that starts this packet's group of pictures.
    public var groupStart: Int

    public init(codec: String, keyframe: Bool, width: Int, height: Int, monitor: Int, monitorName: String,
                x: Int, y: Int, captureTimeMs: Int64, streamID: String, packetIndex: Int, groupStart: Int) {
        self.codec = codec
        self.keyframe = keyframe
        self.width = width
        self.height = height
        self.monitor = monitor
        self.monitorName = monitorName
        self.x = x
        self.y = y
        self.captureTimeMs = captureTimeMs
        self.streamID = streamID
        self.packetIndex = packetIndex
        self.groupStart = groupStart
    }
}

/// The video packet payload (sealed as kind "screen", told from a PNG frame by its magic):
///
/// ```
/// offset size field
/// 0      4    magic "CVPK"
/// 4      1    version (1)
/// 5      4    metadata length M in bytes, big-endian u32
/// 9      M    VideoPacketMetadata as UTF-8 JSON (sorted keys)
/// 9+M    …    one codec packet (AV1: a temporal unit in the low-overhead bitstream format, AV1 spec §5)
/// ```
public enum VideoPacketPayload {
    public static let magic: [UInt8] = Array("CVPK".utf8)
    public static let version: UInt8 = 1

    /// Whether `data` starts with this payload's magic (else it may be a ``FramePayload``).
    public static func matches(_ data: Data) -> Bool { data.prefix(4).elementsEqual(magic) }

    /// Encodes the metadata and the packet bytes into one payload (plaintext, to be sealed).
    public static func encode(_ meta: VideoPacketMetadata, packet: some Collection<UInt8>) -> Data {
        FramedPayload.encode(magic: magic, version: version, json: canonicalJSON(meta), body: packet)
    }

    /// Decodes a payload made by ``encode(_:packet:)``.
    /// - Throws: ``CaptureFormatError`` naming the field: magic, version, metadata length or JSON,
    ///   a value out of range (size, index, stream id), or an empty packet.
    public static func decode(_ data: Data) throws -> (VideoPacketMetadata, packet: Data) {
        let (json, packet) = try FramedPayload.decode(data, magic: magic, version: version, name: "video packet payload")
        let meta: VideoPacketMetadata
        do {
            meta = try JSONDecoder().decode(VideoPacketMetadata.self, from: json)
        } catch {
            throw CaptureFormatError("video packet payload: metadata is not VideoPacketMetadata JSON (\(error))")
        }
        guard (1...16384).contains(meta.width), (1...16384).contains(meta.height) else {
            throw CaptureFormatError("video packet payload: size \(meta.width)x\(meta.height) outside 1-16384")
        }
        guard meta.packetIndex >= 0, (0...meta.packetIndex).contains(meta.groupStart),
              meta.keyframe == (meta.groupStart == meta.packetIndex) else {
            throw CaptureFormatError("video packet payload: packetIndex \(meta.packetIndex), groupStart \(meta.groupStart) "
                                     + "and keyframe \(meta.keyframe) disagree")
        }
        guard meta.streamID.utf8.count == 32, meta.streamID.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw CaptureFormatError("video packet payload: streamID is not 32 lowercase hex digits")
        }
        guard !packet.isEmpty else { throw CaptureFormatError("video packet payload: no packet bytes") }
        return (meta, packet)
    }
}
