// custos-bench-envelope: Custos seal throughput and RSA wrap/unwrap rates, each against
// `openssl speed` measured in the same run on the same machine. Build it in release mode
// (Benchmarks/envelope.sh does). Prints medians and the ratios.
//
// Usage: custos-bench-envelope [--samples N] [--keys DIR]
//   --keys DIR   folder with publickey.crt and keypair-pkcs1-plain.pem (default: the test fixtures)
import Envelope
import Foundation

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("custos-bench-envelope: \(message)\n".utf8))
    exit(2)
}

/// Runs a command and returns its standard output.
func run(_ args: [String]) -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { fail("cannot run \(args[0]): \(error)") }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { fail("\(args.joined(separator: " ")) exited \(p.terminationStatus)") }
    return String(decoding: data, as: UTF8.self)
}

/// `openssl speed -evp aes-256-gcm -bytes 1048576`: bytes per second.
func opensslGCM(seconds: Int) -> Double {
    let out = run(["openssl", "speed", "-seconds", String(seconds), "-evp", "aes-256-gcm", "-bytes", "1048576"])
    // Last line: "AES-256-GCM    3312345.67k" (k = 1000 bytes per second).
    guard let line = out.split(separator: "\n").last(where: { $0.lowercased().hasPrefix("aes-256-gcm") }),
          let field = line.split(separator: " ").last, field.hasSuffix("k"),
          let k = Double(field.dropLast()) else { fail("cannot parse openssl speed output:\n\(out)") }
    return k * 1000
}

/// `openssl speed rsa2048`: (private-key ops/s, public-key ops/s) = (sign/s, verify/s).
func opensslRSA(seconds: Int) -> (priv: Double, pub: Double) {
    let out = run(["openssl", "speed", "-seconds", String(seconds), "rsa2048"])
    // "rsa 2048 bits 0.000641s 0.000019s   1560.9  52631.6"
    guard let line = out.split(separator: "\n").last(where: { $0.hasPrefix("rsa 2048 bits") }) else {
        fail("cannot parse openssl speed rsa2048 output:\n\(out)")
    }
    let nums = line.split(separator: " ").compactMap { Double($0) }
    guard nums.count >= 3 else { fail("cannot parse: \(line)") }
    return (nums[nums.count - 2], nums[nums.count - 1])
}

var samples = 7
var keyDir: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path + "/Tests/EnvelopeTests/Fixtures"
}()
var argv = CommandLine.arguments.dropFirst()
while let a = argv.popFirst() {
    switch a {
    case "--samples": samples = Int(argv.popFirst() ?? "") ?? samples
    case "--keys": keyDir = argv.popFirst() ?? keyDir
    default: fail("unknown argument \(a)")
    }
}

let kek: KEKPublicKey
let privateKey: KEKPrivateKey
do {
    kek = try KEKPublicKey(pemFile: keyDir + "/publickey.crt")
    privateKey = try KEKPrivateKey(pemFile: keyDir + "/keypair-pkcs1-plain.pem", passphrase: nil)
} catch { fail("\(error)") }

let session = try DEKSession(kek: kek, agentID: "bench")
let mib = 1 << 20
let plaintext = Data((0..<mib).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) })

// Check the thing we time actually round-trips.
let check = try session.seal(plaintext, kind: .screen, captureTimeMs: 0)
guard try privateKey.unwrap(session.record).open(check) == plaintext else { fail("round trip failed") }

func minorFaults() -> Int {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return u.ru_minflt
}

var faultsPerSeal: [Double] = []
@MainActor func sealRate() throws -> Double {
    let iterations = 300
    let f0 = minorFaults()
    let t0 = now()
    for i in 0..<iterations { _ = try session.seal(plaintext, kind: .screen, captureTimeMs: Int64(i)) }
    let rate = Double(iterations * mib) / (Double(now() - t0) / 1e9)
    faultsPerSeal.append(Double(minorFaults() - f0) / Double(iterations))
    return rate
}

func wrapRate() throws -> Double {
    let iterations = 2000
    let t0 = now()
    for _ in 0..<iterations { _ = try DEKSession(kek: kek, agentID: "bench") }
    return Double(iterations) / (Double(now() - t0) / 1e9)
}

