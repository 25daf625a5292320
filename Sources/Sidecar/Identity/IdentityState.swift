import Foundation
import Logging
import Synchronization

/// The identity facts every request checks — agent statuses and revoked token ids — held in memory and
/// swapped whole whenever the store changes (here, or on another host through the shared store).
///
/// A shared store can lose its data behind the fleet's back (a Redis restarted without persistence, a
/// flush, a replacement). An empty store must never silently replace a populated snapshot: that would
/// forget every revocation (revoked tokens accepted again) or, with `require_registered_agents`, lock
/// every agent out. So the shared store names its generation (`{sidecar}:epoch`), each snapshot carries
/// it, and a refresh that finds another generation (or none) than the one this sidecar knew keeps the
/// last good snapshot, says so (log, metric, `/readyz`), merges what it knew back into the store —
/// agents and revocations, never overwriting — and only then takes the merged data. The last good
/// snapshot is also kept on disk (`<state.dir>/identity-snapshot.json`), so a sidecar that restarts
/// while the store is empty restores it too.
final class IdentityState: Sendable {
    let store: any IdentityStore
    private let current: Mutex<IdentitySnapshot>
    private let localCopy: String?
    private let logger: Logger?
    private let metrics: GatewayMetrics?
    private let health = Mutex(StoreHealth.ok)

    /// What this sidecar knows of the shared store's data, for `/readyz`.
    enum StoreHealth: Sendable, Equatable {
        case ok
        /// The store lost its data; the last good snapshot is served while it is restored.
        case degraded(String)
        /// Restored from the last good snapshot at this Unix time.
        case restored(at: Int64)

        var text: String {
            switch self {
            case .ok: return "ok"
            case .degraded(let why): return "degraded: \(why); serving the last good snapshot"
            case .restored(let at): return "restored at \(at) from the last good snapshot after the store lost its data"
            }
        }
    }

    init(store: any IdentityStore, localCopy: String? = nil, logger: Logger? = nil, metrics: GatewayMetrics? = nil) {
        self.store = store
        self.localCopy = store.tracksEpochs ? localCopy : nil
        self.logger = logger
        self.metrics = metrics
        current = Mutex(self.localCopy.flatMap(Self.load) ?? IdentitySnapshot())
    }

    var snapshot: IdentitySnapshot { current.withLock { $0 } }
    var storeHealth: StoreHealth { health.withLock { $0 } }

    func refresh() async throws {
        let fresh = try await store.snapshot()
        guard store.tracksEpochs else { return current.withLock { $0 = fresh } }
        let known = snapshot
        guard let epoch = known.epoch else {
            // First contact: a new fleet, or this sidecar's first start. The store's epoch (made now if
            // it has none) is the generation from here on.
            var first = fresh
            first.epoch = try await store.claimEpoch(fresh.epoch ?? Self.newEpoch())
            return accept(first)
        }
        if fresh.epoch == epoch { return accept(fresh) }
        let why = fresh.epoch == nil ? "the shared store has no epoch: its data is gone" : "the shared store's epoch changed: it was replaced"
        health.withLock { $0 = .degraded(why) }
        metrics?.identityDataLoss.increment()
        metrics?.identityDegraded.set(to: 1)
        logger?.error(
            "identity store lost its data; keeping the last good snapshot and restoring it",
            metadata: ["reason": "\(why)", "agents": "\(known.agents.count)", "revocations": "\(known.revoked.count)"])
        // An agent known only by its status (learned from another sidecar's message since the last full
        // load) is restored with what is known of it.
        var restore = known
        let withRecords = Set(known.agentRecords.map(\.id))
        for (id, status) in known.agents where !withRecords.contains(id) {
            restore.agentRecords.append(
                AgentRecord(id: id, name: id, role: "restored", status: status, createdBy: "identity-restore", createdAt: Int64(Date().timeIntervalSince1970)))
        }
        try await store.merge(restore)
        var merged = try await store.snapshot()
        merged.epoch = try await store.claimEpoch(epoch)
        // Whatever raced with the merge, nothing this sidecar knew is dropped.
        merged.formUnion(restore)
        accept(merged)
        health.withLock { $0 = .restored(at: Int64(Date().timeIntervalSince1970)) }
        metrics?.identityDegraded.set(to: 0)
        logger?.notice("identity store restored from the last good snapshot", metadata: ["epoch": "\(merged.epoch ?? "-")"])
    }

    private func accept(_ snapshot: IdentitySnapshot) {
        let changed = current.withLock { s -> Bool in
            defer { s = snapshot }
            return s != snapshot
        }
        if changed, let localCopy { Self.save(snapshot, to: localCopy) }
    }

    func isRevoked(_ jti: String) -> Bool { current.withLock { $0.revoked.contains(jti) } }
    func status(of agent: String) -> AgentRecord.Status? { current.withLock { $0.agents[agent] } }

    /// Applies a local change at once (the store is updated by the caller).
    func apply(_ change: (inout IdentitySnapshot) -> Void) {
        let snapshot = current.withLock { s in
            change(&s)
            return s
        }
        if let localCopy { Self.save(snapshot, to: localCopy) }
    }

    static func newEpoch() -> String { UUID().uuidString.lowercased() }

    static func load(_ path: String) -> IdentitySnapshot? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(IdentitySnapshot.self, from: data)
    }

    /// Written whole to a temporary file and renamed over the old one (0600): never half a snapshot.
    static func save(_ snapshot: IdentitySnapshot, to path: String) {
        guard let data = try? JSONEncoder().encode(snapshot) else { return }
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else { return }
        _ = rename(temporary, path)
    }
}
