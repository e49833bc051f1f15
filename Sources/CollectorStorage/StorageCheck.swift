import CustosBase

/// The argument checks every backend makes alike, before anything is sent to the database (the
/// conformance suite holds both backends to them). Each throws ``StorageError`` `.invalidArgument`
/// whose message starts with `context` (the database, as the backend names it in messages).
public enum StorageCheck {
    /// Times every backend stores: years 1 to 9999 UTC, as Unix ms (0001-01-01T00:00:00.000Z to
    /// 9999-12-31T23:59:59.999Z). PostgreSQL's `timestamptz` reaches further, SQLite's integers
    /// further still, but nothing real is outside this, and a wild value must be
    /// `.invalidArgument` on every backend, not a failed batch on one.
    public static let timeRangeMs: ClosedRange<Int64> = -62_135_596_800_000...253_402_300_799_999

    /// Throws when `ms` is outside ``timeRangeMs``; `field` names the value (e.g. `capture time of blob …`).
    public static func time(_ ms: Int64, _ field: String, context: String) throws(StorageError) {
        guard timeRangeMs.contains(ms) else {
            throw StorageError(.invalidArgument, "\(context): \(field) \(ms) ms is outside years 1-9999")
        }
    }

    /// Checks every time of an ingest batch (`receivedAtMs`, each DEK record's creation time,
    /// each blob's capture time) with ``time(_:_:context:)``, so a batch is refused whole before
    /// anything is stored.
    public static func ingest(_ items: [IngestItem], receivedAtMs: Int64, context: String) throws(StorageError) {
        try time(receivedAtMs, "receivedAtMs", context: context)
        for item in items {
            switch item {
            case .dek(let d): try time(d.creationTimeMs, "creation time of DEK \(d.dekID)", context: context)
            case .blob(let b): try time(b.captureTimeMs, "capture time of blob \(b.blobID)", context: context)
            }
        }
    }

    /// Throws when `text` holds a NUL character: PostgreSQL `text` cannot store it, so no backend
    /// does (one behaviour). `field` names the value (e.g. `audit entry actor`).
    public static func text(_ text: String, _ field: String, context: String) throws(StorageError) {
        if text.utf8.contains(0) {
            throw StorageError(.invalidArgument, "\(context): \(field) holds a NUL character, which no backend stores (PostgreSQL text cannot)")
        }
    }

    /// Throws when a listing's `limit` is outside 1…10,000; `what` names the listing.
    public static func limit(_ limit: Int, _ what: String, context: String) throws(StorageError) {
        guard (1...10_000).contains(limit) else {
            throw StorageError(.invalidArgument, "\(context): \(what): limit \(limit) is outside 1...10000")
        }
    }
}
