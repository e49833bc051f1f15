/// The PostgreSQL schema of the collector (docs/STORAGE.md "PostgreSQL schema"), as numbered
/// migrations. Everything is in schema `public`, so the seed's statements work verbatim in
/// `psql`:
///
///     insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/etc/custos/keys/publickey.crt', '/etc/custos/keys/keypair.pem');
///     SELECT * FROM public.encryption_dek order by creation_time desc
///
/// Ids are lowercase hex text (`COLLATE "C"`: byte order, whatever the database's locale, so a
/// cursor's `(capture_time, blob_id)` order is the index's); times are `timestamptz`; agent ids
/// are text. `schema_migrations` lists the migrations applied; each runs in its own transaction
/// under a transaction-scoped advisory lock (``advisoryLockKey``), so collectors starting
/// together migrate once. A database holding a migration this build does not know is refused
/// (`.failed`, "newer schema"): an older collector must not write to a schema it does not know.
enum PostgresSchema {
    struct Migration: Sendable {
        let version: Int
        let name: String
        /// Run one by one (the extended query protocol takes one statement at a time).
        let statements: [String]
    }

    /// `pg_advisory_xact_lock` key taken by every migration transaction: "custos" in ASCII.
    static let advisoryLockKey: Int64 = 0x63_75_73_74_6f_73

    /// The channel the `encryption_kek` trigger notifies (payload: `INSERT`, `UPDATE`, `DELETE`
    /// or `TRUNCATE`). LISTEN/NOTIFY channels are per database.
    static let kekChannel = "custos_kek_changed"

