/// Renders a schema as the text of a sample configuration file: for every key a comment
/// block `# name (type, default: X)` with its meaning, then `name=default`, or `#name=`
/// when the key has no default. `config.cfg.sample` is this text for `AgentConfig.schema`;
/// a test keeps the two equal (`make sample` rewrites the file).
public func renderSample(_ schema: [ConfigKey], title: String) -> String {
    var out = "# \(title)\n#\n# Syntax: key=value lines; whitespace around key and value is trimmed; only whole\n"
    out += "# lines starting with '#' or ';' are comments; unknown or duplicate keys are errors.\n"
    for key in schema {
        out += "\n# \(key.name) (\(key.type), default: \(key.defaultValue ?? "none"))\n"
        out += wrap(key.doc, width: 88).map { "#   \($0)\n" }.joined()
        if let d = key.defaultValue { out += "\(key.name)=\(d)\n" } else { out += "#\(key.name)=\n" }
    }
    return out
}

private func wrap(_ text: String, width: Int) -> [String] {
    var lines: [String] = [], current = ""
    for word in text.split(separator: " ") {
        if !current.isEmpty && current.count + 1 + word.count > width { lines.append(current); current = "" }
        current += current.isEmpty ? String(word) : " " + word
    }
    if !current.isEmpty { lines.append(current) }
    return lines
}
