// All TLS policy of the agent's connection to the collector lives in this file:
// protocol versions, certificate chain/hostname/expiry verification and SPKI pinning.
//
// NIOSSL's `customVerificationCallback` replaces BoringSSL's own checks, so the callback below
// re-does them with system OpenSSL's X509_verify_cert (chain signatures, validity period,
// basic constraints, TLS server purpose, host name or IP address; man 3 X509_verify_cert,
// man 3 X509_VERIFY_PARAM_set1_host) and then checks the pins against the *verified* chain.

import COpenSSL
import Crypto
import CustosBase
import Foundation
import Logging
import NIOCore
import NIOSSL
import Synchronization

/// Computing pins (the type and its `sha256/BASE64` parser live in CustosBase).
extension SPKIPin {
    /// The pin of a DER SubjectPublicKeyInfo.
    public init(spkiDER: some DataProtocol) {
        self.init(digest: Array(SHA256.hash(data: Array(spkiDER))))
    }

    /// The pin of a certificate's public key.
    public init(certificate: NIOSSLCertificate) throws {
        self.init(spkiDER: try certificate.extractPublicKey().toSPKIBytes())
    }
}

/// How the agent decides to trust the collector (config keys `server-pin`, `server-ca`).
///
/// - With pins: the presented certificates whose key matches a pin become trust anchors (so a
///   self-signed certificate is trusted only through its pin), together with the `server-ca`
///   certificates if given; the chain must verify up to one of them and a pinned key must be in
///   the verified chain.
/// - Without pins: the chain must verify to `server-ca` if given, else to the system trust store.
/// - Always: TLS 1.2 or newer, host name (or IP address) and validity period checked.
public struct TLSPolicy: Sendable {
    /// Accepted SPKI pins (current and backup, RFC 7469 §4.3). Empty: no pinning.
    public var pins: [SPKIPin]
    /// DER certificates of a private CA (`server-ca`), may be empty.
    public var caCertificatesDER: [[UInt8]]

    public init(pins: [SPKIPin] = [], caCertificatesDER: [[UInt8]] = []) {
        self.pins = pins
        self.caCertificatesDER = caCertificatesDER
    }

    /// Builds the policy from config values: validated `server-pin`s and an optional `server-ca` PEM file path.
    /// - Throws: ``TransportError`` (`.configuration`) for an unreadable CA file or one without a certificate.
    public init(pins: [SPKIPin], caFile: String?) throws(TransportError) {
        var ders: [[UInt8]] = []
        if let caFile {
            let shown = SafeText.quoted(caFile)
            // The file's own problem first (NIOSSL reports only "failedToLoadCertificate").
            let bytes: Data
            do { bytes = try Data(contentsOf: URL(fileURLWithPath: caFile)) } catch {
                let reason = ((error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError).map { String(cString: strerror(Int32($0.code))) }
                throw TransportError(.configuration, "server-ca \(shown): cannot be read (\(reason ?? "\(error)"))")
            }
            do {
                for c in try NIOSSLCertificate.fromPEMBytes(Array(bytes)) { ders.append(try c.toDERBytes()) }
            } catch {
                throw TransportError(.configuration, "server-ca \(shown): expected PEM certificates (-----BEGIN CERTIFICATE-----), "
                                     + "found none that parse (\(error))")
            }
            if ders.isEmpty { throw TransportError(.configuration, "server-ca \(shown): no certificate found") }
        }
        self.init(pins: pins, caCertificatesDER: ders)
    }

    /// The NIOSSL client configuration: TLS 1.2 minimum, 1.3 preferred. Certificate checks are
    /// done by ``PeerVerifier`` through the custom verification callback.
    func makeClientTLSConfiguration() -> TLSConfiguration {
        var c = TLSConfiguration.makeClientConfiguration()
        c.minimumTLSVersion = .tlsv12
        c.maximumTLSVersion = .tlsv13
        // Must stay a verifying mode: with `.none` the custom callback would never run.
        c.certificateVerification = .fullVerification
        // How long a closing connection waits for the peer's close_notify (in the background;
        // nothing awaits it). NIOSSL's default is 5 s.
        c.shutdownTimeout = .seconds(1)
        return c
    }
}

/// The result of checking one presented chain.
struct PeerVerdict: Sendable {
    var accepted: Bool
    /// Pins of the presented certificates, leaf first (for the log and the error).
    var presentedPins: [String]
    /// Why the chain was refused.
    var reason: String
}

/// Runs ``TLSPolicy`` on the chain a server presents. One per connection attempt; the verdict is
/// kept so the connecting code can name the reason after NIOSSL reports a generic handshake failure.
final class PeerVerifier: Sendable {
    let policy: TLSPolicy
    let host: String
    let verdict = Mutex<PeerVerdict?>(nil)

