import AdminAuth
import ArgumentParser
import Collector
import CollectorStorage
import CustosBase
import Foundation
import Logging

/// `custos dashboard --db COPY [--db-blob-dir DIR] --dashboard-dir DIR [--listen 127.0.0.1:PORT]`: the reviewer's
/// dashboard served on this machine from a copy of the collector's database, with the pages of
/// this machine's own installed package (docs/ADMIN.md "Local dashboard"). A compromised
/// collector could serve a page that steals the passphrase; here the page comes from the
/// reviewer's own files, and only 127.0.0.1 (or ::1) is served.
public struct DashboardCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "dashboard",
        abstract: "Serve the dashboard on 127.0.0.1 from a copy of the collector database (pages from this machine's own files).",
        discussion: """
            Log in with an account of the copy (custos admins add), or with --one-time-login, which adds a \
            decryptor account with a random password to the copy, prints both, and removes it when the \
            dashboard stops. Without --tls-cert/--tls-key a self-signed certificate for 127.0.0.1 is made \
            with the openssl command (valid one day; its path is printed, to trust it in the browser). \
            Stops on Ctrl-C or SIGTERM.
            """
    )

    @OptionGroup var database: DatabaseOptions
    @Option(help: dbBlobDirHelp)
    var dbBlobDir: String?
    @Option(help: ArgumentHelp("Loopback address and port to serve (127.0.0.1:PORT or [::1]:PORT; port 0 picks one).",
                               valueName: "host:port"))
    var listen = "127.0.0.1:8444"
    @Option(help: ArgumentHelp("The dashboard's static files (e.g. /usr/share/custos/dashboard).", valueName: "dir"))
    var dashboardDir: String
    @Option(help: ArgumentHelp("PEM certificate chain to serve; default: a self-signed one made now.", valueName: "file"))
    var tlsCert: String?
    @Option(help: ArgumentHelp("PEM private key of --tls-cert.", valueName: "file"))
    var tlsKey: String?
    @Option(help: ArgumentHelp("The collector's own KEK private key (server-private-key-file), for items of enable-encryption=0 agents.",
                               valueName: "file"))
    var serverPrivateKeyFile: String?
    @Flag(help: "Add a one-time decryptor account with a random password (printed), removed when the dashboard stops.")
    var oneTimeLogin = false

    public init() {}

    public func validate() throws {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--listen \(SafeText.quoted(listen)): expected 127.0.0.1:PORT or [::1]:PORT")
        }
        let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard ["127.0.0.1", "::1"].contains(host) else {
            throw ValidationError("--listen \(SafeText.quoted(listen)): the local dashboard serves the loopback address only (127.0.0.1 or [::1])")
        }
        try validateBlobDirectoryOption(dbBlobDir, "--db-blob-dir", for: try database.location())
        guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dashboardDir, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ValidationError("--dashboard-dir \(SafeText.quoted(dashboardDir)): not a directory")
        }
    }

    public func run() async throws {
        let colon = listen.lastIndex(of: ":")!
        let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        let port = Int(listen[listen.index(after: colon)...])!
        var temporary: String?
        defer { if let temporary { try? FileManager.default.removeItem(atPath: temporary) } }
        var logger = Logger(label: "custos.dashboard") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .notice
        let oneTime = oneTimeLogin
        let actor = loginUser()
        let location = try database.location()
        try await withStorage(location, createIfMissing: false, blobDirectory: dbBlobDir) { storage in
            // Before anything is served: a copy whose large blobs are in blob files needs their directory.
            try await checkBlobDirectory(storage, name: location.shown, option: "--db-blob-dir")
            // The certificate once the database is known to be usable (a wrong --db makes none).
            let (cert, key): (String, String)
            if let tlsCert, let tlsKey {
                (cert, key) = (tlsCert, tlsKey)
            } else {
                let dir = try Self.temporaryDirectory()
                temporary = dir
                (cert, key) = try Self.selfSignedCertificate(in: dir)
                printError("certificate: \(cert) (self-signed for 127.0.0.1 and localhost, valid one day; trust it in the browser for this session)")
            }
            let settings = AdminListenerConfiguration(host: host, port: port, tlsCertFile: cert, tlsKeyFile: key,
                                                      dashboardDirectory: dashboardDir, serverPrivateKeyFile: serverPrivateKeyFile)
            var added: AdminName?
            if oneTime {
                let name = try AdminName("local-" + String(AgentToken.new().revealed.filter { $0.isLetter || $0.isNumber }.prefix(8)))
                let password = String(AgentToken.new().revealed.prefix(24))
                let hash = await AdminPassword.hash(Secret(password))
                try await storageCall { () throws(StorageError) in
                    try await storage.addAdmin(AdminAccount(name: name, role: .decryptor, passwordHash: hash, totpSecret: nil,
                                                            createdAtMs: Int64(Date().timeIntervalSince1970 * 1000)))
                }
                _ = try? await storage.appendAudit(actor: actor, action: "admins.add", detail: "name=\(name) role=decryptor one-time (custos dashboard)")
                added = name
                printOut("login: \(name)")
                printOut("password: \(password)")
            }
            do {
                try await LocalDashboard.run(storage: storage, configuration: settings, logger: logger) { bound in
                    printOut("dashboard: https://\(host.contains(":") ? "[\(host)]" : host):\(bound)/")
                }
            } catch {
                if let added { _ = try? await storage.removeAdmin(added) }
                throw error
            }
            if let added {
                _ = try? await storage.removeAdmin(added)
                _ = try? await storage.appendAudit(actor: actor, action: "admins.remove", detail: "name=\(added) one-time (custos dashboard)")
            }
        }
    }

    /// A new directory only this user can enter.
    static func temporaryDirectory() throws -> String {
        var template = Array((URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("custos-dashboard-XXXXXX").path).utf8CString)
        guard let made = mkdtemp(&template) else { throw CLIError("cannot make a temporary directory: \(String(cString: strerror(errno)))") }
        return String(cString: made)
    }

    /// A self-signed P-256 certificate for 127.0.0.1, ::1 and localhost, valid one day, made by
    /// the `openssl` command (no hand-made X.509).
    static func selfSignedCertificate(in dir: String) throws -> (cert: String, key: String) {
        let cert = dir + "/cert.pem", key = dir + "/key.pem"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                             "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
                             "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { throw CLIError("cannot run openssl to make a certificate (give --tls-cert and --tls-key): \(error)") }
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw CLIError("openssl could not make a certificate (exit \(process.terminationStatus)); give --tls-cert and --tls-key")
        }
        return (cert, key)
    }
}
