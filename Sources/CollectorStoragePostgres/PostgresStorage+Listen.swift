import CustosBase
import Logging
import PostgresNIO

struct ListenerEnded: Error {}

extension PostgresStorage {
    /// Keeps one connection outside the pool in `LISTEN custos_kek_changed` and turns each
    /// notification into a ``kekChanges()`` signal, until cancelled. A lost connection is
    /// logged once (``RepeatedErrorLog``), retried on ``Configuration/listenerBackoff``, and its
    /// recovery logged once; after a reconnect every subscriber is signalled once, since
    /// changes made meanwhile were not heard (PostgreSQL keeps no notification for a listener
    /// that is not connected).
    func listenForKEKChanges() async {
        var schedule = RetrySchedule(configuration.listenerBackoff)
        var connectedBefore = false
        while !Task.isCancelled {
            do {
                let conn = try await PostgresConnection.connect(configuration: connectionConfiguration,
                                                                id: connectionIDs.add(1, ordering: .relaxed).oldValue,
                                                                logger: Self.quiet)
                do {
                    try await conn.listen(on: PostgresSchema.kekChannel) { notifications in
                        schedule.succeeded()
                        if connectedBefore {
                            broadcastKEKChange()
                        }
                        connectedBefore = true
                        listenerErrors.success("\(location): KEK change listener: listening again", logger: logger)
                        for try await _ in notifications { broadcastKEKChange() }
                    }
                } catch {
                    try? await conn.close()
                    throw error
                }
                try? await conn.close()
                if Task.isCancelled { return }
                throw ListenerEnded()
            } catch {
                if Task.isCancelled { return }
                let problem: String
                if let e = error as? PSQLError, let mapped = Self.classify(e, location: location, what: "KEK change listener") {
                    problem = mapped.message
                } else if error is ListenerEnded {
                    problem = "\(location): KEK change listener: the server ended the connection"
                } else if let e = error as? PSQLError {
                    problem = "\(location): KEK change listener: connection lost (\(e.code))"
                } else {
                    problem = "\(location): KEK change listener: \(Self.connectFailure(error))"
                }
                // One key for every failure of the listener: an outage (terminated, then refused,
                // then "starting up") is logged once, and its recovery once.
                listenerErrors.failure("\(problem); new KEK rows are seen only on the registry's next read until it reconnects",
                                       key: "kek-listener", level: .warning, logger: logger)
                do { try await Task.sleep(for: schedule.failed()) } catch { return }
            }
        }
    }
}
