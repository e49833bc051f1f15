import CollectorStorage
import CustosBase
import Envelope
import Foundation
import Testing
import TestSupport

extension StorageConformance {
    /// `AgentStore` on every backend.
    @Suite struct AgentStoreConformance {
        @Test(arguments: Backend.testable)
        func addListAuthenticateRotateRemove(_ backend: Backend) async throws {
            try await withRig(backend, "agents") { rig async throws in
                let s = rig.storage
                let before = Int64(Date().timeIntervalSince1970 * 1000) - 1
                let tokenB = try await s.addAgent(agent("host-b"))
                let tokenA = try await s.addAgent(agent("host-a"))
                // 32 random bytes, base64url without padding; different each time.
                #expect(tokenA.revealed.count == 43 && tokenA != tokenB)
                #expect(tokenA.revealed.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
                #expect(await storageError { _ = try await s.addAgent(agent("host-a")) }?.code == .alreadyExists)

                let listed = try await s.agents()
                #expect(listed.map(\.id) == [agent("host-a"), agent("host-b")], "by id")
                let after = Int64(Date().timeIntervalSince1970 * 1000) + 1
                #expect(listed.allSatisfy { (before...after).contains($0.createdAtMs) })

                #expect(try await s.authenticate(agent("host-a"), token: tokenA))
                #expect(try await !s.authenticate(agent("host-a"), token: tokenB), "another agent's token")
                #expect(try await !s.authenticate(agent("host-a"), token: Secret(tokenA.revealed + "x")))
                #expect(try await !s.authenticate(agent("host-a"), token: Secret("")))
                #expect(try await !s.authenticate(agent("nobody"), token: tokenA), "unknown agent")

                let rotated = try await s.rotateToken(agent("host-a"))
                #expect(rotated != tokenA)
                #expect(try await !s.authenticate(agent("host-a"), token: tokenA), "the old token no longer works")
                #expect(try await s.authenticate(agent("host-a"), token: rotated))
                #expect(try await s.authenticate(agent("host-b"), token: tokenB), "the other agent is untouched")
                #expect(await storageError { _ = try await s.rotateToken(agent("nobody")) }?.code == .notFound)

                try await s.removeAgent(agent("host-a"))
                #expect(try await s.agents().map(\.id) == [agent("host-b")])
                #expect(try await !s.authenticate(agent("host-a"), token: rotated))
                #expect(await storageError { try await s.removeAgent(agent("host-a")) }?.code == .notFound)
                // Removed agents can be added again, with a new token.
                let again = try await s.addAgent(agent("host-a"))
                #expect(try await s.authenticate(agent("host-a"), token: again))
            }
        }

        /// Agents page by id in byte order (upper case before lower, `-` before digits, so
        /// `host-10` before `host-9`), after any id, stored or not; the pages together are the
        /// whole list.
        @Test(arguments: Backend.testable)
        func agentsPageByID(_ backend: Backend) async throws {
            try await withRig(backend, "agents-pages") { rig async throws in
                let s = rig.storage
                let ids = ["host-9", "host-10", "Host-A", "a", "B", "z.1", "_x", "0", "host-9.a"]
                for id in ids { _ = try await s.addAgent(agent(id)) }
                let byteOrder = ids.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
                #expect(byteOrder == ["0", "B", "Host-A", "_x", "a", "host-10", "host-9", "host-9.a", "z.1"])
                var pages: [[String]] = [], after: AgentID?
                while true {
                    let page = try await s.agents(after: after, limit: 2)
                    if page.isEmpty { break }
                    pages.append(page.map(\.id.rawValue))
                    after = page.last?.id
                }
                #expect(pages == [["0", "B"], ["Host-A", "_x"], ["a", "host-10"], ["host-9", "host-9.a"], ["z.1"]])
                #expect(try await s.agents().map(\.id.rawValue) == byteOrder, "agents() lists the same, whole")
                #expect(try await s.agents(after: agent("host-5"), limit: 3).map(\.id.rawValue) == ["host-9", "host-9.a", "z.1"],
                        "after an id that is not stored")
                #expect(try await s.agents(after: agent("zz"), limit: 10).isEmpty)
                let listed = try await s.agents(after: nil, limit: 10_000)
                #expect(listed == (try await s.agents()), "createdAtMs too")
                for bad in [0, 10_001] {
                    #expect(await storageError { _ = try await s.agents(after: nil, limit: bad) }?.code == .invalidArgument)
                }
            }
        }

        /// An agent's captures stay when the agent is removed.
        @Test(arguments: Backend.testable)
        func removingAnAgentKeepsItsCaptures(_ backend: Backend) async throws {
            try await withRig(backend, "agents-captures") { rig async throws in
                let s = rig.storage
                _ = try await s.addAgent(agent("leaver"))
                let d = dek(agent("leaver"), time: 1)
                let b = blob(d, time: 2)
                #expect(try await s.ingest([.dek(d), .blob(b)], receivedAtMs: 3) == [.stored, .stored])
                try await s.removeAgent(agent("leaver"))
                #expect(try await s.blob(b.blobID) == b.bytes)
                #expect(try await s.dekRecord(d.dekID) == d.record)
            }
        }
    }
}

extension StorageConformance {
    /// `KEKStore` on every backend.
    @Suite struct KEKStoreConformance {
        static let pem = """
            -----BEGIN PUBLIC KEY-----
            MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo
            -----END PUBLIC KEY-----

            """

