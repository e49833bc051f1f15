import ArgumentParser
import CollectorStorage
import CustosBase
import Envelope
import Foundation

/// `custos`: the admin command-line tool.
///
/// Each subcommand lives in its own file; add new ones to `subcommands` (and command groups such
/// as `KeysCommand` to their own `subcommands`).
///
/// Exit codes (every subcommand): 0 ok; 1 authentication or decryption failure (wrong passphrase,
/// wrong key, a changed byte); 2 usage errors or unreadable input. Messages name the file and
/// what was wrong, never key bytes, passphrases or plaintext.
public struct CustosCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "custos",
        abstract: "Custos admin tool: keys, sealing and opening of end-to-end encrypted captures.",
        subcommands: [KeysCommand.self, SealCommand.self, OpenCommand.self, DBCommand.self,
                      AgentsCommand.self, CapturesCommand.self, DecryptCommand.self, ExportCommand.self, AuditCommand.self,
                      HoldCommand.self, AdminsCommand.self, DashboardCommand.self]
    )

    public init() {}

    /// The entry point `Sources/custos/main.swift` calls: parses the arguments, runs the
    /// subcommand and exits with Custos's exit codes (0, 1, 2) instead of ArgumentParser's
    /// defaults (64 for usage errors). A distinct name, because ArgumentParser's own `main()`
    /// overloads would win overload resolution and bypass the exit-code mapping.
    public static func runMain(_ arguments: [String]? = nil) async {
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            Foundation.exit(report(error))
        }
    }

    /// Prints `error` the way the user should see it (through `Console`, so nothing in a
    /// message reaches the terminal unescaped) and returns the process exit code.
    static func report(_ error: any Error) -> Int32 {
        if let e = error as? EnvelopeError {
            printError("custos: \(e.message)")
            return CLIExit.code(for: e)
        }
        if let e = error as? any ExitCodeProviding {
            printError("custos: \(e.description)")
            return e.exitCode
        }
        if let e = error as? StorageError {
            printError("custos: \(e.message)")
            return AdminError.fromStorage(e).exitCode
        }
        if error is SystemCallError || error is ValueError {
            printError("custos: \(error)")
            return CLIExit.usage
        }
        let code = exitCode(for: error)
        // ArgumentParser's help, usage and validation text: several lines of our own, each
        // still escaped (a validation message may quote an argument).
        let lines = fullMessage(for: error).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if code == .success {
            if lines != [""] { lines.forEach { Console.out($0) } }
            return 0
        }
        if lines != [""] { lines.forEach { Console.error($0) } }
        return CLIExit.usage  // ArgumentParser usage and validation errors
    }
}

/// `custos keys …`: key commands (a group; `id` here, more later).
public struct KeysCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Work with KEKs (the RSA key pairs captures are encrypted to).",
        subcommands: [KeysIDCommand.self, KeysGenerateCommand.self, KeysRegisterCommand.self, KeysListCommand.self]
    )
    public init() {}
}

/// An error that knows its process exit code; `CustosCommand.main` prints its `description`
/// (prefixed with "custos: ") to standard error and exits with `exitCode`. Conform other admin
/// error types to it (`extension AdminError: ExitCodeProviding {}`).
public protocol ExitCodeProviding: Error, CustomStringConvertible {
    /// 1 = authentication/decryption failure, 2 = usage or unreadable input (see `CLIExit`).
    var exitCode: Int32 { get }
}

/// An error of the admin tool with its exit code (1 = authentication/decryption, 2 = usage/input).
public struct CLIError: ExitCodeProviding, Sendable {
    public let message: String
    public let exitCode: Int32
    public init(_ message: String, exitCode: Int32 = CLIExit.usage) {
        self.message = message
        self.exitCode = exitCode
    }
    public var description: String { message }
}

/// Custos's CLI exit codes.
public enum CLIExit {
    public static let ok: Int32 = 0
    /// Authentication or decryption failed.
    public static let authentication: Int32 = 1
    /// Usage error or unreadable input.
    public static let usage: Int32 = 2

    /// 1 for failures of authentication/decryption, 2 for everything else.
    public static func code(for error: EnvelopeError) -> Int32 {
        switch error.code {
        case .authenticationFailed, .wrongPassphrase, .keyMismatch, .dekMismatch, .unwrapFailed, .commitmentMismatch:
            authentication
        default:
            usage
        }
    }
}

/// Reads a whole input file, turning failures into exit code 2 with the file's name.
func readInput(_ path: String, what: String) throws -> Data {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw CLIError("\(path): \(what) file does not exist")
    }
    guard !isDirectory.boolValue else { throw CLIError("\(path): is a directory; expected the \(what) file") }
    do {
        return try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
        throw CLIError("\(path): cannot read \(what): \((error as NSError).localizedDescription)")
    }
}

/// Writes `data` to a new file `path` with permissions `mode`: written and `fsync`ed under a
/// hidden temporary name, then linked to `path` (never replacing anything: custos does not
/// destroy files it did not make). Both names are made relative to `path`'s folder opened once,
/// with `O_NOFOLLOW`/`O_EXCL` (``OutputDirectory/openFolder(of:what:)``): a symbolic link planted
/// at `path` is refused, never followed.
/// - Throws: `CLIError` (exit 2) when `path` exists; `AdminError` `.usage`/`.io` naming the file.
func writeOutput(_ data: Data, to path: String, mode: mode_t = 0o600) throws {
    let (folder, name) = try OutputDirectory.openFolder(of: path, what: "output file")
    let exists = CLIError("\(path): already exists; custos never overwrites — remove it or choose another --out")
    if let st = folder.entryStatus(name) {
        if st.st_mode & S_IFMT == S_IFLNK {
            throw CLIError("\(path): is a symbolic link; custos never writes through one — remove it or choose another --out")
        }
        throw exists
    }
    let tmp = ".\(name).tmp-\(getpid())"
    folder.remove(tmp)
    try folder.writeNewFile(tmp, data: data, mode: mode)
    defer { folder.remove(tmp) }
    guard try folder.link(tmp, as: name) else { throw exists }
    folder.sync()
}
