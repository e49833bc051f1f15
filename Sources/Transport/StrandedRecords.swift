import CustosBase
import Envelope
import Foundation
import Spool

/// Spooled records sealed under another agent id than the configured one ("stranded"): the
/// collector refuses them `agent-mismatch` (docs/API.md) for as long as the agent uploads under
/// the configured id, and they cannot be re-sealed (the agent id is in the authenticated Envelope
/// header, docs/FORMAT.md, and their DEK is gone). They stay spooled and are retried rarely until
/// `agent-id=` is set back to the id they were sealed under (docs/SPOOL.md, "Stranded records").
public struct StrandedRecords: Sendable, Equatable, Codable {
    /// The configured agent id the collector refuses them for.
    public var configured: String
    /// Records and payload bytes by the agent id they were sealed under (never `configured`).
    public var sealedUnder: [String: SpoolCount]

    public init(configured: String, sealedUnder: [String: SpoolCount]) {
        self.configured = configured
        self.sealedUnder = sealedUnder
    }

    /// The key of the spool's state table holding the last scan (JSON of this type), for `status`.
    public static let stateKey = "stranded"

    /// The agent id in the Envelope header of one sealed record (DEK record or blob), parsed with
    /// the Envelope parser; nil when the bytes are not one well-formed record.
    public static func agentID(ofRecord payload: Data) -> String? {
        switch try? RecordStream.parse(payload).first {
        case .dekRecord(let r)?: r.agentID
        case .blob(let b)?: b.header.agentID
        case nil: nil
        }
    }

    /// The agent ids the spooled records are sealed under, with their DEK groups: one header is
    /// parsed per DEK (``Spool/dekGroups()``). Records whose sample does not parse are left out
    /// (the collector refuses those `malformed`). Works on read-only spools.
    /// - Throws: `SpoolError` from the spool.
    public static func sealers(in spool: Spool) throws -> [String: [SpoolDEKGroup]] {
        var out: [String: [SpoolDEKGroup]] = [:]
        for group in try spool.dekGroups() {
            guard let id = agentID(ofRecord: group.samplePayload) else { continue }
            out[id, default: []].append(group)
        }
        return out
    }

    /// Scans `spool` for records sealed under another id than `configured`.
    /// - Throws: `SpoolError` from the spool.
    public static func scan(_ spool: Spool, configured: AgentID) throws -> StrandedRecords {
        var stranded: [String: SpoolCount] = [:]
        for (id, groups) in try sealers(in: spool) where id != configured.rawValue {
            stranded[id] = groups.reduce(SpoolCount()) {
                SpoolCount(count: $0.count + $1.records.count, bytes: $0.bytes + $1.records.bytes)
            }
        }
        return StrandedRecords(configured: configured.rawValue, sealedUnder: stranded)
    }

    /// Stores this scan in the spool's state table (read by `custos-agent status`).
    /// - Throws: `SpoolError` from the spool.
    public func save(to spool: Spool) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        try spool.setState(Self.stateKey, String(decoding: try encoder.encode(self), as: UTF8.self))
    }

    /// The last stored scan, nil when none (or unreadable). Works on read-only spools.
    public static func load(from spool: Spool) -> StrandedRecords? {
        guard let text = (try? spool.state(stateKey)) ?? nil else { return nil }
        return try? JSONDecoder().decode(StrandedRecords.self, from: Data(text.utf8))
    }

    /// One line per sealing agent id, for `status` and `--check-config`: `N records (B bytes)
    /// sealed under agent-id 'old' (the collector refuses them for 'new')`; ids escaped with ``SafeText``.
    public var lines: [String] {
        sealedUnder.sorted { $0.key < $1.key }.map { id, c in
            "\(c.count) records (\(c.bytes) bytes) sealed under agent-id \(SafeText.quoted(id)) "
                + "(the collector refuses them for \(SafeText.quoted(configured)))"
        }
    }
}