        @Test(arguments: Backend.testable)
        func registerListActivateAndSetIDs(_ backend: Backend) async throws {
            try await withRig(backend, "keks") { rig async throws in
                let s = rig.storage
                let before = Date()
                let byPath = try await s.registerKEK(KEKRegistration(pubDatafile: "/etc/custos/keys/a.pem", publicKeyPEM: nil,
                                                                     privDatafile: "/etc/custos/keys/a.key", kekID: nil))
                let byPEM = try await s.registerKEK(KEKRegistration(pubDatafile: nil, publicKeyPEM: Self.pem, privDatafile: nil,
                                                                    privEncrypted: false, active: false, kekID: kekID(7)))
                let both = try await s.registerKEK(KEKRegistration(pubDatafile: "/k/c.pem", publicKeyPEM: Self.pem,
                                                                   privDatafile: nil, kekID: nil))
                #expect(byPath < byPEM && byPEM < both)
                for neither in [KEKRegistration(pubDatafile: nil, publicKeyPEM: nil, privDatafile: "/k/x.key", kekID: nil),
                                KEKRegistration(pubDatafile: "", publicKeyPEM: "", privDatafile: nil, kekID: nil)] {
                    #expect(await storageError { _ = try await s.registerKEK(neither) }?.code == .invalidArgument)
                }

                var rows = try await s.keks()
                #expect(rows.map(\.rowID) == [byPath, byPEM, both], "by row id; nothing stored for a refused registration")
                #expect(rows[0].active && rows[0].privEncrypted && rows[0].pubDatafile == "/etc/custos/keys/a.pem")
                #expect(rows[0].privDatafile == "/etc/custos/keys/a.key" && rows[0].publicKeyPEM == nil && rows[0].kekID == nil)
                #expect(!rows[1].active && !rows[1].privEncrypted && rows[1].pubDatafile == nil)
                #expect(rows[1].publicKeyPEM == Self.pem && rows[1].kekID == kekID(7) && rows[1].privDatafile == nil)
                #expect(rows[2].pubDatafile == "/k/c.pem" && rows[2].publicKeyPEM == Self.pem)
                let after = Date()
                for row in rows { expectCreatedAt(row.createdAt, between: before, and: after) }

                try await s.setKEKActive(rowID: byPath, active: false)
                try await s.setKEKActive(rowID: byPEM, active: true)
                try await s.setKEKID(rowID: byPath, kekID: kekID(9))
                rows = try await s.keks()
                #expect(rows.map(\.active) == [false, true, true])
                #expect(rows.map(\.kekID) == [kekID(9), kekID(7), nil])
                #expect(await storageError { try await s.setKEKActive(rowID: both + 100, active: true) }?.code == .notFound)
                #expect(await storageError { try await s.setKEKID(rowID: both + 100, kekID: kekID(1)) }?.code == .notFound)
            }
        }

        /// The seed's statement, typed verbatim into the backend's own client, makes a row the
        /// storage reads: active, path only, no KEK id yet.
        @Test(arguments: Backend.testable)
        func theSeedsInsertWorksVerbatim(_ backend: Backend) async throws {
            try await withRig(backend, "seed") { rig async throws in
                _ = try await rig.storage.registerKEK(KEKRegistration(pubDatafile: "/first.pem", publicKeyPEM: nil,
                                                                      privDatafile: nil, kekID: kekID(3)))
                let before = Date()
                _ = try await rig.cli("insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/etc/custos/keys/publickey.crt', '/etc/custos/keys/keypair.pem');")
                let after = Date()
                let rows = try await rig.storage.keks()
                try #require(rows.count == 2)
                let seeded = rows[1]
                #expect(seeded.rowID > rows[0].rowID)
                #expect(seeded.active && seeded.privEncrypted)
                #expect(seeded.pubDatafile == "/etc/custos/keys/publickey.crt")
                #expect(seeded.privDatafile == "/etc/custos/keys/keypair.pem")
                #expect(seeded.publicKeyPEM == nil && seeded.kekID == nil)
                expectCreatedAt(seeded.createdAt, between: before, and: after)
                // The collector then records the id it computed, and may deactivate it.
                try await rig.storage.setKEKID(rowID: seeded.rowID, kekID: kekID(4))
                try await rig.storage.setKEKActive(rowID: seeded.rowID, active: false)
                #expect(try await rig.storage.keks()[1].kekID == kekID(4))
                #expect(try await !rig.storage.keks()[1].active)
            }
        }

        /// `kekChanges()` ends when the storage closes; a backend that hears outside changes
        /// signals a row inserted with its command-line client, SQLite signals nothing.
        @Test(arguments: Backend.testable)
        func kekChangesEndAtClose(_ backend: Backend) async throws {
            let rig = try await Rig(backend, "kek-changes")
            try await rig.listening()
            let changes = rig.storage.kekChanges()
            let heard = Task {
                var n = 0
                for await _ in changes { n += 1 }
                return n
            }
            _ = try await rig.cli("insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '/etc/custos/keys/publickey.crt', '/etc/custos/keys/keypair.pem');")
            _ = try await rig.storage.registerKEK(KEKRegistration(pubDatafile: "/k.pem", publicKeyPEM: nil, privDatafile: nil, kekID: nil))
            if backend.hearsKEKChanges {
                // Wait for the signal before closing (the stream ends at close, dropping nothing).
                var iterator = rig.storage.kekChanges().makeAsyncIterator()
                _ = try await rig.cli("update encryption_kek set active = false")
                #expect(await iterator.next() != nil)
            }
            await rig.storage.close()
            let count = await heard.value  // finished: the stream ended at close
            if backend.hearsKEKChanges {
                #expect(count >= 1)
            } else {
                #expect(count == 0)
            }
            // A stream asked for after close ends at once.
            for await _ in rig.storage.kekChanges() { Issue.record("a closed storage signalled a KEK change") }
            await rig.close()
        }
    }
}
