// custos-collector --config collector.cfg: the reference collector (docs/API.md).
import Collector
import CustosConfig
import Foundation
import Logging

let arguments = CommandLine.arguments
func usage() -> Never {
    FileHandle.standardError.write(Data("usage: custos-collector --config collector.cfg\n".utf8))
    exit(64)
}
guard arguments.count == 3, arguments[1] == "--config" else { usage() }

LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
var logger = Logger(label: "custos-collector")
logger.logLevel = ProcessInfo.processInfo.environment["CUSTOS_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info

do {
    let configuration = try CollectorConfiguration(file: arguments[2])
    let server = try CollectorServer(configuration: configuration, logger: logger)
    try await server.run()
} catch {
    logger.critical("custos-collector stopped", metadata: ["collector.error": "\(error)"])
    exit(1)
}
