import CollectorStorage
import CustosBase
import Foundation
import Synchronization

/// Agent tokens the database accepted within the last ``ttl``, so that an agent uploading every
/// second is looked up in `agents` about once per ``ttl`` instead of once per upload
/// (docs/STORAGE.md "Agent tokens: the look-up cache").
///
/// Safe because: only an acceptance is remembered (a wrong or unknown token always goes to the
/// database, and a new token works at once); an entry holds the agent id and the stored SHA-256
/// (what `agents.token_hash` holds, no secret) and is compared with the presented token's digest
/// in constant time (``AgentToken/matches(_:storedHash:)``), so only that exact token is accepted;
/// an entry expires ``ttl`` after the look-up was *sent*, so a token rotated or an agent removed
/// in the database — by any process — is refused within ``ttl`` of the change's commit; a rotation
/// or removal through this instance forgets the agent at once (a look-up in flight across it is
/// not remembered). Memory: one entry per agent that uploaded within ``ttl``; expired entries are
/// dropped whenever the table has doubled since the last sweep.
final class VerifiedTokens: Sendable {
    /// How long an acceptance is trusted; zero: never (every call asks the database).
    let ttl: Duration

    private struct Entry {
        var hash: Data
        var until: ContinuousClock.Instant
    }
    private struct State {
        var entries: [String: Entry] = [:]
        /// Bumped by every ``forget(_:)``: a look-up that started before it is not remembered.
        var generation = 0
        var sweepAt = 1024
    }
    private let state = Mutex(State())

    init(ttl: Duration) { self.ttl = ttl }

    /// A look-up about to be sent: when it was sent and the generation then.
    struct Ticket {
        fileprivate let sent: ContinuousClock.Instant
        fileprivate let generation: Int
    }

    func ticket() -> Ticket { Ticket(sent: .now, generation: state.withLock { $0.generation }) }

    /// Whether `token` is the one the database accepted for `agent` within ``ttl``.
    func accepts(_ agent: AgentID, _ token: Secret) -> Bool {
        guard ttl > .zero else { return false }
        let now = ContinuousClock.now
        guard let entry = state.withLock({ s -> Entry? in
            guard let e = s.entries[agent.rawValue] else { return nil }
            if e.until <= now { s.entries[agent.rawValue] = nil; return nil }
            return e
        }) else { return false }
        return AgentToken.matches(token, storedHash: entry.hash)
    }

    /// Remembers that the database holds `hash` for `agent` (the look-up of `ticket` accepted
    /// the token), until ``ttl`` after the look-up was sent; nothing when an agent was forgotten
    /// since it was sent.
    func remember(_ agent: AgentID, hash: Data, _ ticket: Ticket) {
        guard ttl > .zero else { return }
        let until = ticket.sent.advanced(by: ttl)
        let now = ContinuousClock.now
        state.withLock { s in
            guard s.generation == ticket.generation, until > now else { return }
            s.entries[agent.rawValue] = Entry(hash: hash, until: until)
            if s.entries.count >= s.sweepAt {
                s.entries = s.entries.filter { $0.value.until > now }
                s.sweepAt = max(1024, s.entries.count * 2)
            }
        }
    }

    /// Forgets `agent` (its token was rotated or it was removed through this instance).
    func forget(_ agent: AgentID) {
        state.withLock { s in
            s.entries[agent.rawValue] = nil
            s.generation += 1
        }
    }
}