    static let migrations: [Migration] = [
        Migration(version: 1, name: "v1-collector", statements: [
            #"""
            CREATE TABLE agents (
                agent_id text COLLATE "C" PRIMARY KEY,
                token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """#,
            #"""
            CREATE TABLE encryption_kek (
                id bigserial PRIMARY KEY,
                active boolean NOT NULL DEFAULT true,
                priv_encrypted boolean NOT NULL DEFAULT true,
                pub_datafile text,
                priv_datafile text,
                pub_pem text,
                kek_id text COLLATE "C" CHECK (kek_id ~ '^[0-9a-f]{64}$'),
                created_at timestamptz DEFAULT now(),
                CONSTRAINT encryption_kek_public_key CHECK (pub_datafile IS NOT NULL OR pub_pem IS NOT NULL)
            )
            """#,
            #"""
            CREATE TABLE encryption_dek (
                dek_id text COLLATE "C" PRIMARY KEY CHECK (dek_id ~ '^[0-9a-f]{32}$'),
                kek_id text COLLATE "C" NOT NULL CHECK (kek_id ~ '^[0-9a-f]{64}$'),
                agent_id text COLLATE "C" NOT NULL,
                creation_time timestamptz NOT NULL,
                record bytea NOT NULL,
                received_at timestamptz NOT NULL
            )
            """#,
            #"""
            CREATE INDEX encryption_dek_time ON encryption_dek (creation_time, dek_id)
            """#,
            #"""
            CREATE INDEX encryption_dek_agent_time ON encryption_dek (agent_id, creation_time, dek_id)
            """#,
            // The sealed bytes are in the row (bytea, TOASTed out of line when large); with
            // `blob-dir=`, large ones are in blob files and `blob_ref` (v3) points to them.
            #"""
            CREATE TABLE captures (
                blob_id text COLLATE "C" PRIMARY KEY CHECK (blob_id ~ '^[0-9a-f]{32}$'),
                agent_id text COLLATE "C" NOT NULL,
                kind text NOT NULL,
                dek_id text COLLATE "C" NOT NULL,
                kek_id text COLLATE "C" NOT NULL,
                sequence bigint NOT NULL,
                capture_time timestamptz NOT NULL,
                size bigint NOT NULL,
                blob bytea NOT NULL,
                received_at timestamptz NOT NULL
            )
            """#,
            #"""
            CREATE INDEX captures_time ON captures (capture_time, blob_id)
            """#,
            #"""
            CREATE INDEX captures_agent_time ON captures (agent_id, capture_time, blob_id)
            """#,
            // An agent's captures of one kind (a dashboard's "keystrokes of this agent") are an
            // index range too, even when the kind is rare among the agent's captures. (Without an
            // agent, kinds are common enough for `captures_time` with a filter.)
            #"""
            CREATE INDEX captures_agent_kind_time ON captures (agent_id, kind, capture_time, blob_id)
            """#,
            #"""
            CREATE TABLE audit_log (
                id bigserial PRIMARY KEY,
                at timestamptz NOT NULL DEFAULT now(),
                actor text NOT NULL,
                action text NOT NULL,
                detail text NOT NULL
            )
            """#,
            // Append-only for everyone, the owner included (who could drop the trigger: the
            // collector's role should not be the owner; docs/STORAGE.md "Roles").
            #"""
            CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END
            $$
            """#,
            #"""
            CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
                FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
            """#,
            #"""
            CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
                FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()
            """#,
            // Every change to the KEK registry, by anyone (an INSERT typed in psql too), wakes
            // the collectors' registries at once (LISTEN custos_kek_changed).
            #"""
            CREATE FUNCTION encryption_kek_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('custos_kek_changed', TG_OP);
                RETURN NULL;
            END
            $$
            """#,
            #"""
            CREATE TRIGGER encryption_kek_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON encryption_kek
                FOR EACH STATEMENT EXECUTE FUNCTION encryption_kek_notify()
            """#,
        ]),
        Migration(version: 2, name: "v2-retention", statements: [
            // Legal holds (HoldStore): no capture of `agent_id` expires while `until_at` is in
            // the future. The index serves expiry's "is this agent held" probe.
            #"""
            CREATE TABLE legal_hold (
                id bigserial PRIMARY KEY,
                agent_id text COLLATE "C" NOT NULL,
                until_at timestamptz NOT NULL,
                reason text NOT NULL,
                created_by text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """#,
            #"""
            CREATE INDEX legal_hold_agent_until ON legal_hold (agent_id, until_at)
            """#,
            // The maintenance lease (RetentionStore.acquireLease): one row per job, taken by one
            // conditional upsert, so one collector at a time runs expiry on this database.
            #"""
            CREATE TABLE maintenance_lease (
                name text COLLATE "C" PRIMARY KEY,
                holder text NOT NULL,
                expires_at timestamptz NOT NULL
            )
            """#,
            // Expiry of one kind among all agents walks (kind, capture_time).
            #"""
            CREATE INDEX captures_kind_time ON captures (kind, capture_time, blob_id)
            """#,
        ]),
        Migration(version: 3, name: "v3-blob-refs", statements: [
            // This database's identity (the blob directory's `.custos-blobs` marker) and whether
            // a blob directory has been marked for it: once one has, a directory without the
            // marker (an unmounted volume's mount point) is refused instead of marked.
            #"""
            CREATE TABLE blob_store (
                id text COLLATE "C" PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
                marked_at timestamptz
            )
            """#,
            #"""
            INSERT INTO blob_store (id) VALUES (replace(gen_random_uuid()::text, '-', ''))
            """#,
            // Large blobs in a shared blob directory (`blob-dir=`): the row holds an empty `blob`
            // and `blob_ref` = INSTANCE:FILE:OFFSET:SIZE (BlobRef); NULL: the bytes are in `blob`.
            #"""
            ALTER TABLE captures ADD COLUMN blob_ref text
                CHECK (blob_ref ~ '^[0-9a-f]{32}:[0-9]{1,8}:[0-9]{1,19}:[0-9]{1,19}$')
            """#,
        ]),
        Migration(version: 4, name: "v4-release-and-hold-removal", statements: [
            // `custos hold remove` marks a hold removed (by whom, when) instead of deleting its
            // row: the hold history stays; a removed hold protects nothing (HoldStore).
            #"""
            ALTER TABLE legal_hold ADD COLUMN removed_at timestamptz, ADD COLUMN removed_by text
            """#,
            // Ranges of blob files whose rows expiry deleted (`blob-dir=`): queued in the same
            // transaction as the DELETE, then erased from their files (hole punched, or zeros)
            // and `punched_at` set; a row goes once its file holds no referenced byte and was
            // deleted, or still holds some (docs/STORAGE.md "Retention": releasing the bytes).
            #"""
            CREATE TABLE blob_release (
                ref text COLLATE "C" PRIMARY KEY CHECK (ref ~ '^[0-9a-f]{32}:[0-9]{1,8}:[0-9]{1,19}:[0-9]{1,19}$'),
                blob_id text COLLATE "C" NOT NULL,
                queued_at timestamptz NOT NULL DEFAULT now(),
                punched_at timestamptz
            )
            """#,
            // "Does any row still point into file INSTANCE:N?" is one range of this index
            // (`INSTANCE:N:` ≤ ref < `INSTANCE:N;`, byte order).
            #"""
            CREATE INDEX captures_blob_ref ON captures ((blob_ref COLLATE "C")) WHERE blob_ref IS NOT NULL
            """#,
        ]),
        Migration(version: 5, name: "v5-admins", statements: [
            // Dashboard accounts (AdminAccountStore): the bcrypt hash of the password, an
            // optional TOTP secret, and the failed-login count and lock shared by every instance.
            #"""
            CREATE TABLE admin_accounts (
                name text COLLATE "C" PRIMARY KEY,
                role text NOT NULL CHECK (role IN ('viewer', 'decryptor', 'auditor')),
                password_hash text NOT NULL,
                totp_secret text,
                created_at timestamptz NOT NULL,
                failed_logins integer NOT NULL DEFAULT 0,
                locked_until timestamptz
            )
            """#,
            // Sessions in the database, so any instance accepts any session: the SHA-256 of the
            // token only.
            #"""
            CREATE TABLE admin_sessions (
                token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
                admin text COLLATE "C" NOT NULL REFERENCES admin_accounts (name) ON DELETE CASCADE,
                created_at timestamptz NOT NULL,
                last_seen timestamptz NOT NULL
            )
            """#,
            #"""
            CREATE INDEX admin_sessions_admin ON admin_sessions (admin)
            """#,
        ]),
        Migration(version: 6, name: "v6-admin-hardening", statements: [
            // The RFC 6238 step of the last TOTP code accepted: a code is accepted once
            // (AdminAccountStore.acceptTOTPStep).
            #"""
            ALTER TABLE admin_accounts ADD COLUMN totp_last_step bigint
            """#,
            // Failed logins of names that are not accounts, counted and locked like an
            // account's, so a lock reveals nothing about which names exist; bounded
            // (AdminLoginLimits), pruned by last_failure.
            #"""
            CREATE TABLE admin_login_failures (
                name text COLLATE "C" PRIMARY KEY,
                failed_logins integer NOT NULL,
                locked_until timestamptz,
                last_failure timestamptz NOT NULL
            )
            """#,
            #"""
            CREATE INDEX admin_login_failures_last ON admin_login_failures (last_failure)
            """#,
        ]),
        Migration(version: 7, name: "v7-sessions", statements: [
            // The graphical session of a sealed session blob (its header's user and display;
            // docs/FORMAT.md "Sealed session blob"); NULL for plain blobs. One user's captures
            // are one index range, as an agent's are.
            #"""
            ALTER TABLE captures ADD COLUMN user_name text, ADD COLUMN display text
            """#,
            #"""
            CREATE INDEX captures_user_time ON captures (user_name, capture_time, blob_id)
            """#,
            #"""
            CREATE INDEX captures_agent_user_time ON captures (agent_id, user_name, capture_time, blob_id)
            """#,
        ]),
    ]

    /// The newest version this build knows.
    static var latestVersion: Int { migrations.last?.version ?? 0 }

    /// Privileges for the collector's role when it is not the schema's owner
    /// (``PostgresStorage/migrate(grantingTo:)``): everything it needs, and on `audit_log` only
    /// SELECT and INSERT, so it cannot UPDATE, DELETE or TRUNCATE the audit log.
    /// `%ROLE%` is replaced by the quoted role name.
    static let collectorGrants = [
        "GRANT USAGE ON SCHEMA public TO %ROLE%",
        "GRANT SELECT ON schema_migrations TO %ROLE%",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON agents, encryption_kek, encryption_dek, captures TO %ROLE%",
        "GRANT SELECT, INSERT ON audit_log TO %ROLE%",
        "GRANT USAGE ON SEQUENCE encryption_kek_id_seq, audit_log_id_seq TO %ROLE%",
        // Retention: the collector expires captures (DELETE above), reads holds, takes the lease;
        // holds are placed and marked removed with `custos hold` (by the collector's role or the
        // owner); no one deletes a hold's row.
        "GRANT SELECT, INSERT, UPDATE ON legal_hold TO %ROLE%",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON maintenance_lease TO %ROLE%",
        "GRANT USAGE ON SEQUENCE legal_hold_id_seq TO %ROLE%",
        // Blob files: the database's id (the directory marker), marked once by a collector.
        "GRANT SELECT, UPDATE ON blob_store TO %ROLE%",
        // The dashboard: logins count failures and make sessions; `custos admins` manages accounts.
        "GRANT SELECT, INSERT, UPDATE, DELETE ON admin_accounts, admin_sessions, admin_login_failures TO %ROLE%",
        // Retention with blob files: the ranges to erase (queued by expiry, removed when done).
        "GRANT SELECT, INSERT, UPDATE, DELETE ON blob_release TO %ROLE%",
    ]

    /// `name` as a quoted SQL identifier (`"` doubled), for the role of a GRANT.
    static func quotedIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
