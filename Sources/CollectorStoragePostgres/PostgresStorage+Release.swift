import CollectorStorage
import CustosBase
import Foundation
import PostgresNIO

/// Phase 2 of expiry with `blob-dir=` (docs/STORAGE.md "Retention", "Releasing blob bytes"):
/// the ranges that phase 1 queued in `blob_release` (in the transaction that deleted their rows)
/// are erased from their blob files, and files no row points into are deleted once their writer
/// moved on. Every step is idempotent and the queue row goes last, so a crash anywhere is
/// finished by the next run:
///
/// 1. a page of queued ranges not erased yet is erased (``SharedBlobDirectory/erase(_:zeroOnly:)``:
///    punched, or zeros; each file `fdatasync`ed), then marked (`punched_at`);
/// 2. for each file whose queued ranges are all erased: when a row still points into it, its
///    queue rows go (the file stays; those rows' own expiry queues the file again); when none
///    does, the file is deleted if its writer moved on and it has been quiet
///    (``SharedBlobDirectory/deleteFiles(_:quietMs:modifiedBeforeMs:nowMs:)``), then its queue
///    rows go; otherwise they stay, and the file is looked at again by the next run.
///
/// Any instance may run it, for every instance's files: erasing a range never touches a byte an
/// owner appends (see ``SharedBlobDirectory/erase(_:zeroOnly:)``). The collector runs it under
/// the retention lease, one instance at a time; two at once would only repeat idempotent steps.
extension PostgresStorage {
    /// Files looked at (step 2) per call.
    static let releaseFilesPerCall = 1000

    /// Runs the steps above for at most `limit` queued ranges. Never throws: a failure (the
    /// database, a blob directory that is missing or foreign, a file that cannot be written) is
    /// ``ExpiryOutcome/Released/problem``, and what it left waits in `blob_release`.
    /// - Returns: what was released, and whether more ranges wait that another call would erase.
    func releaseBlobBytes(limit: Int) async -> (ExpiryOutcome.Released, more: Bool) {
        var released = ExpiryOutcome.Released()
        var problems: [String] = []
        var more = false
        do throws(StorageError) {
            guard let store = try await sharedBlobDirectory() else {
                let pending = try await pendingReleaseCount()
                if pending > 0 {
                    released.pending = pending
                    released.problem = "\(location): \(pending) expired blob ranges wait to be erased from blob files, but this instance has no blob directory (blob-dir=): a collector with blob-dir= erases them"
                }
                return (released, false)
            }
            // 1. Erase a page of queued ranges.
            let page = try await withClient("read blob ranges to erase") { client in
                var refs: [String] = []
                for try await ref in try await client.query("""
                    SELECT ref FROM blob_release WHERE punched_at IS NULL ORDER BY ref LIMIT \(Int64(limit))
                    """, logger: Self.quiet).decode(String.self) { refs.append(ref) }
                return refs
            }
            var refs: [BlobRef] = [], unreadable: [String] = []
            for text in page {
                do { refs.append(try BlobRef(text: text, context: "\(location): blob_release row")) } catch {
                    unreadable.append(text)
                    problems.append(error.message)
                }
            }
            var modifiedBeforeMs: [String: Int64] = [:]
            if !refs.isEmpty {
                let report = try await store.erase(refs)
                released.ranges = report.erased.count
                released.bytes = report.bytes
                released.zeroed = report.zeroed
                problems += report.problems
                modifiedBeforeMs = report.modifiedBeforeMs
                let done = report.erased.map(\.text)
                if !done.isEmpty {
                    _ = try await withClient("mark \(done.count) blob ranges erased") { client in
                        try await client.query("UPDATE blob_release SET punched_at = now() WHERE ref = ANY(\(done))",
                                               logger: Self.quiet).collect().count
                    }
                }
            }
            if !unreadable.isEmpty {
                // A reference no file can be named from (typed by hand): nothing to erase.
                let drop = unreadable
                _ = try await withClient("drop \(drop.count) unreadable blob ranges") { client in
                    try await client.query("DELETE FROM blob_release WHERE ref = ANY(\(drop))", logger: Self.quiet).collect().count
                }
            }
            more = page.count == limit && released.ranges > 0

            // 2. Files whose queued ranges are all erased.
            released.filesDeleted = try await deleteReleasedFiles(store, modifiedBeforeMs: modifiedBeforeMs, problems: &problems)
            released.pending = try await pendingReleaseCount()
        } catch {
            problems.append(error.message)
            released.pending = (try? await pendingReleaseCount()) ?? 0
            more = false
        }
        if !problems.isEmpty {
            released.problem = problems.prefix(3).joined(separator: "; ")
                + (problems.count > 3 ? "; and \(problems.count - 3) more" : "")
        }
        return (released, more)
    }

