import CollectorStorage
import CustosBase
import PostgresNIO

extension PostgresStorage {
    /// The schema's state as this build sees it.
    public struct SchemaStatus: Sendable, Equatable {
        /// Versions applied, ascending.
        public var applied: [Int]
        /// The newest version this build knows.
        public var latest: Int
    }

    /// Connects and brings the schema up to date now (the first call of any other method
    /// does it too): the collector calls it at start so a wrong password or a newer schema is
    /// reported at once.
    /// - Throws: `.unavailable` (the database cannot be reached: retry), `.failed` (login
    ///   refused, no such database, "newer schema", a migration the role may not run).
    public func prepare() async throws(StorageError) {
        try await ensureSchema()
    }

    /// Applies the migrations this database lacks, each in its own transaction under an
    /// advisory lock (collectors starting together migrate once), then — when `collectorRole`
    /// is given — grants that role what the collector needs, and on `audit_log` only SELECT and
    /// INSERT (docs/STORAGE.md "Roles"). Run by the schema's owner (`custos db migrate`);
    /// a collector whose role owns the schema migrates by itself at its first call.
    /// - Throws: `.failed` "newer schema" when the database has a migration this build does
    ///   not know; `.invalidArgument` for a role name that is not 1-63 letters, digits or `_`.
    @discardableResult
    public func migrate(grantingTo collectorRole: String? = nil) async throws(StorageError) -> SchemaStatus {
        if let role = collectorRole {
            guard (1...63).contains(role.utf8.count),
                  role.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x5F })
            else {
                throw StorageError(.invalidArgument, "role name must be 1-63 letters, digits or '_', found \(SafeText.quoted(role))")
            }
        }
        let timeout = configuration.operationTimeout * 6
        var status = SchemaStatus(applied: [], latest: PostgresSchema.latestVersion)
        while true {
            let step = try await migrationStep(timeout: timeout)
            status.applied = step.applied
            if step.done { break }
        }
        if let role = collectorRole {
            let statements = PostgresSchema.collectorGrants.map {
                $0.replacingOccurrences(of: "%ROLE%", with: PostgresSchema.quotedIdentifier(role))
            }
            _ = try await inTransaction("grant role \(role)", migrate: false) { conn in
                for sql in statements { try await conn.query(PostgresQuery(unsafeSQL: sql), logger: Self.quiet) }
                return true
            }
        }
        state.withLock { $0.schemaReady = true }
        return status
    }

    /// Applies at most one missing migration in one transaction; returns the versions applied
    /// after it and whether the schema is now current.
    private func migrationStep(timeout: Duration) async throws(StorageError) -> (applied: [Int], done: Bool) {
        let location = self.location
        return try await inTransaction("migrate the schema", migrate: false, timeout: timeout) { conn in
            _ = try await conn.query("SELECT pg_advisory_xact_lock(\(PostgresSchema.advisoryLockKey))", logger: Self.quiet).collect()
            var exists = false
            for try await (name) in try await conn.query("SELECT to_regclass('public.schema_migrations')::text",
                                                        logger: Self.quiet).decode((String?).self) {
                exists = name != nil
            }
            if !exists {
                try await conn.query("""
                    CREATE TABLE schema_migrations (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )
                    """, logger: Self.quiet)
            }
            var applied: [(Int, String)] = []
            for try await (version, name) in try await conn.query("SELECT version, name FROM schema_migrations ORDER BY version",
                                                                 logger: Self.quiet).decode((Int, String).self) {
                applied.append((version, name))
            }
            let known = Set(PostgresSchema.migrations.map(\.version))
            if let unknown = applied.first(where: { !known.contains($0.0) }) {
                throw StorageError(.failed, "\(location): newer schema: the database has migration \(unknown.0) (\(SafeText.quoted(unknown.1))), which this build does not know (it knows \(PostgresSchema.migrations.map { String($0.version) }.joined(separator: ", "))); run a newer custos")
            }
            let done = Set(applied.map(\.0))
            guard let next = PostgresSchema.migrations.first(where: { !done.contains($0.version) }) else {
                return (applied.map(\.0), true)
            }
            for sql in next.statements {
                try await conn.query(PostgresQuery(unsafeSQL: sql), logger: Self.quiet)
            }
            try await conn.query("INSERT INTO schema_migrations (version, name) VALUES (\(next.version), \(next.name))",
                                 logger: Self.quiet)
            return ((applied.map(\.0) + [next.version]).sorted(), false)
        }
    }

    /// ``migrate(grantingTo:)`` once per instance, before the first call; a role that may not
    /// migrate gets a `.failed` that says so.
    func ensureSchema() async throws(StorageError) {
        if state.withLock({ $0.schemaReady }) { return }
        do {
            try await migrate()
        } catch where error.code == .failed && error.message.contains("permission denied") {
            throw StorageError(.failed, "\(error.message); the schema is not up to date (this build needs version \(PostgresSchema.latestVersion)) and this role may not migrate it: run the migration as the schema's owner")
        }
    }
}
