import CustosBase
import Foundation
import Spool

/// The agent's spool is the uploader's queue: `lease` / `ack` / `release` (docs/ARCHITECTURE.md).
extension Spool: UploadQueue {
    /// Leases for 120 s; a crash mid-upload makes the records leasable again after it.
    public func leaseForUpload(maxItems: Int, maxBytes: Int) async throws -> [SpoolEntry] {
        try lease(maxItems: maxItems, maxBytes: maxBytes, leaseDuration: .seconds(120))
    }

    public func acknowledge(_ ids: [Data]) async throws {
        try ack(ids)
    }

    /// `retryAfter == nil` releases for an immediate retry: the uploader paces attempts itself.
    public func giveBack(_ ids: [Data], retryAfter: Duration?) async throws {
        try release(ids, retryAfter: retryAfter ?? .zero)
    }

    /// Scans the spool (one header per DEK) and stores the result under
    /// ``StrandedRecords/stateKey`` for `custos-agent status`.
    public func noteStranded(configured: AgentID) async throws -> StrandedRecords? {
        let scan = try StrandedRecords.scan(self, configured: configured)
        try scan.save(to: self)
        return scan
    }
}
