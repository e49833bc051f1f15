import Foundation

/// One PEM block (RFC 7468; RFC 1421 headers such as `Proc-Type` for traditional OpenSSL keys).
struct PEMBlock {
    /// The label between `BEGIN ` and the dashes, e.g. `PUBLIC KEY`.
    let label: String
    /// RFC 1421 headers (`Proc-Type`, `DEK-Info`) before the body, if any.
    let headers: [String: String]
    /// The decoded body.
    let der: Data
    /// The block's text from its BEGIN line to its END line, inclusive.
    let text: String

    /// Whether the block is a traditional OpenSSL encrypted key (`Proc-Type: 4,ENCRYPTED`).
    var isTraditionallyEncrypted: Bool { headers["Proc-Type"]?.contains("ENCRYPTED") == true }

    /// Finds the first PEM block in `text`; `source` names the file for errors.
    ///
    /// - Throws: `EnvelopeError.invalidKey` for an empty input, no BEGIN line, no matching END
    ///   line, or a body that is not base64.
    static func first(in text: String, source: String) throws -> PEMBlock {
        if text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            throw EnvelopeError(.invalidKey, "\(source): file is empty (expected a PEM key)")
        }
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard let begin = lines.firstIndex(where: { $0.hasPrefix("-----BEGIN ") && $0.hasSuffix("-----") }) else {
            throw EnvelopeError(.invalidKey, "\(source): no '-----BEGIN ...-----' line (not a PEM file)")
        }
        let label = String(lines[begin].dropFirst("-----BEGIN ".count).dropLast(5))
        let endLine = "-----END \(label)-----"
        guard let end = lines[(begin + 1)...].firstIndex(of: endLine) else {
            throw EnvelopeError(.invalidKey, "\(source): '-----BEGIN \(label)-----' has no matching '\(endLine)' line")
        }
        var headers: [String: String] = [:]
        var body = ""
        var inHeaders = true
        for line in lines[(begin + 1)..<end] {
            if inHeaders, let colon = line.firstIndex(of: ":") {
                headers[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                continue
            }
            inHeaders = false
            body += line
        }
        guard !body.isEmpty, let der = Data(base64Encoded: body) else {
            throw EnvelopeError(.invalidKey, "\(source): the body of '\(label)' is not valid base64")
        }
        return PEMBlock(label: label, headers: headers, der: der,
                        text: lines[begin...end].joined(separator: "\n") + "\n")
    }
}

/// Reads a whole file, naming it in errors.
func readFile(_ path: String, what: String) throws -> Data {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw EnvelopeError(.io, "\(path): \(what) file does not exist")
    }
    guard !isDirectory.boolValue else {
        throw EnvelopeError(.io, "\(path): is a directory; expected a \(what) file")
    }
    do {
        return try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
        throw EnvelopeError(.io, "\(path): cannot read \(what) file: \(String(cString: strerror(errno)))")
    }
}