    /// Step 2 of ``releaseBlobBytes(limit:)``; returns how many files were deleted.
    private func deleteReleasedFiles(_ store: SharedBlobDirectory, modifiedBeforeMs: [String: Int64],
                                     problems: inout [String]) async throws(StorageError) -> Int {
        // Each file with queued ranges, all erased, and whether a row still points into it:
        // one range of the index captures_blob_ref per file (`I:N:` ≤ ref < `I:N;`).
        let query = Self.releasedFilesQuery(limit: Self.releaseFilesPerCall)
        let files = try await withClient("look for blob files no row points into") { client in
            var files: [(instance: String, number: Int64, referenced: Bool)] = []
            for try await row in try await client.query(query, logger: Self.quiet).decode((String, Int64, Bool).self) {
                files.append((row.0, row.1, row.2))
            }
            return files
        }
        var done: [(String, Int64)] = files.filter(\.referenced).map { ($0.instance, $0.number) }
        let unreferenced = files.filter { !$0.referenced }.map { (instance: $0.instance, number: $0.number) }
        let nowMs = Int64((Date().timeIntervalSince1970 * 1000).rounded())
        let quiet = configuration.blobFileQuietPeriod
        let quietMs = quiet.components.seconds * 1000 + quiet.components.attoseconds / 1_000_000_000_000_000
        let fates = try await store.deleteFiles(unreferenced, quietMs: quietMs, modifiedBeforeMs: modifiedBeforeMs, nowMs: nowMs)
        var deleted = 0
        for (file, fate) in zip(unreferenced, fates) {
            switch fate {
            case .deleted:
                deleted += 1
                done.append((file.instance, file.number))
            case .absent:
                done.append((file.instance, file.number))
            case .kept(let why):
                // Waits for its writer to move on, or for the quiet time: looked at again next run.
                if !why.hasPrefix("its writer") && !why.hasPrefix("changed") {
                    problems.append("\(SafeText.escaped(store.directory))/\(SharedBlobDirectory.fileName(instance: file.instance, number: file.number)): kept: \(why)")
                }
            }
        }
        if !done.isEmpty {
            // The erased ranges of these files are done with: each file is gone, or a row still
            // points into it (its own expiry will queue the file again).
            let lows = done.map { "\($0.0):\($0.1):" }, highs = done.map { "\($0.0):\($0.1);" }
            _ = try await withClient("forget the erased ranges of \(done.count) blob files") { client in
                try await client.query("""
                    DELETE FROM blob_release r USING unnest(\(lows)::text[], \(highs)::text[]) AS f(lo, hi)
                    WHERE r.ref >= f.lo AND r.ref < f.hi AND r.punched_at IS NOT NULL
                    """, logger: Self.quiet).collect().count
            }
        }
        return deleted
    }

    /// At most `limit` files (instance id, number) whose queued ranges are all erased, and
    /// whether a row still points into each: one range of the index `captures_blob_ref` per file
    /// (`I:N:` ≤ `blob_ref` < `I:N;` in byte order: every reference into file N of instance I).
    static func releasedFilesQuery(limit: Int) -> PostgresQuery {
        """
        SELECT f.i, f.n, EXISTS (SELECT 1 FROM captures WHERE blob_ref IS NOT NULL
                                 AND (blob_ref COLLATE "C") >= f.i || ':' || f.n || ':'
                                 AND (blob_ref COLLATE "C") < f.i || ':' || f.n || ';')
        FROM (SELECT split_part(ref, ':', 1) AS i, split_part(ref, ':', 2)::int8 AS n FROM blob_release
              GROUP BY 1, 2 HAVING bool_and(punched_at IS NOT NULL) ORDER BY 1, 2 LIMIT \(Int64(limit))) f
        """
    }

    /// Ranges in `blob_release` not erased yet.
    func pendingReleaseCount() async throws(StorageError) -> Int {
        try await withClient("count blob ranges to erase") { client in
            for try await n in try await client.query("SELECT count(*) FROM blob_release WHERE punched_at IS NULL",
                                                      logger: Self.quiet).decode(Int64.self) {
                return Int(n)
            }
            return 0
        }
    }
}