    init(policy: TLSPolicy, host: String) {
        self.policy = policy
        self.host = host
    }

    /// Checks `presented` (leaf first, as sent by the server) against the policy at `now`.
    func verify(_ presented: [NIOSSLCertificate], now: Date = Date()) -> NIOSSLVerificationResult {
        let v = evaluate(presented, now: now)
        verdict.withLock { $0 = v }
        return v.accepted ? .certificateVerified : .failed
    }

    private func evaluate(_ presented: [NIOSSLCertificate], now: Date) -> PeerVerdict {
        guard !presented.isEmpty else {
            return PeerVerdict(accepted: false, presentedPins: [], reason: "server presented no certificate")
        }
        var ders: [[UInt8]] = []
        var pins: [SPKIPin] = []
        do {
            for c in presented {
                ders.append(try c.toDERBytes())
                pins.append(try SPKIPin(certificate: c))
            }
        } catch {
            return PeerVerdict(accepted: false, presentedPins: pins.map(\.description),
                               reason: "cannot read a presented certificate: \(error)")
        }
        let presentedPins = pins.map(\.description)
        func refuse(_ reason: String) -> PeerVerdict {
            PeerVerdict(accepted: false, presentedPins: presentedPins, reason: reason)
        }
        let pinSet = Set(policy.pins)
        var anchors = policy.caCertificatesDER
        if !pinSet.isEmpty {
            let pinned = presented.indices.filter { pinSet.contains(pins[$0]) }
            // A pinned root the server does not send can come from `server-ca`.
            let caPinned = policy.caCertificatesDER.contains { der in
                (try? SPKIPin(certificate: NIOSSLCertificate(bytes: der, format: .der))).map(pinSet.contains) ?? false
            }
            if pinned.isEmpty && !caPinned {
                return refuse("no presented certificate matches a configured server-pin")
            }
            anchors.append(contentsOf: pinned.map { ders[$0] })
        }
        let chain: [[UInt8]]
        do {
            let verifier = try OpenSSLChainVerifier(leaf: ders[0], intermediates: Array(ders.dropFirst()),
                                                    anchors: anchors, useSystemRoots: anchors.isEmpty)
            chain = try verifier.verify(host: host, at: now)
        } catch {
            return refuse("\(error)")
        }
        // Validity again on the verified chain, anchor included (OpenSSL may skip the trust anchor).
        let nowSeconds = Int(now.timeIntervalSince1970)
        for der in chain {
            guard let cert = try? NIOSSLCertificate(bytes: der, format: .der) else {
                return refuse("cannot re-read a verified certificate")
            }
            if nowSeconds > Int(cert.notValidAfter) { return refuse("certificate has expired") }
            if nowSeconds < Int(cert.notValidBefore) { return refuse("certificate is not yet valid") }
        }
        if !pinSet.isEmpty {
            let chainPins = chain.map { SPKIPin(spkiDER: (try? NIOSSLCertificate(bytes: $0, format: .der)
                .extractPublicKey().toSPKIBytes()) ?? []) }
            guard chainPins.contains(where: pinSet.contains) else {
                return refuse("no certificate of the verified chain matches a configured server-pin")
            }
        }
        return PeerVerdict(accepted: true, presentedPins: presentedPins, reason: "")
    }
}

/// Error out of ``OpenSSLChainVerifier``; `description` is OpenSSL's verify error text.
struct ChainVerificationError: Error, CustomStringConvertible {
    var description: String
}

/// One chain verification with system OpenSSL. Owns every OpenSSL object it creates
/// (certificates, store, stack, context) and frees them in `deinit`. Not shared across threads.
private final class OpenSSLChainVerifier {
    private var certificates: [OpaquePointer] = []  // X509*, freed in deinit
    private let store: OpaquePointer                 // X509_STORE*
    private let untrusted: OpaquePointer             // STACK_OF(X509)* (holds X509* owned by `certificates`)
    private let context: OpaquePointer               // X509_STORE_CTX*
    private var leaf: OpaquePointer?

