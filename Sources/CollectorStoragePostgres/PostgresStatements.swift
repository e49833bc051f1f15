import CollectorStorage
import Envelope
import Logging
import NIOCore
import PostgresNIO

/// The statements of every upload, prepared once per pooled connection (postgres-nio
/// `PostgresPreparedStatement`: the first execution on a connection parses and describes it,
/// later ones only bind and execute, so the server plans it once per connection instead of once
/// per upload; docs/STORAGE.md "Benchmarks"). Each lists its columns, so a later migration that
/// adds a column leaves its result type alone. Run them through
/// ``PostgresStorage/execute(_:on:)``.
enum PostgresStatements {
    /// An agent's token hash (`agents.token_hash`, 32 bytes), no row for an unknown agent.
    struct TokenHash: PostgresPreparedStatement {
        static let name = "custos_token_hash_v1"
        static let sql = "SELECT token_hash FROM agents WHERE agent_id = $1"
        static let bindingDataTypes: [PostgresDataType] = [.text]
        typealias Row = ByteBuffer

        var agentID: String

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 1)
            b.append(agentID)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> ByteBuffer { try row.decode(ByteBuffer.self) }
    }

    /// Inserts a batch's captures in one statement — one array per column, `unnest`ed — and
    /// returns the `blob_id`s it inserted. A row is inserted only when its DEK record is stored
    /// under the same agent and its id is free (`ON CONFLICT (blob_id) DO NOTHING`). The DEK
    /// record's owner is a correlated sub-select on `encryption_dek`'s primary key, one index
    /// probe per row, which the planner cannot turn into a join reading the whole table (an
    /// `EXISTS` became a hash join over a sequential scan in a generic plan). Rows go in `blob_id`
    /// order, so two statements inserting overlapping ids wait for each other in one order and
    /// cannot deadlock.
    ///
    /// Alone it is a transaction of its own (all rows or none: a failing row fails the
    /// statement). The sub-select reads the statement's snapshot: a DEK record committed by
    /// another transaction after the statement started is not seen (the blob is answered
    /// `unknownDEK`, which the agent retries); inside a transaction, DEK records inserted earlier
    /// in it are. `ON CONFLICT` instead sees every committed row and waits for an uncommitted
    /// insert of the same id to end, so of two instances storing one id exactly one inserts it.
    ///
    /// Ids must be distinct (the caller keeps later copies of an id out). Times are Unix ms
    /// (`timestamptz` exact to the millisecond: whole seconds through `to_timestamp`, the rest
    /// as an interval); `refs` holds the ``BlobRef`` text of a blob whose bytes are in a blob
    /// file (its `bytes` entry empty), else "". `users`/`displays` hold a session blob's user and
    /// display (docs/FORMAT.md "Sealed session blob"), "" for NULL: a session's are never empty.
    struct InsertCaptures: PostgresPreparedStatement {
        static let name = "custos_insert_captures_v2"
        static let sql = """
            INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob, blob_ref, received_at,
                                  user_name, display)
            SELECT u.id, u.agent, u.kind, u.dek, u.kek, u.seq,
                   to_timestamp((u.t / 1000)::float8) + (u.t % 1000) * interval '1 millisecond', u.sz, u.b, NULLIF(u.r, ''),
                   to_timestamp($11::int8) + $12::int8 * interval '1 millisecond',
                   NULLIF(u.usr, ''), NULLIF(u.dpy, '')
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[],
                        $9::bytea[], $10::text[], $13::text[], $14::text[]) AS u(id, agent, kind, dek, kek, seq, t, sz, b, r, usr, dpy)
            WHERE u.agent = (SELECT d.agent_id FROM encryption_dek d WHERE d.dek_id = u.dek)
            ORDER BY u.id
            ON CONFLICT (blob_id) DO NOTHING
            RETURNING blob_id
            """
        static let bindingDataTypes: [PostgresDataType] = [
            .textArray, .textArray, .textArray, .textArray, .textArray, .int8Array, .int8Array, .int8Array,
            .byteaArray, .textArray, .int8, .int8, .textArray, .textArray,
        ]
        typealias Row = String

        var ids: [String] = [], agents: [String] = [], kinds: [String] = [], deks: [String] = [], keks: [String] = []
        var sequences: [Int64] = [], times: [Int64] = [], sizes: [Int64] = []
        var bytes: [ByteBuffer] = [], refs: [String] = [], users: [String] = [], displays: [String] = []
        var receivedAtMs: Int64

        /// The rows of `blobs`; a blob with a `refs` entry gets an empty `blob` and the reference.
        init(_ blobs: [StoredBlob], refs blobRefs: [BlobID: BlobRef], receivedAtMs: Int64) {
            self.receivedAtMs = receivedAtMs
            for b in blobs {
                ids.append(b.blobID.hex)
                agents.append(b.agentID.rawValue)
                kinds.append(b.kind.name)
                deks.append(b.dekID.hex)
                keks.append(b.kekID.hex)
                sequences.append(b.sequence)
                times.append(b.captureTimeMs)
                sizes.append(Int64(b.bytes.count))
                let ref = blobRefs[b.blobID]
                bytes.append(ref == nil ? ByteBuffer(bytes: b.bytes) : ByteBuffer())
                refs.append(ref?.text ?? "")
                users.append(b.user?.rawValue ?? "")
                displays.append(b.display ?? "")
            }
        }

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 14)
            b.append(ids)
            b.append(agents)
            b.append(kinds)
            b.append(deks)
            b.append(keks)
            b.append(sequences)
            b.append(times)
            b.append(sizes)
            b.append(bytes)
            b.append(refs)
            b.append(receivedAtMs / 1000)
            b.append(receivedAtMs % 1000)
            b.append(users)
            b.append(displays)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> String { try row.decode(String.self) }
    }
}

extension PostgresStorage {
    /// Runs a prepared statement on `conn` and collects its rows. postgres-nio 1.33 remembers a
    /// failed preparation for the connection's life, and PostgreSQL refuses a prepared statement
    /// whose result type a schema change altered (SQLSTATE 0A000) on every later execution: after
    /// such an error (class 42, a missing table or column; 0A000; 26000, the statement unknown to
    /// the server) the connection is closed, so the pool's next one prepares afresh.
    /// - Throws: what the query throws (``storageError(_:_:)`` makes it a ``StorageError``).
    func execute<S: PostgresPreparedStatement>(_ statement: S, on conn: PostgresConnection) async throws -> [S.Row] {
        do {
            var rows: [S.Row] = []
            for try await row in try await conn.execute(statement, logger: Self.quiet) { rows.append(row) }
            return rows
        } catch let e as PSQLError {
            let state = e.serverInfo?[.sqlState] ?? ""
            if state.hasPrefix("42") || state == "0A000" || state == "26000" { try? await conn.close() }
            throw e
        }
    }
}
