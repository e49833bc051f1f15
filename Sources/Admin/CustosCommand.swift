import ArgumentParser
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
        subcommands: [KeysCommand.self, SealCommand.self, OpenCommand.self,
                      AgentsCommand.self, CapturesCommand.self, DecryptCommand.self, ExportCommand.self]
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

    /// Prints `error` the way the user should see it and returns the process exit code.
    static func report(_ error: any Error) -> Int32 {
        if let e = error as? EnvelopeError {
            printError("custos: \(e.message)")
            return CLIExit.code(for: e)
        }
        if let e = error as? any ExitCodeProviding {
            printError("custos: \(e.description)")
            return e.exitCode
        }
        let code = exitCode(for: error)
        let text = fullMessage(for: error)
        if code == .success {
            if !text.isEmpty { print(text) }
            return 0
        }
        if !text.isEmpty { printError(text) }
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

/// Writes a line to standard error.
func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
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

/// Writes `data` to a new file `path` atomically (temp file + rename) with permissions `mode`.
/// Never overwrites: an existing `path` is an error (custos does not destroy files it did not make).
func writeOutput(_ data: Data, to path: String, mode: Int = 0o600) throws {
    if FileManager.default.fileExists(atPath: path) {
        throw CLIError("\(path): already exists; custos never overwrites — remove it or choose another --out")
    }
    let url = URL(fileURLWithPath: path)
    let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
    do {
        guard FileManager.default.createFile(atPath: tmp.path, contents: nil, attributes: [.posixPermissions: mode]) else {
            throw CLIError("\(path): cannot create output file: \(String(cString: strerror(errno)))")
        }
        let h = try FileHandle(forWritingTo: tmp)
        try h.write(contentsOf: data)
        try h.synchronize()
        try h.close()
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        try FileManager.default.moveItem(at: tmp, to: url)
    } catch let e as CLIError {
        throw e
    } catch {
        try? FileManager.default.removeItem(at: tmp)
        throw CLIError("\(path): cannot write output: \((error as NSError).localizedDescription)")
    }
}