    init(leaf leafDER: [UInt8], intermediates: [[UInt8]], anchors: [[UInt8]], useSystemRoots: Bool) throws {
        let store = X509_STORE_new(), stack = OPENSSL_sk_new_null(), ctx = X509_STORE_CTX_new()
        guard let store, let stack, let ctx else {
            X509_STORE_CTX_free(ctx)
            OPENSSL_sk_free(stack)
            X509_STORE_free(store)
            throw ChainVerificationError(description: "OpenSSL allocation failed")
        }
        self.store = store
        self.untrusted = stack
        self.context = ctx
        leaf = try parse(leafDER)
        for der in intermediates { OPENSSL_sk_push(stack, UnsafeRawPointer(try parse(der))) }
        for der in anchors { X509_STORE_add_cert(store, try parse(der)) }  // the store takes its own reference
        if useSystemRoots { X509_STORE_set_default_paths(store) }
        X509_STORE_set_flags(store, UInt(X509_V_FLAG_PARTIAL_CHAIN))
    }

    /// Parses one DER certificate; the result is owned by `certificates`.
    private func parse(_ der: [UInt8]) throws -> OpaquePointer {
        let x: OpaquePointer? = der.withUnsafeBufferPointer { buf in
            var p: UnsafePointer<UInt8>? = buf.baseAddress
            return d2i_X509(nil, &p, buf.count)
        }
        guard let x else { throw ChainVerificationError(description: "certificate DER does not parse") }
        certificates.append(x)
        return x
    }

    deinit {
        X509_STORE_CTX_free(context)
        OPENSSL_sk_free(untrusted)
        X509_STORE_free(store)
        for c in certificates { X509_free(c) }
    }

    /// Verifies the leaf for `host` (a DNS name or an IP address literal) at time `at`.
    /// - Returns: the verified chain as DER, leaf first, trust anchor last.
    func verify(host: String, at: Date) throws(ChainVerificationError) -> [[UInt8]] {
        guard X509_STORE_CTX_init(context, store, leaf, untrusted) == 1 else {
            throw ChainVerificationError(description: "X509_STORE_CTX_init failed")
        }
        let param = X509_STORE_CTX_get0_param(context)
        let isIP = host.contains(":") || host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." }
        let hostOK = isIP ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
                          : X509_VERIFY_PARAM_set1_host(param, host, host.utf8.count)
        guard hostOK == 1 else { throw ChainVerificationError(description: "cannot use '\(host)' as a host name") }
        X509_VERIFY_PARAM_set_time(param, time_t(at.timeIntervalSince1970))
        X509_STORE_CTX_set_purpose(context, 2)  // X509_PURPOSE_SSL_SERVER (openssl/x509v3.h)
        guard X509_verify_cert(context) == 1 else {
            let code = X509_STORE_CTX_get_error(context)
            let text = String(cString: X509_verify_cert_error_string(Int(code)))
            throw ChainVerificationError(description: "certificate verification failed: \(text) (X509_V_ERR \(code))")
        }
        guard let chain = X509_STORE_CTX_get0_chain(context) else {
            throw ChainVerificationError(description: "no verified chain")
        }
        var out: [[UInt8]] = []
        for i in 0..<OPENSSL_sk_num(chain) {
            let x = OpaquePointer(OPENSSL_sk_value(chain, i))
            let n = i2d_X509(x, nil)
            guard n > 0 else { throw ChainVerificationError(description: "cannot encode a verified certificate") }
            var der = [UInt8](repeating: 0, count: Int(n))
            der.withUnsafeMutableBufferPointer { buf in
                var p: UnsafeMutablePointer<UInt8>? = buf.baseAddress
                _ = i2d_X509(x, &p)
            }
            out.append(der)
        }
        return out
    }
}
