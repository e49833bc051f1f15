import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Minimal sd_notify(3): sends a state string such as `READY=1` to the datagram socket in
/// `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). A no-op when the
/// variable is unset (not started by systemd with `Type=notify`). Errors are returned, not thrown:
/// readiness is best effort and must never stop the agent.
public enum SystemdNotify {
    @discardableResult
    public static func send(_ state: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        guard var path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let abstract = path.hasPrefix("@")
        if abstract { path.removeFirst() }
        var bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count + (abstract ? 1 : 0) < capacity else { return false }
        if abstract { bytes.insert(0, at: 0) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let sent = state.withCString { msg in
            withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    sendto(fd, msg, strlen(msg), Int32(MSG_NOSIGNAL), sa, len)
                }
            }
        }
        return sent >= 0
    }
}
