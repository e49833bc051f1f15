import CollectorStorage
@testable import CollectorStoragePostgres
import CustosBase
import Envelope
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing
import TestSupport

/// What only the PostgreSQL backend has: the seed's SQL in `psql`, NOTIFY, several instances
/// on one database, migrations, roles, index plans.
@Suite(.enabled(if: PostgresCluster.isAvailable, "needs Debian's postgresql (make deps)"), .postgresCluster)
struct PostgresStorageTests {
    /// The seed's step 6 INSERT and step 12 SELECT, typed verbatim into the real `psql`.
    @Test func seedStatementsWorkVerbatimInPsql() async throws {
        let (cluster, db) = try await freshDatabase()
        try await withPostgresStorage(cluster: cluster, database: db) { s in
            try await s.prepare()
            let insert = "insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/etc/custos/keys/publickey.crt', '/etc/custos/keys/keypair.pem');"
            try await cluster.psqlAsync(insert, database: db, user: collectorRole)
            let rows = try await s.keks()
            #expect(rows.count == 1)
            #expect(rows.first?.active == true && rows.first?.privEncrypted == true)
            #expect(rows.first?.pubDatafile == "/etc/custos/keys/publickey.crt" && rows.first?.publicKeyPEM == nil)
            #expect(rows.first?.privDatafile == "/etc/custos/keys/keypair.pem" && rows.first?.kekID == nil)

            let dek = sampleDEK(agent("seed-agent"), timeMs: 1_767_225_600_123)  // 2026-01-01 00:00:00.123 UTC
            let older = sampleDEK(agent("seed-agent"), timeMs: 1_767_225_500_000)
            #expect(try await s.ingest([.dek(older), .dek(dek)], receivedAtMs: 1_767_225_601_000) == [.stored, .stored])
            let out = try await offPool {
                try cluster.psql("SELECT * FROM public.encryption_dek order by creation_time desc", database: db,
                                 user: collectorRole, tuplesOnly: false)
            }
            let lines = out.split(separator: "\n").map(String.init)
            #expect(lines.first?.contains("dek_id") == true && lines.first?.contains("creation_time") == true)
            let first = try #require(lines.first { $0.contains(dek.dekID.hex) })
            #expect(first.contains("2026-01-01 00:00:00.123+00"))
            #expect(first.contains("seed-agent") && first.contains(dek.kekID.hex))
            // Newest first.
            let i = try #require(lines.firstIndex { $0.contains(dek.dekID.hex) })
            let j = try #require(lines.firstIndex { $0.contains(older.dekID.hex) })
            #expect(i < j)
        }
    }

    /// An INSERT typed in `psql` reaches `kekChanges()` within a second (trigger → NOTIFY →
    /// LISTEN); a dropped LISTEN connection is logged once, comes back, its recovery is logged
    /// once, and the subscribers hear about it (changes meanwhile were not heard).
    @Test func kekChangesHearPsqlAndRecoverFromADroppedListener() async throws {
        let (cluster, db) = try await freshDatabase()
        let logs = LogCapture()
        try await withPostgresStorage(cluster: cluster, database: db, logger: logs.logger("storage")) { s in
            try await s.prepare()
            let signals = SignalCounter(s.kekChanges())
            try await waitForListener(cluster, db, count: 1)

            let start = ContinuousClock.now
            try await cluster.psqlAsync("insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/k/pub.pem', '/k/priv.pem');",
                                        database: db, user: collectorRole)
            // Heard through NOTIFY, not a poll: the storage does not poll `encryption_kek`.
            #expect(try await signals.reaches(1, within: .seconds(3)), "after \(start.duration(to: .now)) (psql's own start included)")
            _ = try await s.registerKEK(KEKRegistration(pubDatafile: "/k/2.pem", publicKeyPEM: nil, privDatafile: nil, kekID: nil))
            #expect(try await signals.reaches(2, within: .seconds(1)))

            // Drop the LISTEN connection from the server side, twice.
            for round in 1...2 {
                try await cluster.psqlAsync("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '\(db)' AND query ILIKE 'LISTEN%';")
                #expect(try await signals.reaches(2 + round, within: .seconds(5)), "a reconnect signals the subscribers")
                try await waitForListener(cluster, db, count: 1)
            }
            try await cluster.psqlAsync("update encryption_kek set active = false;", database: db, user: collectorRole)
            #expect(try await signals.reaches(5, within: .seconds(1)))
            #expect(logs.lines(at: .warning).filter { $0.contains("KEK change listener") }.count == 2)
            #expect(logs.lines(at: .notice).filter { $0.contains("listening again") }.count == 2)
        }
    }

