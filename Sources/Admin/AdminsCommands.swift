import AdminAuth
import ArgumentParser
import CollectorStorage
import CustosBase
import Envelope
import Foundation

/// `custos admins …`: the reviewer's dashboard accounts (docs/ADMIN.md "Dashboard accounts").
/// Passwords are typed twice at a prompt without echo, or read from the first line of
/// `--password-file`; never a command-line argument. Each command appends an audit record
/// (`admins.add`, `admins.list`, `admins.remove`, `admins.set-role`, `admins.reset-password`).
public struct AdminsCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "admins",
        abstract: "Manage the dashboard's accounts (viewer, decryptor, auditor).",
        subcommands: [AdminsAddCommand.self, AdminsListCommand.self, AdminsRemoveCommand.self, AdminsSetRoleCommand.self,
                      AdminsResetPasswordCommand.self]
    )
    public init() {}
}

/// `--name` and its one validator.
struct AdminNameOption: ParsableArguments {
    @Option(help: ArgumentHelp("Account name: 1-64 of A-Z a-z 0-9 . _ - @.", valueName: "name"))
    var name: String

    func validate() throws { _ = try adminName() }

    func adminName() throws -> AdminName {
        do { return try AdminName(name, field: "--name") } catch { throw ValidationError(error.description) }
    }
}

/// `--role viewer|decryptor|auditor`.
extension AdminRole: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}

/// Reads a new password: the first line of `file` (`-` = standard input), or typed twice at the
/// terminal without echo. Checked by the one rule (``AdminPassword/check(_:field:)``).
/// - Throws: ``AdminError`` `.usage` (exit 2) when the two differ, the rule refuses it, or it
///   is not UTF-8 text; `CLIError` when the file cannot be read, others may read or write it
///   (``SecretFileMode``), or there is no terminal.
func readNewPassword(file: String?, for name: AdminName) throws -> Secret {
    let bytes: SecretBytes
    if let file {
        bytes = try Passphrase.read(file: file, noun: "password", privateFile: true)
    } else {
        let first = try Passphrase.promptTerminal("New password for \(name) (at least \(AdminPassword.minCharacters) characters): ", noun: "password")
        let second = try Passphrase.promptTerminal("Repeat the password: ", noun: "password")
        let same = first.count == second.count && first.withUnsafeBytes { a in
            second.withUnsafeBytes { b in zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0 }
        }
        second.wipe()
        guard same else {
            first.wipe()
            throw AdminError(.usage, "the two passwords differ; nothing was changed")
        }
        bytes = first
    }
    defer { bytes.wipe() }
    guard let text = bytes.withUnsafeBytes({ String(validating: $0, as: UTF8.self) }) else {
        throw AdminError(.usage, "\(file ?? "password"): the password is not UTF-8 text")
    }
    let password = Secret(text)
    do { try AdminPassword.check(password, field: file.map { "--password-file \($0)" } ?? "password") } catch {
        throw AdminError(.usage, error.description)
    }
    return password
}

/// Prints a new TOTP secret once: the `otpauth://` URI (for a QR code) and the key to type.
func printTOTP(secret: String, name: AdminName) {
    printOut(AdminTOTP.uri(secret: secret, name: name))
    printError("TOTP for \(name): add the otpauth:// URI above to an authenticator app (or type the key \(AdminTOTP.base32Key(secret: secret))); it is shown only now")
}

/// `custos admins add --db DB --name NAME --role ROLE [--password-file F] [--totp]`.
public struct AdminsAddCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add a dashboard account.",
        discussion: """
            The password (at least 12 characters) is asked twice at the terminal without echo, or read from \
            the first line of --password-file ('-' = standard input); it is never an argument. Only its bcrypt \
            hash (cost 12) is stored. --totp also makes a TOTP secret and prints its otpauth:// URI once. A \
            SQLite database is created if missing.
            """
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var account: AdminNameOption
    @Option(help: "viewer (listings and metadata), decryptor (also sealed bytes and DEK records), auditor (also the audit log).")
    var role: AdminRole
    @Option(help: ArgumentHelp("File whose first line is the password; '-' reads standard input.", valueName: "file"))
    var passwordFile: String?
    @Flag(help: "Also require a TOTP code at login (prints the otpauth:// URI once).")
    var totp = false

    public init() {}

    public func run() async throws {
        let name = try account.adminName()
        let password = try readNewPassword(file: passwordFile, for: name)
        let hash = await AdminPassword.hash(password)
        let secret = totp ? AdminTOTP.newSecret() : nil
        let nowMs = Int64((Date().timeIntervalSince1970 * 1000).rounded())
        let actor = loginUser()
        try await withStorage(try database.location(), createIfMissing: true) { storage in
            try await storageCall { () throws(StorageError) in
                try await storage.addAdmin(AdminAccount(name: name, role: role, passwordHash: hash, totpSecret: secret,
                                                        createdAtMs: nowMs))
            }
            _ = try await storageCall { () throws(StorageError) in
                try await storage.appendAudit(actor: actor, action: "admins.add",
                                              detail: "name=\(name) role=\(role) totp=\(secret == nil ? "no" : "yes")")
            }
        }
        printError("added \(role) \(name)")
        if let secret { printTOTP(secret: secret, name: name) }
    }
}

