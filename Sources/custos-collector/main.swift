// custos-collector --config collector.cfg: the reference collector (docs/API.md).
import Collector
import CustosBase
import CustosConfig
import Foundation
import Logging

let arguments = CommandLine.arguments
func usage(_ status: Int32) -> Never {
    let text = """
        usage: custos-collector --config collector.cfg

        The Custos reference collector: HTTPS only (TLS 1.2+), stores sealed records, never decrypts.
        Keys of collector.cfg (see collector.cfg.sample): listen=HOST:PORT, tls-cert=, tls-key=,
        database= (a SQLite file, or postgres://USER@HOST[:PORT]/DBNAME[?sslmode=…] with the password in
        database-password-file=; large blobs in the shared directory blob-dir=), max-connections=, ….
        SIGHUP re-reads the encryption_kek table; SIGTERM/SIGINT stop gracefully.

        """
    FileHandle(fileDescriptor: status == 0 ? 1 : 2).write(Data(text.utf8))
    exit(status)
}
if arguments.count == 2, ["--help", "-h"].contains(arguments[1]) { usage(0) }
guard arguments.count == 3, arguments[1] == "--config" else { usage(2) }

LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
var logger = Logger(label: "custos-collector")
logger.logLevel = ProcessInfo.processInfo.environment["CUSTOS_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info

var listen = "?"
do {
    let configuration = try CollectorConfiguration(file: arguments[2])
    listen = "\(configuration.listenHost):\(configuration.listenPort)"
    // Each connection holds a descriptor: raise the soft NOFILE limit to the hard one (systemd's
    // default soft limit is 1024; man 5 systemd.exec, LimitNOFILE=), and say when max-connections
    // cannot be reached (the database, blob files and key files need descriptors too).
    var nofile = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile) == 0 {
        if nofile.rlim_cur < nofile.rlim_max {
            var raised = nofile
            raised.rlim_cur = nofile.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { nofile = raised }
        }
        let reserve: rlim_t = 64
        if nofile.rlim_cur < rlim_t(configuration.maxConnections) + reserve {
            logger.warning("max-connections is above what the file-descriptor limit allows", metadata: [
                "collector.max_connections": "\(configuration.maxConnections)", "collector.nofile": "\(nofile.rlim_cur)"])
        }
    }
    let server = try await CollectorServer(configuration: configuration, logger: logger)
    try await server.run()
} catch {
    var detail = "\(error)"
    // NIO reports a failed bind as "bind(descriptor:ptr:bytes:): <strerror>"; name the setting.
    if detail.contains("bind(") {
        detail = "listen=\(listen) in \(arguments[2]): cannot listen there: \(detail)"
    }
    detail = SafeText.escaped(detail)
    logger.critical("custos-collector stopped", metadata: ["collector.error": "\(detail)"])
    FileHandle.standardError.write(Data("custos-collector: \(detail)\n".utf8))
    exit(1)
}
