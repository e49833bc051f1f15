import CaptureFormat

/// Why a stream's next packet is a keyframe (for logs and tests).
public enum KeyframeReason: String, Sendable, Equatable {
    /// The first packet of a stream (agent start, display reconnect, size or monitor change,
    /// DEK rotation, a packet dropped or evicted: each starts a new stream).
    case streamStart = "stream-start"
    /// `keyframe-interval-seconds` passed since the group of pictures began.
    case interval
}

/// One monitor's video stream: the picture to fill, the AV1 encoder, and the keyframe policy.
///
/// A stream has one size and one random 128-bit `streamID`; packets are numbered from 0 and the
/// first is a keyframe. A new group of pictures (a keyframe) starts when `keyframeIntervalMs`
/// has passed since the current group's keyframe; everything else that needs a keyframe (a
/// restart, DEK rotation, display reconnect, size or monitor change, a packet not kept) ends
/// the stream: the owner makes a new `MonitorStream`, so a gap never sits inside a stream.
///
/// Usage per captured frame: fill ``picture`` (``I420Frame/write(rows:firstRow:rowCount:stride:layout:)``,
/// strip by strip), then ``encode(timeMs:monitorName:x:y:)``. Not thread-safe; encoding blocks
/// (≈ 10–16 ms per 1920×1080 frame): call from a thread of its own.
public final class MonitorStream {
    public let monitor: Int
    public let width: Int
    public let height: Int
    /// 32 lowercase hex digits (``VideoPacketMetadata/streamID``).
    public let streamID: String
    /// Longest time between keyframes, in ms (0: only the first packet is a keyframe).
    public let keyframeIntervalMs: Int64
    /// The picture the next ``encode(timeMs:monitorName:x:y:)`` takes; fill it first.
    public let picture: I420Frame
    private let encoder: AV1Encoder
    private var nextIndex = 0
    private var groupStart = 0
    private var groupStartMs: Int64 = 0
    private var lastTimeMs: Int64 = .min
    /// The stream's WebCodecs codec string, from its first keyframe's sequence header (the
    /// level follows the picture size: 2.0 at 320×240, 4.0 at 1920×1080).
    private var codec: String?

    /// - Parameters:
    ///   - monitor: the monitor index the packets carry.
    ///   - keyframeIntervalMs: ≥ 0 (0: none after the first).
    /// - Throws: ``VideoError`` `.invalidArgument` for a size outside 2…16384, `.codec` when libaom fails.
    public init(monitor: Int, width: Int, height: Int, keyframeIntervalMs: Int64,
                settings: AV1EncoderSettings = AV1EncoderSettings()) throws(VideoError) {
        guard keyframeIntervalMs >= 0 else {
            throw VideoError(.invalidArgument, "keyframe interval \(keyframeIntervalMs) ms is negative")
        }
        self.monitor = monitor
        self.width = width
        self.height = height
        self.keyframeIntervalMs = keyframeIntervalMs
        picture = try I420Frame(width: width, height: height)
        encoder = try AV1Encoder(width: width, height: height, settings: settings)
        var rng = SystemRandomNumberGenerator()
        streamID = (0..<2).map { _ in
            let hex = String(rng.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    /// Packets encoded so far.
    public var packetCount: Int { nextIndex }

    /// Whether the next packet will be a keyframe, and why; nil for an inter packet.
    public func keyframeReason(atMs timeMs: Int64) -> KeyframeReason? {
        if nextIndex == 0 { return .streamStart }
        if keyframeIntervalMs > 0 && timeMs - groupStartMs >= keyframeIntervalMs { return .interval }
        return nil
    }

    /// Encodes ``picture`` as the packet shown at `timeMs` (ms since the Unix epoch; a time not
    /// after the previous packet's is moved 1 ms past it, since AV1 presentation times must
    /// increase).
    /// - Returns: the packet's metadata (codec, keyframe, size, monitor, stream id, index, group)
    ///   and its bytes (one AV1 temporal unit, low-overhead bitstream format, AV1 spec §5).
    /// - Throws: ``VideoError`` `.codec` when libaom fails (the stream should then be replaced).
    public func encode(timeMs: Int64, monitorName: String, x: Int, y: Int) throws(VideoError)
        -> (VideoPacketMetadata, packet: [UInt8]) {
        let time = max(timeMs, lastTimeMs == .min ? timeMs : lastTimeMs + 1)
        let keyframe = keyframeReason(atMs: time) != nil
        // No look-ahead (`lag-in-frames=0`): the packet comes out of this call. (A flush would
        // end libaom's stream, so an empty result is an error, not a reason to flush.)
        let packets = try encoder.encode(picture, timeMs: time, keyframe: keyframe)
        guard !packets.isEmpty else {
            throw VideoError(.codec, "libaom gave no packet for the \(width)x\(height) frame at \(time) ms")
        }
        let bytes = packets.count == 1 ? packets[0].data : packets.flatMap(\.data)
        let isKey = packets[0].isKeyframe
        guard isKey == keyframe else {
            throw VideoError(.codec, "libaom made a \(isKey ? "keyframe" : "inter frame") where a "
                             + "\(keyframe ? "keyframe" : "inter frame") was asked for (packet \(nextIndex))")
        }
        if keyframe {
            groupStart = nextIndex
            groupStartMs = time
        }
        if codec == nil {
            codec = try AV1TemporalUnit(bytes).sequenceHeader()?.codecString
            guard codec != nil else {
                throw VideoError(.codec, "libaom's first keyframe of the \(width)x\(height) stream has no sequence header")
            }
        }
        let meta = VideoPacketMetadata(codec: codec!, keyframe: keyframe, width: width, height: height,
                                       monitor: monitor, monitorName: monitorName, x: x, y: y, captureTimeMs: time,
                                       streamID: streamID, packetIndex: nextIndex, groupStart: groupStart)
        nextIndex += 1
        lastTimeMs = time
        return (meta, bytes)
    }
}

extension VideoPacketMetadata {
    /// A 64-bit id of this packet's group of pictures, the same for every packet of the group
    /// and (with 2⁶⁴ random stream ids) different between groups: the first 16 hex digits of
    /// `streamID` plus `groupStart`. The spool evicts by it (docs/SPOOL.md).
    public var groupID: Int64 {
        let high = UInt64(streamID.prefix(16), radix: 16) ?? 0
        return Int64(bitPattern: high &+ UInt64(groupStart))
    }
}