    /// Two collector instances on one database, the same batch sent to both many times at
    /// once: every record is stored once, every other answer is `duplicate`; other bytes under
    /// a stored id are a `conflict` from either instance.
    @Test func twoInstancesStoreEachRecordOnce() async throws {
        let (cluster, db) = try await freshDatabase()
        try await withPostgresStorage(cluster: cluster, database: db) { first in
            try await withPostgresStorage(cluster: cluster, database: db) { second in
                let a = agent("failover")
                let dek = sampleDEK(a)
                let blobs = (0..<20).map { sampleBlob(dek, sequence: Int64($0), timeMs: 1_700_000_000_000 + Int64($0)) }
                let batch: [IngestItem] = [.dek(dek)] + blobs.map { .blob($0) }
                let results = try await withThrowingTaskGroup(of: [IngestOutcome].self) { group in
                    for i in 0..<8 {
                        let s = i % 2 == 0 ? first : second
                        group.addTask { try await s.ingest(batch, receivedAtMs: 1_700_000_100_000 + Int64(i)) }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(results.count == 8)
                for item in 0..<batch.count {
                    let outcomes = results.map { $0[item] }
                    #expect(outcomes.filter { $0 == .stored }.count == 1, "item \(item): \(outcomes)")
                    #expect(outcomes.filter { $0 == .duplicate }.count == 7, "item \(item): \(outcomes)")
                }
                #expect(try await first.counts() == (20, 1))
                var changed = blobs[3]
                changed.bytes = Data("not the same".utf8)
                #expect(try await second.ingest([.blob(changed)], receivedAtMs: 1) == [.conflict])
                #expect(try await first.ingest([.blob(changed)], receivedAtMs: 1) == [.conflict])
                #expect(try await first.blob(changed.blobID) == blobs[3].bytes)
            }
        }
    }

    /// Batches of blobs only (one statement each, no `BEGIN`) racing through two instances:
    /// overlapping batches in opposite orders store every blob exactly once (each other answer
    /// `duplicate`: an id another statement inserted meanwhile is compared after it commits);
    /// one id with other bytes at the same time is stored once and a `conflict` for the other.
    @Test func blobBatchesRacingThroughTwoInstances() async throws {
        let (cluster, db) = try await freshDatabase()
        try await withPostgresStorage(cluster: cluster, database: db) { first in
            try await withPostgresStorage(cluster: cluster, database: db) { second in
                let dek = sampleDEK(agent("racer"))
                #expect(try await first.ingest([.dek(dek)], receivedAtMs: 1) == [.stored])
                let blobs = (0..<40).map { sampleBlob(dek, sequence: Int64($0), timeMs: 1_700_000_000_000 + Int64($0)) }
                // Batch i: 20 blobs from 3·i on (wrapping), forwards for even i, backwards for odd.
                let batches: [[StoredBlob]] = (0..<8).map { i in
                    let window = (0..<20).map { blobs[(3 * i + $0) % blobs.count] }
                    return i % 2 == 0 ? window : window.reversed()
                }
                let results = try await withThrowingTaskGroup(of: (Int, [IngestOutcome]).self) { group in
                    for (i, batch) in batches.enumerated() {
                        let s = i % 2 == 0 ? first : second
                        group.addTask { (i, try await s.ingest(batch.map { .blob($0) }, receivedAtMs: 2)) }
                    }
                    return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
                }
                var outcomes: [BlobID: [IngestOutcome]] = [:]
                for (i, batch) in batches.enumerated() {
                    let answers = try #require(results[i])
                    #expect(answers.count == batch.count)
                    for (b, o) in zip(batch, answers) { outcomes[b.blobID, default: []].append(o) }
                }
                let sent = Set(batches.joined().map(\.blobID))
                for id in sent {
                    let o = outcomes[id] ?? []
                    #expect(o.filter { $0 == .stored }.count == 1 && o.filter { $0 == .duplicate }.count == o.count - 1, "\(id): \(o)")
                }
                #expect(try await first.counts() == (sent.count, 1))

                for round in 0..<10 {
                    let a = sampleBlob(dek, sequence: 100 + Int64(round), bytes: Data("one \(round)".utf8))
                    let b = sampleBlob(dek, sequence: a.sequence, timeMs: a.captureTimeMs, bytes: Data("two \(round)".utf8), id: a.blobID)
                    async let one = first.ingest([.blob(a)], receivedAtMs: 3)
                    async let two = second.ingest([.blob(b)], receivedAtMs: 3)
                    let answers = try await [one[0], two[0]]
                    #expect(answers.sorted { "\($0)" < "\($1)" } == [.conflict, .stored], "round \(round): \(answers)")
                    #expect(try await second.blob(a.blobID) == (answers[0] == .stored ? a.bytes : b.bytes))
                }
            }
        }
    }

    /// The upload statement as PostgreSQL runs it after a few uploads on a connection (a generic
    /// plan, forced here) finds each blob's DEK record by its primary key: no sequential scan of
    /// `encryption_dek`, even among 1,000 rows, where an `EXISTS` was planned as a hash join
    /// over one (and a connection keeps its plan until the statistics change).
    @Test func theUploadStatementProbesDEKRecordsByKey() async throws {
        let (cluster, db) = try await freshDatabase()
        try await withPostgresStorage(cluster: cluster, database: db) { s in
            try await s.prepare()
            let plan = try await cluster.psqlAsync("""
                INSERT INTO encryption_dek (dek_id, kek_id, agent_id, creation_time, record, received_at)
                SELECT md5(i::text), repeat('ab', 32), 'agent-' || (i % 100), now(), '\\x00', now()
                FROM generate_series(1, 1000) AS i;
                ANALYZE encryption_dek;
                SET plan_cache_mode = force_generic_plan;
                PREPARE upload(text[], text[], text[], text[], text[], int8[], int8[], int8[], bytea[], text[], int8, int8, text[], text[])
                    AS \(PostgresStatements.InsertCaptures.sql);
                EXPLAIN EXECUTE upload(ARRAY[md5('x')], ARRAY['agent-1'], ARRAY['screen'], ARRAY[md5('1')],
                                       ARRAY[repeat('ab', 32)], ARRAY[1::int8], ARRAY[1000::int8], ARRAY[3::int8],
                                       ARRAY['\\x01'::bytea], ARRAY[''], 1, 2, ARRAY['alice'], ARRAY[':0']);
                """, database: db, user: collectorRole)
            #expect(plan.contains("Index Scan using encryption_dek_pkey") && !plan.contains("Seq Scan"), "\(plan)")
        }
    }

    /// postgres-nio remembers a failed preparation for a connection's life: a prepared
    /// statement that failed to prepare (its table missing for a moment) closes its connection,
    /// so once the table is back the next upload is stored — on a pool of one connection, which
    /// would otherwise fail every later call.
    @Test func aFailedPreparationIsNotRemembered() async throws {
        let (cluster, db) = try await freshDatabase()
        try await withPostgresStorage(cluster: cluster, database: db, maximumConnections: 1) { s in
            let dek = sampleDEK(agent("prepared"))
            #expect(try await s.ingest([.dek(dek)], receivedAtMs: 1) == [.stored])
            try await cluster.psqlAsync("ALTER TABLE captures RENAME TO captures_away;", database: db, user: collectorRole)
            let error = await storageError { _ = try await s.ingest([.blob(sampleBlob(dek))], receivedAtMs: 2) }
            #expect(error?.code == .failed && error?.message.contains("captures") == true, "\(String(describing: error))")
            try await cluster.psqlAsync("ALTER TABLE captures_away RENAME TO captures;", database: db, user: collectorRole)
            let blob = sampleBlob(dek, sequence: 1)
            #expect(try await s.ingest([.blob(blob)], receivedAtMs: 3) == [.stored])
            #expect(try await s.blob(blob.blobID) == blob.bytes)
        }
    }

    /// A token rotated or an agent removed by another process is refused within the token
    /// cache's time (``PostgresStorage/Configuration/tokenCacheTTL``): every check that starts
    /// later than that after the change refuses it. Until then the acceptance is remembered
    /// (the cache is in use), but a wrong token is never accepted, a new token works at once
    /// (and then replaces the old one), and with no cache time the change counts at once.
    @Test func tokensChangedElsewhereAreRefusedWithinTheCacheTime() async throws {
        let (cluster, db) = try await freshDatabase()
        let ttl = Duration.seconds(2)
        try await withPostgresStorage(cluster: cluster, database: db, tokenCacheTTL: ttl) { collector in
            try await withPostgresStorage(cluster: cluster, database: db, tokenCacheTTL: .zero) { other in
                let rotated = agent("rotated"), removed = agent("removed"), replaced = agent("replaced")
                let oldRotated = try await other.addAgent(rotated), oldRemoved = try await other.addAgent(removed)
                let oldReplaced = try await other.addAgent(replaced)
                let cachedAt = ContinuousClock.now
                for (a, t) in [(rotated, oldRotated), (removed, oldRemoved), (replaced, oldReplaced)] {
                    #expect(try await collector.authenticate(a, token: t))
                }
                let newRotated = try await other.rotateToken(rotated)
                try await other.removeAgent(removed)
                let newReplaced = try await other.rotateToken(replaced)
                let changed = ContinuousClock.now
                #expect(try await !collector.authenticate(rotated, token: newReplaced), "a wrong token, while the agent is cached")
                #expect(try await !other.authenticate(rotated, token: oldRotated), "no cache time: refused at once")
                // The new token works at once and takes the old one's place.
                #expect(try await collector.authenticate(replaced, token: newReplaced))
                #expect(try await !collector.authenticate(replaced, token: oldReplaced))

                let start = ContinuousClock.now
                let stillCached = try await collector.authenticate(rotated, token: oldRotated)
                if start < cachedAt + ttl { #expect(stillCached, "remembered until the cache time has passed") }
                for (a, t) in [(rotated, oldRotated), (removed, oldRemoved)] {
                    while true {
                        let asked = ContinuousClock.now
                        let accepted = try await collector.authenticate(a, token: t)
                        if asked >= changed + ttl {
                            #expect(!accepted, "\(a): accepted \(asked - changed) after the change")
                            break
                        }
                        if !accepted { break }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    #expect(try await !collector.authenticate(a, token: t), "\(a): refused for good")
                }
                #expect(try await collector.authenticate(rotated, token: newRotated))
            }
        }
    }

    /// A listing page is one index range: no Seq Scan and no Sort among 20,000 rows of 40
    /// agents, forwards and backwards, with and without an agent, kind or time bounds; the
    /// newest 100 of one agent are the right ones, and its 500 page by cursor.
    @Test func listingPagesAreIndexRanges() async throws {
        let (cluster, db) = try await freshDatabase()
        try await withPostgresStorage(cluster: cluster, database: db) { s in
            try await s.prepare()
            try await cluster.psqlAsync("""
                INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob, received_at)
                SELECT md5(i::text), 'agent-' || (i % 40), CASE WHEN i % 3 = 0 THEN 'keystrokes' ELSE 'screen' END,
                       md5('dek' || (i % 40)), md5('k') || md5('e'), i,
                       timestamptz '2026-01-01 00:00:00+00' + (i / 3) * interval '1 second', 3, '\\x010203', now()
                FROM generate_series(1, 20000) AS i;
                ANALYZE captures;
                """, database: db)
            let t0: Int64 = 1_767_225_600_000
            let cursor = CaptureCursor(captureTimeMs: t0 + 3_000_000, blobID: BlobID(hex: String(repeating: "8", count: 32))!)
            let queries: [(CaptureQuery, CaptureCursor?)] = [
                (CaptureQuery(agentID: agent("agent-7"), order: .descending), nil),
                (CaptureQuery(agentID: agent("agent-7"), order: .descending), cursor),
                (CaptureQuery(agentID: agent("agent-7"), kind: .keystrokes, order: .descending), nil),
                (CaptureQuery(agentID: agent("agent-7"), kind: .keystrokes), cursor),
                (CaptureQuery(), cursor),
                (CaptureQuery(order: .descending), nil),
                (CaptureQuery(sinceMs: t0 + 1000, untilMs: t0 + 5_000_000, order: .descending), cursor),
                (CaptureQuery(kind: .keystrokes, order: .descending), cursor),
            ]
            for (query, after) in queries {
                let plan = try await explain(s, PostgresStorage.captureListing(query, after: after, limit: 100))
                let index = query.agentID == nil ? "captures_time" : "captures_agent_"
                #expect(!plan.contains("Seq Scan"), "\(query): \(plan)")
                if let sortRows = Self.estimatedRows(of: "Sort", in: plan) {
                    // Only when the planner expects the whole range to fit in the page: then it
                    // reads that range (a bitmap of one index) and orders at most a page of rows.
                    #expect(sortRows <= 101 && plan.contains("Bitmap Index Scan on \(index)"), "\(query): \(plan)")
                } else {
                    #expect(plan.contains("Index Scan") && plan.contains("using \(index)"), "\(query): \(plan)")
                }
            }
            // The dashboard's agent pages among 20,000 agents: a range of the primary key, no sort.
            try await cluster.psqlAsync("""
                INSERT INTO agents (agent_id, token_hash) SELECT 'agent-' || i, sha256(i::text::bytea) FROM generate_series(1, 20000) AS i;
                ANALYZE agents;
                """, database: db)
            for after in [nil, agent("agent-5")] as [AgentID?] {
                let plan = try await explain(s, PostgresStorage.agentListing(after: after, limit: 101))
                #expect(plan.contains("Index Scan using agents_pkey") && !plan.contains("Sort") && !plan.contains("Seq Scan"), "\(plan)")
            }
            #expect(try await s.agents(after: agent("agent-9997"), limit: 5).map(\.id.rawValue) == ["agent-9998", "agent-9999"])
            // The agent's newest page is read backwards along its own index, never sorted.
            let newestPlan = try await explain(s, PostgresStorage.captureListing(
                CaptureQuery(agentID: agent("agent-7"), order: .descending), after: nil, limit: 100))
            #expect(newestPlan.contains("Index Scan Backward using captures_agent_time") && !newestPlan.contains("Sort"),
                    "\(newestPlan)")

            let newest = try await s.captures(CaptureQuery(agentID: agent("agent-7"), order: .descending), after: nil, limit: 100)
            let expected = try await cluster.psqlAsync(
                "SELECT blob_id FROM captures WHERE agent_id = 'agent-7' ORDER BY capture_time DESC, blob_id DESC LIMIT 100;",
                database: db).split(separator: "\n").map(String.init)
            #expect(newest.items.map(\.blobID.hex) == expected)
            #expect(newest.items.count == 100 && newest.next != nil)
            var pages = 1, next = newest.next, seen = newest.items.count
            while let n = next {
                let page = try await s.captures(CaptureQuery(agentID: agent("agent-7"), order: .descending), after: n, limit: 100)
                seen += page.items.count
                pages += 1
                next = page.next
            }
            #expect(seen == 500 && pages == 5)
        }
    }

    /// A user's captures (`CaptureQuery.user`, the dashboard's and `custos captures --user`'s
    /// filter) page as one range of the user indexes (`captures_user_time`, and with an agent
    /// `captures_agent_user_time`), forwards and backwards, from a cursor or not, with a kind or
    /// time bounds: never a sequential scan, never a sort of more than a page; the pages are the
    /// user's rows in order, every one once.
    @Test func userListingPagesAreIndexRanges() async throws {
        let (cluster, db) = try await freshDatabase()
        try await withPostgresStorage(cluster: cluster, database: db) { s in
            try await s.prepare()
            // 20,000 captures of 40 agents; 31 users among them (terminal servers), a third without a session.
            // (With a user holding 1 in 8 rows PostgreSQL 15 walks `captures_time` filtering by user,
            // cost-based; see the report of the dashboard users work. This test covers the plans
            // for a user among many.)
            try await cluster.psqlAsync("""
                INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob, received_at,
                                      user_name, display)
                SELECT md5(i::text), 'agent-' || (i % 40), CASE WHEN i % 3 = 0 THEN 'keystrokes' ELSE 'screen' END,
                       md5('dek' || (i % 40)), md5('k') || md5('e'), i,
                       timestamptz '2026-01-01 00:00:00+00' + (i / 3) * interval '1 second', 3, '\\x010203', now(),
                       CASE WHEN i % 3 = 1 THEN NULL ELSE 'user-' || (i % 31) END, CASE WHEN i % 3 = 1 THEN NULL ELSE ':' || (i % 31) END
                FROM generate_series(1, 20000) AS i;
                ANALYZE captures;
                """, database: db)
            let t0: Int64 = 1_767_225_600_000
            let cursor = CaptureCursor(captureTimeMs: t0 + 3_000_000, blobID: BlobID(hex: String(repeating: "8", count: 32))!)
            let user = try UserName("user-8")
            let queries: [(CaptureQuery, CaptureCursor?)] = [
                (CaptureQuery(user: user, order: .descending), nil),
                (CaptureQuery(user: user, order: .descending), cursor),
                (CaptureQuery(user: user), cursor),
                (CaptureQuery(kind: .keystrokes, user: user, order: .descending), nil),
                (CaptureQuery(user: user, sinceMs: t0 + 1000, untilMs: t0 + 5_000_000, order: .descending), cursor),
                (CaptureQuery(agentID: agent("agent-7"), user: user, order: .descending), nil),
                (CaptureQuery(agentID: agent("agent-7"), user: user), cursor),
                (CaptureQuery(agentID: agent("agent-7"), kind: .screen, user: user, order: .descending), cursor),
            ]
            for (query, after) in queries {
                let plan = try await explain(s, PostgresStorage.captureListing(query, after: after, limit: 100))
                let index = query.agentID == nil ? "captures_user_time" : "captures_agent_user_time"
                #expect(!plan.contains("Seq Scan"), "\(query): \(plan)")
                if let sortRows = Self.estimatedRows(of: "Sort", in: plan) {
                    // When it expects the user's range to be small, the planner may read that
                    // whole range (a bitmap of the user's index) and order it: at most the user's
                    // 430 rows, never more of the table (no other index gives the order).
                    #expect(sortRows <= 430 && plan.contains("Bitmap Index Scan on \(index)"), "\(query): \(plan)")
                } else {
                    #expect(plan.contains("Index Scan") && plan.contains("using \(index)"), "\(query): \(plan)")
                }
            }
            // The user's newest page is read backwards along its own index, never sorted.
            let newestPlan = try await explain(s, PostgresStorage.captureListing(CaptureQuery(user: user, order: .descending), after: nil, limit: 100))
            #expect(newestPlan.contains("Index Scan Backward using captures_user_time") && !newestPlan.contains("Sort"), "\(newestPlan)")

            // The pages are the user's rows, newest first, each once (user-8: i % 31 == 8, i % 3 != 1: 430).
            let expected = try await cluster.psqlAsync(
                "SELECT blob_id FROM captures WHERE user_name = 'user-8' ORDER BY capture_time DESC, blob_id DESC;",
                database: db).split(separator: "\n").map(String.init)
            #expect(expected.count == 430)
            var seen: [String] = [], next: CaptureCursor?, pages = 0
            repeat {
                let page = try await s.captures(CaptureQuery(user: user, order: .descending), after: next, limit: 100)
                #expect(page.items.allSatisfy { $0.user == user && $0.display == ":8" })
                seen += page.items.map(\.blobID.hex)
                next = page.next
                pages += 1
            } while next != nil && pages < 40
            #expect(seen == expected && pages == 5)

            // Few users, one holding 1 in 8 rows, all of them older than everyone else's: with
            // `user_name = $u` PostgreSQL 15 walked `captures_time` newest first, filtering by
            // user, through every newer row. Still one range of the user's index.
            try await cluster.psqlAsync("""
                INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob, received_at,
                                      user_name, display)
                SELECT md5('few' || i), 'agent-' || (i % 40), 'screen', md5('dek' || (i % 40)), md5('k') || md5('e'), i,
                       CASE WHEN i % 8 = 0 THEN timestamptz '2020-01-01 00:00:00+00' + i * interval '1 second'
                            ELSE timestamptz '2026-06-01 00:00:00+00' + i * interval '1 second' END,
                       3, '\\x01', now(), CASE WHEN i % 8 = 0 THEN 'old-user' ELSE 'few-' || (i % 4) END, ':1'
                FROM generate_series(1, 40000) AS i;
                ANALYZE captures;
                """, database: db)
            let old = try UserName("old-user")
            for (query, after) in [(CaptureQuery(user: old, order: .descending), nil),
                                   (CaptureQuery(kind: .screen, user: old, order: .descending), nil),
                                   (CaptureQuery(user: old), cursor)] as [(CaptureQuery, CaptureCursor?)] {
                let plan = try await explain(s, PostgresStorage.captureListing(query, after: after, limit: 100))
                #expect(plan.contains("Index Scan Backward using captures_user_time") || plan.contains("Index Scan using captures_user_time"),
                        "\(query): \(plan)")
                #expect(!plan.contains("Sort") && !plan.contains("captures_time "),
                        "\(query): \(plan)")
            }
            let oldPage = try await s.captures(CaptureQuery(user: old, order: .descending), after: nil, limit: 100)
            let oldExpected = try await cluster.psqlAsync(
                "SELECT blob_id FROM captures WHERE user_name = 'old-user' ORDER BY capture_time DESC, blob_id DESC LIMIT 100;",
                database: db).split(separator: "\n").map(String.init)
            #expect(oldPage.items.map(\.blobID.hex) == oldExpected && oldExpected.count == 100)
        }
    }

    /// A database with a migration this build does not know is refused; collectors starting
    /// together on a new database migrate it once.
    @Test func migrationsAreVersioned() async throws {
        let (cluster, db) = try await freshDatabase()
        let statuses = try await withThrowingTaskGroup(of: PostgresStorage.SchemaStatus.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    try await withPostgresStorage(cluster: cluster, database: db) { try await $0.migrate() }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(statuses.allSatisfy { $0.applied == [1, 2, 3, 4, 5, 6, 7] && $0.latest == 7 })
        #expect(try await cluster.psqlAsync("SELECT count(*) FROM schema_migrations;", database: db)
            .trimmingCharacters(in: .whitespacesAndNewlines) == "7")

        try await cluster.psqlAsync("INSERT INTO schema_migrations (version, name) VALUES (99, E'v99-\\x1b[31mfuture');",
                                    database: db)
        try await withPostgresStorage(cluster: cluster, database: db) { s in
            let error = await storageError { try await s.prepare() }
            #expect(error?.code == .failed)
            #expect(error?.message.contains("newer schema") == true && error?.message.contains("99") == true)
            #expect(error?.message.contains("\u{1B}") == false)  // the name from the database is escaped
            #expect(await storageError { _ = try await s.agents() }?.code == .failed)
            #expect(await s.health().problem?.contains("newer schema") == true)
        }
    }

    /// With the schema owned by another role, the collector's role can append to the audit log
    /// and read it, but not UPDATE, DELETE or TRUNCATE it; the owner is stopped by the trigger.
    @Test func auditLogIsAppendOnly() async throws {
        let owner = "custos_owner", app = "custos_app"
        let (cluster, db) = try await freshDatabase(owner: owner)
        try cluster.createRole(app)
        try await withPostgresStorage(cluster: cluster, database: db, role: owner) { (ownerStorage: PostgresStorage) async throws in
            #expect(try await ownerStorage.migrate(grantingTo: app).applied == [1, 2, 3, 4, 5, 6, 7])
            #expect(await storageError { _ = try await ownerStorage.migrate(grantingTo: "x; DROP TABLE agents") }?.code
                == .invalidArgument)
        }
        try await withPostgresStorage(cluster: cluster, database: db, role: app) { s in
            let entry = try await s.appendAudit(actor: "admin", action: "agents.add", detail: "a1")
            #expect(try await s.auditEntries(before: nil, limit: 10) == [entry])
            // Everything else the collector does works with the grants.
            let dek = sampleDEK(agent("a1"))
            _ = try await s.addAgent(agent("a1"))
            _ = try await s.registerKEK(KEKRegistration(pubDatafile: "/k.pem", publicKeyPEM: nil, privDatafile: nil, kekID: nil))
            #expect(try await s.ingest([.dek(dek), .blob(sampleBlob(dek))], receivedAtMs: 1) == [.stored, .stored])
            // Retention too: holds, the lease, expiry.
            let hold = try await s.addHold(agent: agent("a2"), untilMs: 10_000, reason: "r", createdBy: "admin")
            #expect(try await s.holds(activeAtMs: 1) == [hold])
            #expect(try await s.removeHold(id: hold.id, removedBy: "admin").removedBy == "admin")
            #expect(try await s.acquireLease("retention", holder: "h", ttlMs: 1000, nowMs: 1))
            try await s.releaseLease("retention", holder: "h")
            let expired = try await s.expire(policy: try RetentionPolicy(defaultDays: 1), nowMs: 1_800_000_000_000, limit: 10)
            #expect(expired.captures == 1)
            // Dashboard accounts and sessions (v5-admins).
            let admin = try AdminName("ann")
            try await s.addAdmin(AdminAccount(name: admin, role: .decryptor, passwordHash: "$2b$12$x", totpSecret: nil, createdAtMs: 1))
            #expect(try await s.recordFailedLogin(admin, nowMs: 2, maxFailures: 5, lockMs: 10).failures == 1)
            // Names that are not accounts are counted too (v6-admin-hardening), and TOTP steps recorded.
            #expect(try await s.recordFailedLogin(try AdminName("nobody"), nowMs: 2, maxFailures: 5, lockMs: 10).failures == 1)
            #expect(try await s.loginLockedUntil(try AdminName("nobody"), nowMs: 3) == nil)
            #expect(try await s.acceptTOTPStep(admin, step: 1))
            try await s.createSession(admin: admin, tokenHash: Data(repeating: 1, count: 32), nowMs: 2)
            #expect(try await s.session(tokenHash: Data(repeating: 1, count: 32), nowMs: 100_000,
                                        limits: SessionLimits(idleMs: 1_000_000, maxMs: 1_000_000))?.role == .decryptor)
            try await s.removeAdmin(admin)
        }
        for sql in ["UPDATE audit_log SET detail = 'rewritten';", "DELETE FROM audit_log;", "TRUNCATE audit_log;"] {
            let asApp = try await offPool { try cluster.psqlResult(sql, database: db, user: app) }
            #expect(asApp.status != 0 && asApp.stderrString.contains("permission denied"), "\(sql): \(asApp.stderrString)")
            let asOwner = try await offPool { try cluster.psqlResult(sql, database: db, user: owner) }
            #expect(asOwner.status != 0 && asOwner.stderrString.contains("append-only"), "\(sql): \(asOwner.stderrString)")
        }
        #expect(try await cluster.psqlAsync("SELECT detail FROM audit_log;", database: db, user: app)
            .trimmingCharacters(in: .whitespacesAndNewlines) == "a1")
        // Without the grant the collector's role cannot even read the schema version: a clear error.
        let stranger = "custos_stranger"
        try cluster.createRole(stranger)
        try await withPostgresStorage(cluster: cluster, database: db, role: stranger) { s in
            let error = await storageError { try await s.prepare() }
            #expect(error?.code == .failed && error?.message.contains("permission denied") == true)
        }
    }

    /// Retention's "does a row still point into this blob file" is one index range per file
    /// (`captures_blob_ref`), not a scan, among 20,000 rows pointing into 200 files; and it
    /// answers right for a file with a live row and one without.
    @Test func theReleasesFileLookUpIsAnIndexRange() async throws {
        let (cluster, db) = try await freshDatabase()
        let instance = String(repeating: "ab", count: 16)
        try await withPostgresStorage(cluster: cluster, database: db) { s in
            try await s.prepare()
            try await cluster.psqlAsync("""
                INSERT INTO captures (blob_id, agent_id, kind, dek_id, kek_id, sequence, capture_time, size, blob, blob_ref, received_at)
                SELECT md5(i::text), 'agent-' || (i % 40), 'screen', md5('dek'), md5('k') || md5('e'), i,
                       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second', 40000, '\\x',
                       '\(instance):' || (i % 200 + 1) || ':' || (i / 200) * 40000 || ':40000', now()
                FROM generate_series(1, 20000) AS i;
                INSERT INTO blob_release (ref, blob_id, punched_at)
                SELECT '\(instance):' || n || ':999999999:40000', md5('gone' || n), now() FROM unnest(ARRAY[20, 200, 201]) AS n;
                ANALYZE captures; ANALYZE blob_release;
                """, database: db)
            let plan = try await explain(s, PostgresStorage.releasedFilesQuery(limit: 1000))
            #expect(!plan.contains("Seq Scan on captures") && plan.contains("captures_blob_ref"), "\(plan)")
            let rows = try await s.withClient("look up files") { client in
                var rows: [String] = []
                for try await (i, n, referenced) in try await client.query(PostgresStorage.releasedFilesQuery(limit: 1000),
                                                                            logger: PostgresStorage.quiet)
                    .decode((String, Int64, Bool).self) where i == instance { rows.append("\(n)=\(referenced)") }
                return rows
            }
            #expect(rows == ["20=true", "200=true", "201=false"], "\(rows)")
        }
    }

    /// Wrong password, unknown database, nothing listening, and `run()` not running: each a
    /// clear error naming `user@host:port/db`, never the password.
    @Test func connectionErrorsAreClear() async throws {
        let (cluster, db) = try await freshDatabase()
        let wrongPassword = "wrong-\(PostgresCluster.newPassword())"
        try await withPostgresStorage(cluster: cluster, database: db, password: wrongPassword, timeout: .seconds(3)) { s in
            let error = await storageError { _ = try await s.agents() }
            #expect(error?.code == .failed)
            #expect(error?.message.contains("\(collectorRole)@\(cluster.host):\(cluster.port)/\(db)") == true, "\(String(describing: error))")
            #expect(error?.message.contains("refused the login") == true)
            #expect(error?.description.contains(wrongPassword) == false)
            let health = await s.health()
            #expect(!health.reachable && health.problem?.contains("refused the login") == true)
            #expect(health.location == "\(cluster.host):\(cluster.port)/\(db)")
        }
        try await withPostgresStorage(cluster: cluster, database: "no_such_db", timeout: .seconds(3)) { s in
            let error = await storageError { try await s.prepare() }
            #expect(error?.code == .failed)
            #expect(error?.message.contains("no such database") == true && error?.message.contains("no_such_db") == true)
        }
        let closedPort = try freeLocalPort()
        let location = try PostgresLocation("postgres://custos@127.0.0.1:\(closedPort)/custos?sslmode=disable")
        // A limit far above the probe's first second, so a loaded machine still shows the refusal
        // (not the time-out) is what ends the call.
        let down = try PostgresStorage(.init(location: location, password: Secret("pw"), operationTimeout: .seconds(15)),
                                       logger: Logger(label: "test"))
        let runner = Task { try await down.run() }
        let start = ContinuousClock.now
        let error = await storageError { _ = try await down.agents() }
        #expect(error?.code == .unavailable)
        #expect(error?.message.contains("127.0.0.1:\(closedPort)/custos") == true)
        #expect(error?.message.lowercased().contains("connection refused") == true, "\(String(describing: error))")
        #expect(start.duration(to: .now) < .seconds(15), "a server that is down is reported before the time-out")
        await down.close()
        _ = await runner.result

        // Not running: the owner forgot run().
        let idle = try makePostgresStorage(cluster: cluster, database: db, timeout: .seconds(2))
        let notRunning = await storageError { _ = try await idle.agents() }
        #expect(notRunning?.code == .unavailable && notRunning?.message.contains("run() is not running") == true)
    }

    // MARK: Helpers

    /// The planner's row estimate of the first `node` line of an EXPLAIN, nil without one.
    static func estimatedRows(of node: String, in plan: String) -> Int? {
        guard let line = plan.split(separator: "\n").first(where: {
            $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "->  ", with: "").hasPrefix(node + "  (")
        }), let r = line.range(of: "rows=") else { return nil }
        return Int(line[r.upperBound...].prefix { $0.isNumber })
    }

    func explain(_ s: PostgresStorage, _ query: PostgresQuery) async throws -> String {
        let explain = PostgresQuery(unsafeSQL: "EXPLAIN " + query.sql, binds: query.binds)
        return try await s.withClient("explain") { client in
            var lines: [String] = []
            for try await line in try await client.query(explain, logger: PostgresStorage.quiet).decode(String.self) {
                lines.append(line)
            }
            return lines.joined(separator: "\n")
        }
    }
}

/// Waits until `count` sessions on `db` are in `LISTEN` (the storage's listener is ready).
func waitForListener(_ cluster: PostgresCluster, _ db: String, count: Int) async throws {
    let deadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < deadline {
        let n = try await cluster.psqlAsync(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '\(db)' AND query ILIKE 'LISTEN%';")
        if Int(n.trimmingCharacters(in: .whitespacesAndNewlines)) == count { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw TestSupportError("no LISTEN session on \(db) within 10 s")
}

/// Counts the signals of a ``KEKStore/kekChanges()`` stream as they arrive.
final class SignalCounter: Sendable {
    private let count = Mutex(0)
    private let reader = Mutex<Task<Void, Never>?>(nil)

    init(_ stream: AsyncStream<Void>) {
        let task = Task { [weak self] in
            for await _ in stream { self?.count.withLock { $0 += 1 } }
        }
        reader.withLock { $0 = task }
    }

    var value: Int { count.withLock { $0 } }

    /// Whether the count reaches `n` within `limit` (checked every 10 ms).
    func reaches(_ n: Int, within limit: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if value >= n { return true }
            try await Task.sleep(for: .milliseconds(10))
        }
        return value >= n
    }

    deinit { reader.withLock { $0?.cancel() } }
}
