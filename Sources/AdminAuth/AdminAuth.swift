import CollectorStorage
import Crypto
import CustosBase
import Dispatch
import Foundation
import HummingbirdBcrypt
import HummingbirdOTP

/// Dashboard account passwords: the one rule (``check(_:field:)``) and bcrypt through
/// HummingbirdBcrypt (OpenBSD's bcrypt, `$2b$`, cost ``cost``). Hashing and verifying take about
/// a quarter of a second each at cost 12, so both run on a Dispatch thread, never on the Swift
/// concurrency pool (two threads on a 2-core machine).
public enum AdminPassword {
    /// Shortest password accepted, in characters.
    public static let minCharacters = 12
    /// Longest password accepted, in UTF-8 bytes: bcrypt reads no more than 72, so a longer one
    /// would be cut without a word.
    public static let maxBytes = 72
    /// bcrypt's cost (log2 of the rounds).
    public static let cost: UInt8 = 12

    /// - Throws: ``ValueError`` naming `field` when the password is shorter than
    ///   ``minCharacters``, longer than ``maxBytes`` or holds a control character. The password
    ///   itself is never quoted.
    public static func check(_ password: Secret, field: String = "password") throws(ValueError) {
        let text = password.revealed
        guard text.count >= minCharacters else {
            throw ValueError(field: field, "expected at least \(minCharacters) characters, found \(text.count)")
        }
        guard text.utf8.count <= maxBytes else {
            throw ValueError(field: field, "expected at most \(maxBytes) bytes (bcrypt reads no more), found \(text.utf8.count)")
        }
        guard !text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw ValueError(field: field, "holds a control character; expected printable text")
        }
    }

    /// The bcrypt hash of `password` (60 characters, a random salt each time).
    public static func hash(_ password: Secret) async -> String {
        await hash(password, cost: cost)
    }

    /// ``hash(_:)`` at another cost (4...31): tests make their accounts at cost 4, so a login
    /// takes milliseconds in a debug build; ``verify(_:hash:)`` reads the cost from the hash.
    package static func hash(_ password: Secret, cost: UInt8) async -> String {
        await offPool { Bcrypt.hash(password.revealed, cost: cost) }
    }

    /// Whether `password` matches `hash`; a `hash` that is not bcrypt never matches.
    public static func verify(_ password: Secret, hash: String) async -> Bool {
        await offPool { Bcrypt.verify(password.revealed, hash: hash) }
    }

    /// A hash of a random password, made once: a login with an unknown name is checked against
    /// it, so it takes as long as one with a wrong password.
    public static let dummyHash: String = Bcrypt.hash(AgentToken.new().revealed, cost: cost)

    private static func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { c in DispatchQueue.global().async { c.resume(returning: body()) } }
    }
}

/// Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits; what authenticator
/// apps expect) through HummingbirdOTP. A secret is 32 characters of the RFC 4648 base32
/// alphabet made from the system's CSPRNG (160 bits); HummingbirdOTP keys the HMAC with the
/// secret's UTF-8 bytes, and the `otpauth://` URI carries those bytes in base32.
public enum AdminTOTP {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")

    /// A new random secret.
    public static func newSecret() -> String {
        let key = SymmetricKey(size: .bits256)
        return key.withUnsafeBytes { bytes in String(bytes.prefix(32).map { alphabet[Int($0) & 31] }) }
    }

    /// The `otpauth://totp/Custos:NAME?secret=…&issuer=Custos` URI an authenticator app reads
    /// (Google Authenticator's Key Uri Format).
    public static func uri(secret: String, name: AdminName) -> String {
        TOTP(secret: secret).createAuthenticatorURL(label: "Custos:\(name.rawValue)", issuer: "Custos")
    }

    /// The key as typed into an authenticator app by hand: the base32 of the secret's bytes.
    public static func base32Key(secret: String) -> String {
        let uri = uri(secret: secret, name: try! AdminName("x"))
        guard let start = uri.range(of: "secret=")?.upperBound else { return "" }
        return String(uri[start...].prefix { $0 != "&" })
    }

    /// The RFC 6238 time step of `date`: whole 30-second periods since 1970 (the counter the
    /// code is computed from).
    public static func step(at date: Date) -> Int64 { Int64((date.timeIntervalSince1970 / 30).rounded(.down)) }

    /// The time step whose code `code` (6 digits) is: the step of `date`, or the one before or
    /// after (a clock up to 30 s off), compared in constant time (all three are computed); nil
    /// when it is none of them. The caller accepts a step once
    /// (`AdminAccountStore.acceptTOTPStep`), so a code cannot be used twice.
    public static func matchingStep(code: String, secret: String, at date: Date = Date()) -> Int64? {
        guard code.utf8.count == 6, code.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        let totp = TOTP(secret: secret)
        var match: Int64?
        for offset in [-30.0, 0, 30] {
            let at = date.addingTimeInterval(offset)
            let expected = String(format: "%06d", totp.compute(date: at))
            if constantTimeEqual(Array(expected.utf8), Array(code.utf8)) { match = step(at: at) }
        }
        return match
    }

    /// The code of `secret` at `date` (for tests and `custos admins add --totp`'s check).
    public static func code(secret: String, at date: Date = Date()) -> String {
        String(format: "%06d", TOTP(secret: secret).compute(date: date))
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

