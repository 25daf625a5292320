import Logging
import Policy
import Synchronization

/// A concurrency slot a running call holds. While any copy of the call's admission holds this object,
/// the renewer keeps the slot's lease alive; when the call settles (or its admission is dropped without
/// settling, a bug the TTL then bounds), renewal stops.
final class HeldLease: Sendable {
    let agent: String
    let leaseID: String

    init(agent: String, leaseID: String) {
        self.agent = agent
        self.leaseID = leaseID
    }
}

/// Keeps the concurrency leases of long calls (a streamed completion, a slow fetch) from expiring under
/// them. A lease is admitted with `state.concurrency_lease` to live; every third of that, the leases
/// held longer than a third are extended in one store call per agent. A sidecar that dies stops
/// renewing, so its slots free within the TTL — short by default (30 s), where a fixed 5-minute lease
/// used to pin a crashed holder's slots that long.
///
/// Calls shorter than a third of the TTL (nearly all) cost one dictionary insert and remove.
final class LeaseRenewer: Sendable {
    private struct Entry {
        weak var lease: HeldLease?
        var agent: String
        var renewedAt: ContinuousClock.Instant
    }

    private let held = Mutex<[String: Entry]>([:])
    let store: any LimitStore
    let ttl: Duration
    private let logger: Logger

    init(store: any LimitStore, ttl: Duration, logger: Logger) {
        self.store = store
        self.ttl = ttl
        self.logger = logger
    }

    func hold(agent: String, leaseID: String) -> HeldLease {
        let lease = HeldLease(agent: agent, leaseID: leaseID)
        let now = ContinuousClock.now
        held.withLock { $0[leaseID] = Entry(lease: lease, agent: agent, renewedAt: now) }
        return lease
    }

    func release(_ lease: HeldLease) {
        _ = held.withLock { $0.removeValue(forKey: lease.leaseID) }
    }

    var count: Int { held.withLock { $0.count } }

    /// The leases due for renewal, by agent; forgets leases whose call is gone.
    func due(now: ContinuousClock.Instant) -> [String: [String]] {
        held.withLock { held in
            var due: [String: [String]] = [:]
            for (id, entry) in held {
                guard entry.lease != nil else {
                    held[id] = nil
                    continue
                }
                if now - entry.renewedAt >= ttl / 3 {
                    due[entry.agent, default: []].append(id)
                    held[id]?.renewedAt = now
                }
            }
            return due
        }
    }

    /// Renews what is due. A failed renewal (the store away) is logged; the lease then lives out its
    /// TTL and the next round tries again.
    func renewDue() async {
        for (agent, ids) in due(now: .now) {
            do { try await store.renew(agent: agent, leaseIDs: ids) } catch {
                logger.warning("cannot renew concurrency leases", metadata: ["leases": "\(ids.count)", "error": "\(error)"])
            }
        }
    }

    func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: ttl / 6)
            if Task.isCancelled { return }
            await renewDue()
        }
    }
}