/// `custos admins list --db DB`.
public struct AdminsListCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List dashboard accounts: name, role, TOTP, added, failed logins, locked until; never hashes or secrets."
    )

    @OptionGroup var database: DatabaseOptions

    public init() {}

    public func run() async throws {
        try await withStorage(try database.location(), createIfMissing: false) { storage in
            let accounts = try await storageCall { () throws(StorageError) in try await storage.admins() }
            let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
            var rows = [["NAME", "ROLE", "TOTP", "ADDED (UTC)", "FAILED", "LOCKED UNTIL (UTC)"]]
            rows += accounts.map { a in
                [a.name.rawValue, a.role.rawValue, a.totpSecret == nil ? "no" : "yes", OutputNaming.iso(a.createdAtMs),
                 "\(a.failedLogins)", a.lockedUntilMs.flatMap { $0 > nowMs ? OutputNaming.iso($0) : nil } ?? "-"]
            }
            Console.out(Console.table(rows))
            _ = try? await storage.appendAudit(actor: loginUser(), action: "admins.list", detail: "accounts=\(accounts.count)")
        }
    }
}

/// `custos admins remove --db DB --name NAME`.
public struct AdminsRemoveCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove a dashboard account; its sessions end at once."
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var account: AdminNameOption

    public init() {}

    public func run() async throws {
        let name = try account.adminName()
        let actor = loginUser()
        try await withStorage(try database.location(), createIfMissing: false) { storage in
            try await storageCall { () throws(StorageError) in try await storage.removeAdmin(name) }
            _ = try await storageCall { () throws(StorageError) in
                try await storage.appendAudit(actor: actor, action: "admins.remove", detail: "name=\(name)")
            }
        }
        printError("removed \(name)")
    }
}

/// `custos admins set-role --db DB --name NAME --role ROLE`.
public struct AdminsSetRoleCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "set-role",
        abstract: "Change an account's role; its open sessions get the new role at their next request."
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var account: AdminNameOption
    @Option(help: "viewer, decryptor or auditor.")
    var role: AdminRole

    public init() {}

    public func run() async throws {
        let name = try account.adminName()
        let actor = loginUser()
        try await withStorage(try database.location(), createIfMissing: false) { storage in
            try await storageCall { () throws(StorageError) in try await storage.setAdminRole(name, role: role) }
            _ = try await storageCall { () throws(StorageError) in
                try await storage.appendAudit(actor: actor, action: "admins.set-role", detail: "name=\(name) role=\(role)")
            }
        }
        printError("\(name) is now a \(role)")
    }
}

/// `custos admins reset-password --db DB --name NAME [--password-file F] [--totp | --no-totp]`.
public struct AdminsResetPasswordCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "reset-password",
        abstract: "Set a new password (ends the account's sessions and clears a lock); --totp makes a new TOTP secret, --no-totp removes it."
    )

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var account: AdminNameOption
    @Option(help: ArgumentHelp("File whose first line is the password; '-' reads standard input.", valueName: "file"))
    var passwordFile: String?
    @Flag(inversion: .prefixedNo, exclusivity: .exclusive,
          help: "Make a new TOTP secret (--totp) or remove it (--no-totp), not both; without either the secret stays.")
    var totp: Bool?

    public init() {}

    public func run() async throws {
        let name = try account.adminName()
        let password = try readNewPassword(file: passwordFile, for: name)
        let hash = await AdminPassword.hash(password)
        let secret: String?? = switch totp {
        case nil: nil
        case true?: .some(AdminTOTP.newSecret())
        case false?: .some(nil)
        }
        let actor = loginUser()
        try await withStorage(try database.location(), createIfMissing: false) { storage in
            try await storageCall { () throws(StorageError) in
                try await storage.setAdminPassword(name, passwordHash: hash, totpSecret: secret)
            }
            let totpNote = switch totp {
            case nil: "kept"
            case true?: "new"
            case false?: "removed"
            }
            _ = try await storageCall { () throws(StorageError) in
                try await storage.appendAudit(actor: actor, action: "admins.reset-password", detail: "name=\(name) totp=\(totpNote)")
            }
        }
        printError("new password set for \(name); its sessions ended")
        if case .some(.some(let s)) = secret { printTOTP(secret: s, name: name) }
    }
}
