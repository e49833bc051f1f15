import Foundation

/// Certificates for TLS tests, all made by the `openssl` CLI (P-256 keys, which are quick to make):
///
/// - a root CA → an intermediate CA → leaf certificates;
/// - `leaf`: for `localhost` and `127.0.0.1`, valid for a year;
/// - `expired`: same names, signed by the intermediate, already expired (`-days -1`);
/// - `wrongHost`: valid, but for `collector.invalid` only;
/// - `selfSigned`: a self-signed leaf for `localhost` and `127.0.0.1`;
/// - `other`: an unrelated self-signed certificate (a wrong pin).
///
/// Each leaf has a `*.chain.pem` (leaf then intermediate; the self-signed ones: just the leaf)
/// and a `*.key` in ``directory``.
public struct TestPKI: Sendable {
    public let directory: String
    public var rootCertificate: String { directory + "/root.pem" }
    public var intermediateCertificate: String { directory + "/intermediate.pem" }

    /// `NAME.pem`.
    public func certificate(_ name: String) -> String { directory + "/\(name).pem" }
    /// `NAME.chain.pem`: the chain a server presents, leaf first.
    public func chain(_ name: String) -> String { directory + "/\(name).chain.pem" }
    /// `NAME.key`: the private key (PEM, unencrypted).
    public func key(_ name: String) -> String { directory + "/\(name).key" }

    /// The `sha256/BASE64` SPKI pin of a PEM certificate, computed by the openssl CLI:
    /// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64`.
    public static func pin(ofCertificate path: String) throws -> String {
        let b64 = try runChecked(["sh", "-c",
            "openssl x509 -in '\(path)' -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64"])
        return "sha256/" + b64.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The pin of `NAME.pem`.
    public func pin(_ name: String) throws -> String { try Self.pin(ofCertificate: certificate(name)) }
}

/// Makes a ``TestPKI`` in a new folder under `parent` (about 0.3 s).
/// - Throws: when `openssl` is missing or fails.
public func makeTestPKI(in parent: String) throws -> TestPKI {
    try requireTool("openssl")
    let dir = parent + "/pki"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    func p(_ n: String) -> String { dir + "/" + n }
    func write(_ name: String, _ text: String) throws { try text.write(toFile: p(name), atomically: true, encoding: .utf8) }
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    try runChecked(["openssl", "req", "-x509"] + ec + ["-keyout", p("root.key"), "-out", p("root.pem"), "-days", "3650",
                    "-subj", "/CN=Custos Test Root", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    try runChecked(["openssl", "req"] + ec + ["-keyout", p("intermediate.key"), "-out", p("intermediate.csr"),
                    "-subj", "/CN=Custos Test Intermediate"])
    try write("ca.ext", "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n")
    try runChecked(["openssl", "x509", "-req", "-in", p("intermediate.csr"), "-CA", p("root.pem"), "-CAkey", p("root.key"),
                    "-set_serial", "2", "-out", p("intermediate.pem"), "-days", "3650", "-extfile", p("ca.ext")])

    func leaf(_ name: String, san: String, days: String) throws {
        try write("\(name).ext", "basicConstraints=CA:FALSE\nsubjectAltName=\(san)\nextendedKeyUsage=serverAuth\n")
        try runChecked(["openssl", "req"] + ec + ["-keyout", p("\(name).key"), "-out", p("\(name).csr"), "-subj", "/CN=\(name)"])
        try runChecked(["openssl", "x509", "-req", "-in", p("\(name).csr"), "-CA", p("intermediate.pem"),
                        "-CAkey", p("intermediate.key"), "-set_serial", "\(Int.random(in: 1000...1_000_000_000))",
                        "-out", p("\(name).pem"), "-days", days, "-extfile", p("\(name).ext")])
        let chain = try String(contentsOfFile: p("\(name).pem"), encoding: .utf8)
            + String(contentsOfFile: p("intermediate.pem"), encoding: .utf8)
        try write("\(name).chain.pem", chain)
    }
    try leaf("leaf", san: "DNS:localhost,IP:127.0.0.1", days: "365")
    try leaf("expired", san: "DNS:localhost,IP:127.0.0.1", days: "-1")
    try leaf("wrongHost", san: "DNS:collector.invalid", days: "365")

    func selfSigned(_ name: String) throws {
        try runChecked(["openssl", "req", "-x509"] + ec + ["-keyout", p("\(name).key"), "-out", p("\(name).pem"),
                        "-days", "365", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:FALSE",
                        "-addext", "extendedKeyUsage=serverAuth"])
        try FileManager.default.copyItem(atPath: p("\(name).pem"), toPath: p("\(name).chain.pem"))
    }
    try selfSigned("selfSigned")
    try selfSigned("other")
    return TestPKI(directory: dir)
}
