import Capture
import CustosConfig
import Envelope
import Foundation
import Logging
import Transport

/// `custos-agent --check-config`: validates the config, the KEK in force, the pins and CA, and
/// display access; prints one line per check (`ok` / `FAIL` with the reason). Returns whether all
/// required checks passed.
enum CheckConfig {
    static func run(config: AgentConfig, print: (String) -> Void) -> Bool {
        var ok = true
        func line(_ good: Bool, _ what: String, _ detail: String, required: Bool = true) {
            print("\(good ? "ok  " : (required ? "FAIL" : "warn")) \(what): \(detail)")
            if !good && required { ok = false }
        }
        line(true, "config", "\(config.configPath) parsed")
        line(true, "encryption", config.enableEncryption ? "on: sealed end to end under kek-file" : "off: sealed under the collector's key (server-kek-file)")
        do {
            let kek = try KEKPublicKey(pemFile: config.activeKEKFile)
            line(true, "kek", "\(config.activeKEKFile): RSA-\(kek.bits), KEK id \(kek.id.hex)")
        } catch {
            line(false, "kek", "\(error)")
        }
        line(true, "agent-id", config.agentID)
        if let url = config.serverURL {
            line(config.agentToken != nil, "agent-token", config.agentToken != nil ? "set" : "missing: uploads will be refused")
            do {
                _ = try TLSPolicy(pinStrings: config.serverPins, caFile: config.serverCA)
                line(true, "server", "\(url.absoluteString), \(config.serverPins.count) pin(s)\(config.serverCA.map { ", CA \($0)" } ?? "")")
                if config.serverPins.isEmpty && config.serverCA == nil {
                    line(true, "server-pin", "none: the collector must have a certificate the system trusts", required: false)
                }
            } catch {
                line(false, "server", "\(error)")
            }
        } else {
            line(true, "server-url", "not set: captures stay in the spool", required: false)
        }
        do {
            let capturer = try ScreenCapturer(display: config.display, xauthority: config.xauthority,
                                              pngLevel: config.pngLevel, logger: Logger(label: "check-config"))
            let frames = try capturer.captureAll()
            line(true, "display", "\(config.display ?? "(DISPLAY unset)"): \(frames.count) monitor(s) readable")
        } catch {
            line(false, "display", "\(config.display ?? "(DISPLAY unset)"): \(error)")
        }
        let spoolParent = (config.spoolDir as NSString).deletingLastPathComponent
        let spoolOK = FileManager.default.isWritableFile(atPath: config.spoolDir)
            || FileManager.default.isWritableFile(atPath: spoolParent)
        line(spoolOK, "spool-dir", "\(config.spoolDir) \(spoolOK ? "writable" : "not writable")")
        return ok
    }
}
