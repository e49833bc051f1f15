import CustosBase
import Envelope
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Reads passphrases for private keys into locked, zeroized memory (`SecretBytes`).
///
/// A passphrase is never taken from the command line. Sources: a file (its first line, as
/// `openssl -passin file:` reads it), standard input (`-`), or the terminal without echo.
public enum Passphrase {
    /// Longest passphrase accepted, in bytes.
    public static let maxBytes = 4096

    /// Reads the passphrase from `file` (`-` = standard input), or prompts on `/dev/tty` without
    /// echo when `file` is nil.
    /// - Parameters:
    ///   - noun: what the secret is called in messages (`passphrase`, `password`).
    ///   - privateFile: refuse a `file` that others may read or write (``SecretFileMode``), as
    ///     `--password-file` does (`--passphrase-file` does not: it names a key's passphrase
    ///     file, which openssl's `-passin file:` reads without such a check).
    /// - Throws: `CLIError` (exit 2) when the file cannot be read, is open to others
    ///   (`privateFile`), or there is no terminal.
    public static func read(file: String?, prompt: String = "Passphrase: ", noun: String = "passphrase",
                            privateFile: Bool = false) throws -> SecretBytes {
        if let file {
            if file == "-" { return try readFirstLine(fd: STDIN_FILENO, source: "standard input", noun: noun) }
            let fd: FileDescriptor
            do { fd = FileDescriptor(takingOwnership: try syscall("open", file) { open(file, O_RDONLY | O_CLOEXEC) }) } catch {
                throw CLIError("\(SafeText.escaped(file)): cannot open \(noun) file: \(error.reason)")
            }
            // The opened file itself (fstat), not a name that could be swapped after a check.
            var st = stat()
            guard fstat(fd.rawValue, &st) == 0 else {
                throw CLIError("\(SafeText.escaped(file)): cannot check the \(noun) file: \(String(cString: strerror(errno)))")
            }
            // A regular file, or a pipe or terminal (`<(…)`, /dev/stdin): not a directory.
            guard [S_IFREG, S_IFIFO, S_IFCHR].contains(st.st_mode & S_IFMT) else {
                throw CLIError("\(SafeText.escaped(file)): \(noun) file: not a regular file (expected a file whose first line is the \(noun))")
            }
            if privateFile {
                if let problem = SecretFileMode.problem(mode: st.st_mode, shown: SafeText.quoted(file)) {
                    throw CLIError("\(SafeText.escaped(file)): \(noun) file: \(problem)")
                }
            }
            return try readFirstLine(fd: fd.rawValue, source: SafeText.escaped(file), noun: noun)
        }
        return try promptTerminal(prompt, noun: noun)
    }

    /// Reads up to `maxBytes` from `fd` into locked memory and returns the first line without its
    /// line ending. `noun`: what the secret is called in messages.
    static func readFirstLine(fd: Int32, source: String, noun: String = "passphrase") throws -> SecretBytes {
        let buffer = SecretBytes(count: maxBytes + 1)
        var total = 0
        try buffer.withUnsafeMutableBytes { raw in
            while total < raw.count {
                let n: Int
                do throws(SystemCallError) { n = try syscall("read", source) { Glibc.read(fd, raw.baseAddress! + total, raw.count - total) } } catch {
                    throw CLIError("\(source): cannot read \(noun): \(error.reason)")
                }
                if n == 0 { break }
                total += n
                if raw[0..<total].contains(UInt8(ascii: "\n")) { break }
            }
        }
        return try buffer.withUnsafeBytes { raw in
            var end = raw[0..<total].firstIndex(of: UInt8(ascii: "\n")) ?? total
            if end == total && total > maxBytes {
                throw CLIError("\(source): \(noun) is longer than \(maxBytes) bytes")
            }
            if end > 0 && raw[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            return SecretBytes(copying: UnsafeRawBufferPointer(rebasing: raw[0..<end]))
        }
    }

    /// Prompts on the controlling terminal with echo turned off (termios), restoring it after.
    static func promptTerminal(_ prompt: String, noun: String = "passphrase") throws -> SecretBytes {
        let tty = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard tty >= 0 else {
            throw CLIError("no terminal to ask for the \(noun); use --\(noun)-file FILE (or - for standard input)")
        }
        defer { close(tty) }
        var saved = termios()
        guard tcgetattr(tty, &saved) == 0 else {
            throw CLIError("cannot read terminal settings to ask for the \(noun); use --\(noun)-file")
        }
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        _ = Console.line(prompt).description.withCString { write(tty, $0, strlen($0)) }
        // TCSANOW (not TCSAFLUSH): keep a passphrase typed ahead of the prompt instead of dropping it.
        guard tcsetattr(tty, TCSANOW, &quiet) == 0 else {
            throw CLIError("cannot turn off terminal echo; use --\(noun)-file")
        }
        defer {
            _ = tcsetattr(tty, TCSANOW, &saved)
            _ = write(tty, "\n", 1)
        }
        return try readFirstLine(fd: tty, source: "terminal", noun: noun)
    }
}
