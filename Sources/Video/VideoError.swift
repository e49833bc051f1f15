/// Errors of the video encoder and decoder. `description` names the operation, the frame or
/// packet involved and the codec library's own detail (`aom_codec_error_detail`); never pixels.
public struct VideoError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Code: Sendable, Equatable {
        /// A size, layout or setting the codec cannot take (odd input, zero size, too large).
        case invalidArgument
        /// The codec library failed (initialisation, encode, decode).
        case codec
        /// A packet could not be decoded (corrupt, truncated, or not AV1).
        case corruptPacket
    }

    public let code: Code
    public let description: String

    public init(_ code: Code, _ description: String) {
        self.code = code
        self.description = description
    }
}
