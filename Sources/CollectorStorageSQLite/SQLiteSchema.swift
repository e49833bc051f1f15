import CollectorStorage
import GRDB

/// The collector database's schema: GRDB migrations, applied in order, each once (recorded in
/// `grdb_migrations`). `v1` and `v2-blob-files` are those of the first collector
/// (`Collector.SQLiteCollectorStore`, since removed), same identifiers and same statements, so a `collector.db`
/// it made opens unchanged; `v3` adds what the storage seam needs; `v4-retention` legal holds and the maintenance lease; `v5-hold-removal` who removed a hold and when; `v6-admins` dashboard accounts and sessions, and the audit log's append-only triggers; `v7-admin-hardening` the last accepted TOTP step and the failed logins of names that are not accounts.
/// docs/API.md "Storage".
enum SQLiteSchema {
    /// The migrations this build knows, oldest first. A database that records another one was
    /// migrated by a newer build and is refused (``SQLiteStorage/init(path:blobDirectory:busyTimeout:)``).
    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE encryption_kek (
                    id INTEGER PRIMARY KEY,
                    active BOOLEAN NOT NULL DEFAULT 1,
                    priv_encrypted BOOLEAN NOT NULL DEFAULT 1,
                    pub_datafile TEXT NOT NULL,
                    priv_datafile TEXT,
                    kek_id TEXT,
                    created_at TEXT DEFAULT CURRENT_TIMESTAMP
                );
                CREATE TABLE encryption_dek (
                    dek_id TEXT PRIMARY KEY NOT NULL,
                    kek_id TEXT NOT NULL,
                    agent_id TEXT NOT NULL,
                    creation_time INTEGER NOT NULL,
                    record BLOB NOT NULL,
                    received_at INTEGER NOT NULL
                );
                CREATE INDEX encryption_dek_agent ON encryption_dek(agent_id, creation_time);
                CREATE TABLE captures (
                    blob_id TEXT PRIMARY KEY NOT NULL,
                    agent_id TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    dek_id TEXT NOT NULL,
                    kek_id TEXT NOT NULL,
                    sequence INTEGER NOT NULL,
                    capture_time INTEGER NOT NULL,
                    size INTEGER NOT NULL,
                    blob BLOB NOT NULL,
                    received_at INTEGER NOT NULL
                );
                CREATE INDEX captures_time ON captures(capture_time, sequence);
                CREATE INDEX captures_agent_time ON captures(agent_id, capture_time);
                CREATE TABLE agents (
                    agent_id TEXT PRIMARY KEY NOT NULL,
                    token_hash BLOB NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE TABLE audit_log (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at INTEGER NOT NULL,
                    actor TEXT NOT NULL,
                    action TEXT NOT NULL,
                    detail TEXT NOT NULL
                );
                """)
        }
        m.registerMigration("v2-blob-files") { db in
            // Large blobs live in blob files (BlobFiles); `blob` is then empty and these locate the bytes.
            try db.execute(sql: """
                ALTER TABLE captures ADD COLUMN blob_file INTEGER;
                ALTER TABLE captures ADD COLUMN blob_offset INTEGER;
                CREATE INDEX captures_blob_file ON captures(blob_file, blob_offset);
                CREATE TABLE blob_store (id TEXT NOT NULL);
                """)
            // This database's id, written into its blob directory's marker file (BlobFiles.markerName).
            try db.execute(sql: "INSERT INTO blob_store (id) VALUES (?)", arguments: [AgentToken.new().revealed])
        }
        m.registerMigration("v3") { db in
            // 1. `encryption_kek.pub_pem`: the public key PEM stored in the row (`custos keys
            //    register`), so a collector on another host needs no file at `pub_datafile`; the
            //    seed's path-only INSERT keeps working. `pub_datafile` loses its NOT NULL (a row may
            //    hold only the PEM) and a CHECK wants at least one of the two. SQLite cannot drop a
            //    NOT NULL in place, so the table is rebuilt (https://www.sqlite.org/lang_altertable.html
            //    "Making Other Kinds Of Table Schema Changes"), keeping every row id.
            try db.execute(sql: """
                CREATE TABLE encryption_kek_v3 (
                    id INTEGER PRIMARY KEY,
                    active BOOLEAN NOT NULL DEFAULT 1,
                    priv_encrypted BOOLEAN NOT NULL DEFAULT 1,
                    pub_datafile TEXT,
                    priv_datafile TEXT,
                    kek_id TEXT,
                    created_at TEXT DEFAULT CURRENT_TIMESTAMP,
                    pub_pem TEXT,
                    CHECK (pub_datafile IS NOT NULL OR pub_pem IS NOT NULL)
                );
                INSERT INTO encryption_kek_v3 (id, active, priv_encrypted, pub_datafile, priv_datafile, kek_id, created_at)
                    SELECT id, active, priv_encrypted, pub_datafile, priv_datafile, kek_id, created_at FROM encryption_kek;
                DROP TABLE encryption_kek;
                ALTER TABLE encryption_kek_v3 RENAME TO encryption_kek;
                """)
            // 2. Cursor paging (CaptureStore.captures, DEKStore.dekRecords): a page is one index
            //    range scan in the listing's order `(capture_time, blob_id)` (resp. `(creation_time,
            //    dek_id)`), never a sort, whatever the filters: one index per equality-filter
            //    combination (none, agent, kind, agent and kind), each ending in the order columns.
            //    The v1 indexes they extend are dropped (each is a prefix of a new one; a smaller
            //    index no query needs would only cost writes).
            try db.execute(sql: """
                DROP INDEX captures_time;
                DROP INDEX captures_agent_time;
                CREATE INDEX captures_time_id ON captures(capture_time, blob_id);
                CREATE INDEX captures_agent_time_id ON captures(agent_id, capture_time, blob_id);
                CREATE INDEX captures_kind_time_id ON captures(kind, capture_time, blob_id);
                CREATE INDEX captures_agent_kind_time_id ON captures(agent_id, kind, capture_time, blob_id);
                DROP INDEX encryption_dek_agent;
                CREATE INDEX encryption_dek_time_id ON encryption_dek(creation_time, dek_id);
                CREATE INDEX encryption_dek_agent_time_id ON encryption_dek(agent_id, creation_time, dek_id);
                """)
        }
        m.registerMigration("v4-retention") { db in
            // Legal holds (HoldStore): no capture of `agent_id` expires while `until_at` (Unix ms)
            // is in the future. The index serves expiry's "is this agent held" probe.
            // The maintenance lease (RetentionStore.acquireLease): one row per job name, taken
            // by one conditional upsert, so one process at a time runs expiry on this file.
            try db.execute(sql: """
                CREATE TABLE legal_hold (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    agent_id TEXT NOT NULL,
                    until_at INTEGER NOT NULL,
                    reason TEXT NOT NULL,
                    created_by TEXT NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE INDEX legal_hold_agent_until ON legal_hold(agent_id, until_at);
                CREATE TABLE maintenance_lease (
                    name TEXT PRIMARY KEY NOT NULL,
                    holder TEXT NOT NULL,
                    expires_at INTEGER NOT NULL
                );
                """)
        }
        m.registerMigration("v5-hold-removal") { db in
            // `custos hold remove` marks a hold removed (by whom, when) instead of deleting its
            // row: the hold history stays; a removed hold protects nothing (HoldStore).
            try db.execute(sql: """
                ALTER TABLE legal_hold ADD COLUMN removed_at INTEGER;
                ALTER TABLE legal_hold ADD COLUMN removed_by TEXT;
                """)
        }
        m.registerMigration("v6-admins") { db in
            // Dashboard accounts and their sessions (AdminAccountStore). Registered after any
            // `v5-…` of another branch: GRDB applies every migration a database lacks, in this
            // order, whatever was applied before. A session row holds only the SHA-256 of its
            // token; times are Unix ms.
            // The audit log becomes append-only here too (PostgreSQL's v1 triggers): SQLite
            // has no roles, so whoever can write the file can drop the triggers, but no code
            // path of Custos can change or remove an entry.
            try db.execute(sql: """
                CREATE TABLE admin_accounts (
                    name TEXT PRIMARY KEY NOT NULL,
                    role TEXT NOT NULL CHECK (role IN ('viewer', 'decryptor', 'auditor')),
                    password_hash TEXT NOT NULL,
                    totp_secret TEXT,
                    created_at INTEGER NOT NULL,
                    failed_logins INTEGER NOT NULL DEFAULT 0,
                    locked_until INTEGER
                );
                CREATE TABLE admin_sessions (
                    token_hash BLOB PRIMARY KEY NOT NULL CHECK (length(token_hash) = 32),
                    admin TEXT NOT NULL REFERENCES admin_accounts(name) ON DELETE CASCADE,
                    created_at INTEGER NOT NULL,
                    last_seen INTEGER NOT NULL
                );
                CREATE INDEX admin_sessions_admin ON admin_sessions(admin);
                CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
                    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END;
                CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
                    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END;
                """)
        }
        m.registerMigration("v7-admin-hardening") { db in
            // `totp_last_step`: the RFC 6238 step of the last TOTP code accepted, so a code is
            // accepted once (AdminAccountStore.acceptTOTPStep). `admin_login_failures`: failed
            // logins of names that are not accounts, counted and locked like an account's, so a
            // lock reveals nothing about which names exist; bounded (AdminLoginLimits), pruned
            // by `last_failure` (Unix ms).
            try db.execute(sql: """
                ALTER TABLE admin_accounts ADD COLUMN totp_last_step INTEGER;
                CREATE TABLE admin_login_failures (
                    name TEXT PRIMARY KEY NOT NULL,
                    failed_logins INTEGER NOT NULL,
                    locked_until INTEGER,
                    last_failure INTEGER NOT NULL
                );
                CREATE INDEX admin_login_failures_last ON admin_login_failures(last_failure);
                """)
        }
        m.registerMigration("v8-sessions") { db in
            // The graphical session of a sealed session blob (its header's user and display;
            // docs/FORMAT.md "Sealed session blob"), NULL for plain blobs. A listing of one
            // user's captures is one range of these indexes, as for agents and kinds.
            try db.execute(sql: """
                ALTER TABLE captures ADD COLUMN user_name TEXT;
                ALTER TABLE captures ADD COLUMN display TEXT;
                CREATE INDEX captures_user_time_id ON captures(user_name, capture_time, blob_id);
                CREATE INDEX captures_agent_user_time_id ON captures(agent_id, user_name, capture_time, blob_id);
                """)
        }
        return m
    }
}
