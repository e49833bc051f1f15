// What the benchmark programs share (custos-bench-net, custos-bench-storage): their command-line
// numbers and their one error type.

/// The integer after `name` on the command line (`--captures 5000`), else `fallback` (also when
/// the value is missing or not an integer).
public func argument(_ name: String, _ fallback: Int) -> Int {
    let a = CommandLine.arguments
    if let i = a.firstIndex(of: name), i + 1 < a.count, let v = Int(a[i + 1]) { return v }
    return fallback
}

/// A benchmark that cannot go on (a command failed, a result is not what the run needs), in words.
public struct BenchError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
