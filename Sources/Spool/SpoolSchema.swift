import GRDB

/// The spool's SQLite schema and its versioned migrations (docs/SPOOL.md).
///
/// Migrations are named `v1`, `v2`, …; GRDB's `DatabaseMigrator` records the applied ones
/// in `grdb_migrations`. A database holding a migration this build does not know comes
/// from a newer release and is moved aside rather than guessed at.
enum SpoolSchema {
    /// `PRAGMA application_id` of a Custos spool: ASCII "CSSP".
    static let applicationID: Int32 = 0x4353_5350

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                PRAGMA application_id = \(applicationID);
                CREATE TABLE record (
                    seq INTEGER PRIMARY KEY,
                    id BLOB NOT NULL UNIQUE,
                    kind TEXT NOT NULL,
                    priority INTEGER NOT NULL,
                    dek_id BLOB NOT NULL,
                    capture_ms INTEGER NOT NULL,
                    size INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
                    lease_owner TEXT,
                    lease_until_ms INTEGER NOT NULL DEFAULT 0,
                    payload BLOB NOT NULL
                );
                CREATE INDEX record_order ON record(priority, capture_ms);
                CREATE TABLE quarantine (
                    seq INTEGER PRIMARY KEY,
                    id BLOB,
                    kind TEXT,
                    size INTEGER,
                    reason TEXT NOT NULL,
                    quarantined_ms INTEGER NOT NULL
                );
                CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
                """)
        }
        // v2: groups of pictures (docs/SPOOL.md). Rows of a v1 spool get grp NULL (no group).
        // The partial index finds a group's records for eviction and the kind check on
        // enqueue; ungrouped rows (most of them) take no space in it.
        migrator.registerMigration("v2") { db in
            try db.execute(sql: """
                ALTER TABLE record ADD COLUMN grp INTEGER;
                CREATE INDEX record_group ON record(grp, seq) WHERE grp IS NOT NULL;
                """)
        }
        // v3: the activity kind (priority 2, leased after keystrokes and before generic records
        // and screens): generic records move from 2 to 3, screens from 3 to 4.
        migrator.registerMigration("v3") { db in
            try db.execute(sql: "UPDATE record SET priority = priority + 1 WHERE priority >= 2")
        }
        return migrator
    }

    /// Counter names in the `counter` table.
    static func evictedCount(_ kind: SpoolKind) -> String { "evicted.\(kind.rawValue).count" }
    static func evictedBytes(_ kind: SpoolKind) -> String { "evicted.\(kind.rawValue).bytes" }
    static func rejectedCount(_ kind: SpoolKind) -> String { "rejected.\(kind.rawValue).count" }
    static func rejectedBytes(_ kind: SpoolKind) -> String { "rejected.\(kind.rawValue).bytes" }
    static let quarantined = "quarantined"
    static func droppedCount(_ reason: DropReason) -> String { "dropped.\(reason.rawValue).count" }
    static func droppedBytes(_ reason: DropReason) -> String { "dropped.\(reason.rawValue).bytes" }
    /// The reason and whether it is the count (else the bytes) of a `dropped.*` counter name.
    static func droppedCounter(_ name: String) -> (DropReason, isCount: Bool)? {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "dropped", parts[2] == "count" || parts[2] == "bytes",
              let reason = DropReason(rawValue: String(parts[1])) else { return nil }
        return (reason, parts[2] == "count")
    }
}