let records = try (0..<64).map { _ in try DEKSession(kek: kek, agentID: "bench").record }
func unwrapRate() throws -> Double {
    let iterations = 400
    let t0 = now()
    for i in 0..<iterations { _ = try privateKey.unwrap(records[i % records.count]) }
    return Double(iterations) / (Double(now() - t0) / 1e9)
}

print("custos-bench-envelope: \(samples) samples each, interleaved with openssl speed (OpenSSL \(run(["openssl", "version"]).trimmingCharacters(in: .whitespacesAndNewlines)))")
for i in 0..<100 { _ = try session.seal(plaintext, kind: .screen, captureTimeMs: Int64(i)) }  // warm-up
var seal: [Double] = [], gcm: [Double] = []
var wrap: [Double] = [], unwrap: [Double] = [], rsaPub: [Double] = [], rsaPriv: [Double] = []
for s in 0..<samples {
    seal.append(try sealRate())
    gcm.append(opensslGCM(seconds: 1))
    wrap.append(try wrapRate())
    unwrap.append(try unwrapRate())
    let r = opensslRSA(seconds: 1)
    rsaPriv.append(r.priv)
    rsaPub.append(r.pub)
    print(String(format: "  sample %d: seal %.0f MB/s (%.0f page faults/seal) (openssl %.0f MB/s), wrap %.0f/s (verify %.0f/s), unwrap %.0f/s (sign %.0f/s)",
                 s + 1, seal.last! / 1e6, faultsPerSeal.last!, gcm.last! / 1e6, wrap.last!, rsaPub.last!, unwrap.last!, rsaPriv.last!))
}
let sealRatio = median(seal) / median(gcm)
print(String(format: "seal 1 MiB blobs:   custos %.0f MB/s, openssl speed -evp aes-256-gcm -bytes 1048576 %.0f MB/s, ratio %.2f (goal >= 0.90)",
             median(seal) / 1e6, median(gcm) / 1e6, sealRatio))
print(String(format: "wrap (new DEK):     custos %.0f/s, openssl speed rsa2048 public-key ops %.0f/s, ratio %.2f",
             median(wrap), median(rsaPub), median(wrap) / median(rsaPub)))
print(String(format: "unwrap (+commit):   custos %.0f/s, openssl speed rsa2048 private-key ops %.0f/s, ratio %.2f",
             median(unwrap), median(rsaPriv), median(unwrap) / median(rsaPriv)))
print(String(format: "SEAL_RATIO=%.2f", sealRatio))

// Breakdown (diagnostics): where the time goes, to compare with the totals above.
import Crypto
import _CryptoExtras
do {
    func perSecond(_ name: String, _ iterations: Int, _ body: () throws -> Void) rethrows {
        let t0 = now()
        for _ in 0..<iterations { try body() }
        print(String(format: "  %@: %.0f/s", name, Double(iterations) / (Double(now() - t0) / 1e9)))
    }
    print("breakdown:")
    perSecond("SecretBytes.random(count: 32) (mmap + mlock + munmap)", 5000) { _ = SecretBytes.random(count: 32) }
    let rsaPub = try _RSA.Encryption.PublicKey(pemRepresentation: String(contentsOfFile: keyDir + "/publickey.crt", encoding: .utf8))
    let rsaPriv = try _RSA.Encryption.PrivateKey(pemRepresentation: String(contentsOfFile: keyDir + "/keypair-pkcs1-plain.pem", encoding: .utf8))
    let dek = Data(count: 32)
    try perSecond("swift-crypto RSA-OAEP-SHA256 encrypt", 2000) { _ = try rsaPub.encrypt(dek, padding: .PKCS1_OAEP_SHA256) }
    let wrapped = try rsaPub.encrypt(dek, padding: .PKCS1_OAEP_SHA256)
    try perSecond("swift-crypto RSA-OAEP-SHA256 decrypt", 300) { _ = try rsaPriv.decrypt(wrapped, padding: .PKCS1_OAEP_SHA256) }
    let key = SymmetricKey(size: .bits256)
    var rates: [Double] = []
    for _ in 0..<3 {
        let t0 = now()
        for _ in 0..<300 { _ = try AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(), authenticating: Data(count: 100)) }
        rates.append(Double(300 * mib) / (Double(now() - t0) / 1e9))
    }
    print(String(format: "  swift-crypto AES.GCM.seal 1 MiB (allocates its own buffers): %.0f MB/s", median(rates) / 1e6))
}
