import Crypto
import CustosBase
import Foundation

/// The agent token scheme of every backend: a token is 32 random bytes as base64url without
/// padding (43 characters, RFC 4648 §5); a backend stores only its SHA-256 (32 bytes, FIPS
/// 180-4) and compares digests in constant time. One scheme for all backends, so
/// `custos db migrate` carries stored hashes from SQLite to PostgreSQL unchanged.
public enum AgentToken {
    /// A new random token (swift-crypto's `SymmetricKey`, from the system's CSPRNG).
    public static func new() -> Secret {
        let key = SymmetricKey(size: .bits256)
        let b64 = key.withUnsafeBytes { Data($0).base64EncodedString() }
        return Secret(b64.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: ""))
    }

    /// The SHA-256 of the token's UTF-8 bytes: what a backend stores (32 bytes).
    public static func hash(_ token: Secret) -> Data { Data(SHA256.hash(data: Data(token.revealed.utf8))) }

    /// Whether `token` hashes to `storedHash`, compared in constant time (swift-crypto's
    /// `Digest ==`, `CRYPTO_memcmp`). An unknown agent (`storedHash` nil) is compared against a
    /// dummy digest, so both paths do the same work; the answer is then false.
    public static func matches(_ token: Secret, storedHash: Data?) -> Bool {
        let presented = SHA256.hash(data: Data(token.revealed.utf8))
        let expected = storedHash ?? Data(repeating: 0, count: SHA256Digest.byteCount)
        return (presented == expected) && storedHash != nil
    }
}
