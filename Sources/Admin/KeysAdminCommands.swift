import ArgumentParser
import CollectorStorage
import CustosBase
import Envelope
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `custos keys generate --out DIR`: a new KEK pair, as `openssl genrsa -aes256` +
/// `openssl rsa -pubout` would make it.
public struct KeysGenerateCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate an RSA KEK pair: DIR/keypair.pem (PKCS#8, AES-256, passphrase) and DIR/publickey.crt.",
        discussion: """
            The passphrase is asked twice on the terminal without echo, or read from --passphrase-file \
            (first line; '-' = standard input). It is never a command-line argument. keypair.pem gets \
            mode 0440, publickey.crt 0444; existing files are never overwritten. Prints the KEK id.
            """
    )

    @Option(help: "Directory for keypair.pem and publickey.crt (created if missing).")
    var out: String

    @Option(help: "RSA modulus size in bits: 2048, 3072 or 4096.")
    var bits: Int = 2048

    @Option(help: "File whose first line is the passphrase; '-' reads standard input.")
    var passphraseFile: String?

    @Option(help: "Group to own both files (e.g. prod).")
    var group: String?

    @Option(help: "User to own both files (needs root).")
    var owner: String?

    public init() {}

    public func run() async throws {
        let passphrase: SecretBytes
        if let passphraseFile {
            passphrase = try Passphrase.read(file: passphraseFile)
        } else {
            let first = try Passphrase.promptTerminal("New passphrase for \(out)/\(KeyFiles.privateName): ")
            let second = try Passphrase.promptTerminal("Repeat the passphrase: ")
            let same = first.count == second.count && first.withUnsafeBytes { a in
                second.withUnsafeBytes { b in zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0 }
            }
            second.wipe()
            guard same else {
                first.wipe()
                throw AdminError(.usage, "the two passphrases differ; nothing was written")
            }
            passphrase = first
        }
        let pair = try KeyFiles.generate(in: out, bits: bits, passphrase: passphrase, group: group, owner: owner)
        printError("wrote \(out)/\(KeyFiles.privateName) (\(pair.bits)-bit RSA, PKCS#8 AES-256-CBC, mode 0440) and \(out)/\(KeyFiles.publicName) (mode 0444)")
        printOut(pair.id.hex)
    }
}

/// `custos keys register --db collector.db --public publickey.crt --private keypair.pem`.
public struct KeysRegisterCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "register",
        abstract: "Insert an encryption_kek row for a key pair (what the seed's SQL insert does, plus the public key itself); prints the KEK id.",
        discussion: """
            The row holds the public key PEM (pub_pem), so a collector on another host needs no file, and \
            the paths, stored absolute. The private key is never read beyond its PEM header. A SQLite \
            database is created if missing.
            """
    )

    @OptionGroup var database: DatabaseOptions

    @Option(name: .customLong("public"), help: "Public key PEM (publickey.crt).")
    var publicKey: String

    @Option(name: .customLong("private"), help: "Private key PEM (keypair.pem); stored as a path only.")
    var privateKey: String?

    @Flag(help: "Register the row as inactive (the collector refuses uploads for it until activated).")
    var inactive = false

    public init() {}

    public func run() async throws {
        let (row, id) = try await withStorage(try database.location(), createIfMissing: true) { storage in
            try await KEKRows.register(storage, publicKey: publicKey, privateKey: privateKey, active: !inactive)
        }
        printError("registered KEK \(id) as encryption_kek row \(row)\(inactive ? " (inactive)" : "")")
        printOut(id)
    }
}

/// `custos keys list --db collector.db`.
public struct KeysListCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Show the encryption_kek rows: id, active, KEK id, where the public key is, files and whether each is readable."
    )

    @OptionGroup var database: DatabaseOptions

    public init() {}

    public func run() async throws {
        let rows = try await withStorage(try database.location(), createIfMissing: false) { storage in
            try await storageCall { () throws(StorageError) in try await storage.keks() }
        }
        Console.out(KEKRows.table(rows))
    }
}

