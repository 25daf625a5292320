import Synchronization

/// The identity facts every request checks — agent statuses and revoked token ids — held in memory and
/// swapped whole whenever the store changes (here, or on another host through the shared store).
final class IdentityState: Sendable {
    let store: any IdentityStore
    private let current = Mutex(IdentitySnapshot())

    init(store: any IdentityStore) { self.store = store }

    var snapshot: IdentitySnapshot { current.withLock { $0 } }

    func refresh() async throws {
        let fresh = try await store.snapshot()
        current.withLock { $0 = fresh }
    }

    func isRevoked(_ jti: String) -> Bool { current.withLock { $0.revoked.contains(jti) } }
    func status(of agent: String) -> AgentRecord.Status? { current.withLock { $0.agents[agent] } }

    /// Applies a local change at once (the store is updated by the caller).
    func apply(_ change: (inout IdentitySnapshot) -> Void) { current.withLock { change(&$0) } }
}