/// KEK rows: registration and listing.
public enum KEKRows {
    /// Validates the public key, inserts the row (public key PEM and paths), appends a
    /// `keys.register` audit record and returns (row id, KEK id hex).
    ///
    /// `priv_encrypted` is true unless the private PEM is readable and unencrypted.
    /// - Throws: `AdminError` `.invalidKey` (the public file is not a usable KEK), `.usage` (the
    ///   KEK id or public file is registered and active already), `.database`.
    public static func register(_ storage: any CollectorStorage, publicKey: String, privateKey: String?,
                                active: Bool = true) async throws -> (row: Int64, kekID: String) {
        let kek: KEKPublicKey
        do { kek = try KEKPublicKey(pemFile: publicKey) } catch let e as EnvelopeError {
            throw AdminError(e.code == .io ? .io : .invalidKey, e.message)
        }
        let pub = absolute(publicKey)
        let priv = privateKey.map(absolute)
        var encrypted = true
        if let priv, let text = try? String(contentsOfFile: priv, encoding: .utf8) {
            encrypted = text.contains("BEGIN ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED")
        } else if let priv, !FileManager.default.fileExists(atPath: priv) {
            throw AdminError(.io, "\(priv): private key file does not exist")
        }
        let pem = spkiPEM(kek.spkiDER)
        let rows = try await storageCall { () throws(StorageError) in try await storage.keks() }
        if let dup = rows.first(where: { $0.active && ($0.kekID == kek.id || $0.pubDatafile == pub) }) {
            throw AdminError(.usage, "KEK \(kek.id.hex) is already registered and active as encryption_kek row \(dup.rowID) (\(dup.pubDatafile ?? "public key in the row"))")
        }
        let registration = KEKRegistration(pubDatafile: pub, publicKeyPEM: pem, privDatafile: priv, privEncrypted: encrypted,
                                           active: active, kekID: kek.id)
        let row = try await audited(storage, action: "keys.register") {
            try await storageCall { () throws(StorageError) in try await storage.registerKEK(registration) }
        } detail: { row in
            "row=\(row) kek=\(kek.id.hex) active=\(active) public=\(pub) private=\(priv ?? "-")"
        }
        return (row, kek.id.hex)
    }

    /// The SubjectPublicKeyInfo DER as a `PUBLIC KEY` PEM (RFC 7468 §13: base64 in lines of 64).
    static func spkiPEM(_ der: Data) -> String {
        let b64 = Array(der.base64EncodedString())
        let lines = stride(from: 0, to: b64.count, by: 64).map { String(b64[$0..<min($0 + 64, b64.count)]) }
        return "-----BEGIN PUBLIC KEY-----\n" + lines.joined(separator: "\n") + "\n-----END PUBLIC KEY-----\n"
    }

    /// The `keys list` table. PUBLIC is the row's `pub_datafile` (or `-`), IN ROW whether it holds
    /// the public key PEM itself. KEK ids not recorded yet are computed from the row's PEM, else
    /// from the public file when it is readable. Paths and ids come from the database:
    /// `Console.table` escapes each cell.
    static func table(_ rows: [KEKRow]) -> TerminalText {
        var lines = [["ROW", "ACTIVE", "KEK ID", "IN ROW", "PUBLIC", "READABLE", "PRIVATE", "READABLE", "ENCRYPTED"]]
        for r in rows {
            let pubReadable = r.pubDatafile.map { access($0, R_OK) == 0 }
            let fromPEM = r.publicKeyPEM.flatMap { try? KEKPublicKey(pemRepresentation: $0, source: "row").id }
            let fromFile = pubReadable == true ? r.pubDatafile.flatMap { try? KEKPublicKey(pemFile: $0).id } : nil
            let id = (r.kekID ?? fromPEM ?? fromFile)?.hex ?? "?"
            let privReadable = r.privDatafile.map { access($0, R_OK) == 0 ? "yes" : "no" } ?? "-"
            lines.append(["\(r.rowID)", r.active ? "yes" : "no", id, r.publicKeyPEM != nil ? "yes" : "no", r.pubDatafile ?? "-",
                          pubReadable.map { $0 ? "yes" : "no" } ?? "-", r.privDatafile ?? "-", privReadable,
                          r.privEncrypted ? "yes" : "no"])
        }
        if rows.isEmpty { return Console.line("no encryption_kek rows") }
        return Console.table(lines)
    }

    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}

/// `custos agents …`.
public struct AgentsCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "agents",
        abstract: "Manage the agents allowed to upload to a collector.",
        subcommands: [AgentsAddCommand.self, AgentsListCommand.self]
    )
    public init() {}
}

/// `custos agents add --db collector.db --id ID`: prints the new agent's token.
public struct AgentsAddCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add an agent and print its new random token (stored only as a SHA-256 hash).",
        discussion: "Put the id and token into the agent's config.cfg as agent-id= and agent-token=. A SQLite database is created if missing."
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Agent id: 1-64 characters of A-Z a-z 0-9 . _ -, not '.' or '..'")
    var id: String

    public init() {}

    public func run() async throws {
        // The one agent-id validator (CustosBase.AgentID), before the database is touched.
        let agent: AgentID
        do { agent = try AgentID(id, field: "--id") } catch { throw AdminError(.usage, error.description) }
        // Best effort: the token exists only in this answer, so a failed audit append must not hide it.
        let token = try await withAuditedCall(try database.location(), createIfMissing: true, action: "agents.add", required: false) {
            storage in try await storageCall { () throws(StorageError) in try await storage.addAgent(agent) }
        } detail: { _ in "agent=\(agent)" }
        printError("agent \(id) added; its config.cfg needs agent-id=\(id) and agent-token=<the token below>")
        printOut(token.revealed)
    }
}
