import Logging
import NIOCore
import Policy
import Synchronization

/// Redis-shared limits spent from exact local leases (`LimitLeases`): a request whose every check this
/// sidecar holds units for is decided here, without a round trip; the others go to Redis as before and
/// ask, in the same script call, for a batch sized to the local spend rate and capped at an eighth of
/// the headroom. Unspent units go back when a pool idles (2 s), when a reload changes a limit, and at
/// shutdown; concurrency slots held are renewed like any lease, so a crashed sidecar's free and idle
/// slots come back within `state.concurrency_lease`.
final class LeasedLimitStore: LoopLimitStore {
    let inner: RedisLimitStore
    private let leases: Mutex<LimitLeases>
    private let now: @Sendable () -> Int64
    private let leaseTTL: Duration
    private let logger: Logger
    private let metrics: GatewayMetrics?

    init(
        inner: RedisLimitStore, classes: Set<LimitCheck.Kind>, leaseTTL: Duration, metrics: GatewayMetrics? = nil, logger: Logger,
        now: @escaping @Sendable () -> Int64 = unixMillis
    ) {
        self.inner = inner
        self.metrics = metrics
        leases = Mutex(LimitLeases(classes: classes))
        self.leaseTTL = leaseTTL
        self.logger = logger
        self.now = now
    }

    func admit(agent: String, checks: [LimitCheck], leaseID: String) async throws -> Admission {
        let d = decide(agent: agent, checks: checks, leaseID: leaseID)
        refill(agent, checks, d, leaseID, on: nil)
        guard let store = storePart(checks, d) else { return Admission(admitted: true, results: d.taken.map { $0! }, leaseID: leaseID) }
        do {
            let decided = try await inner.admit(agent: agent, checks: store.checks, leaseID: leaseID, wants: store.wants)
            return merge(agent, checks, d, store, decided)
        } catch {
            rollback(agent, checks, d, leaseID)
            throw error
        }
    }

    func admit(agent: String, checks: [LimitCheck], leaseID: String, on loop: any EventLoop) -> EventLoopFuture<Admission>? {
        let d = decide(agent: agent, checks: checks, leaseID: leaseID)
        refill(agent, checks, d, leaseID, on: loop)
        guard let store = storePart(checks, d) else {
            return loop.makeSucceededFuture(Admission(admitted: true, results: d.taken.map { $0! }, leaseID: leaseID))
        }
        guard let sent = inner.admit(agent: agent, checks: store.checks, leaseID: leaseID, wants: store.wants, on: loop) else {
            // No live connection on this loop: the caller takes the async path, which decides afresh.
            rollback(agent, checks, d, leaseID)
            return nil
        }
        return sent.map { decided in self.merge(agent, checks, d, store, decided) }.flatMapErrorThrowing { error in
            self.rollback(agent, checks, d, leaseID)
            throw error
        }
    }

    private func decide(agent: String, checks: [LimitCheck], leaseID: String) -> LimitLeases.Decision {
        let now = self.now()
        let d = leases.withLock { $0.decide(agent: agent, checks: checks, leaseID: leaseID, now: now) }
        (d.isLocal ? metrics?.leaseLocal : metrics?.leaseStore)?.increment()
        return d
    }

    /// Tops up pools that run low, in the background: one script call (a request of its own, lease id
    /// `<request>~r`) whose grant goes whole into the pools. From the loop when its connection is up.
    private func refill(_ agent: String, _ checks: [LimitCheck], _ d: LimitLeases.Decision, _ leaseID: String, on loop: (any EventLoop)?) {
        guard !d.refill.isEmpty else { return }
        let subset = d.refill.map { checks[$0.index] }
        let wants = d.refill.map(\.want)
        let id = leaseID + "~r"
        let apply: @Sendable ((admission: Admission, extras: [Int])?) -> Void = { decided in
            if let a = decided?.admission, a.admitted, a.local {
                // Redis was away and the failure policy's local limiter answered: a refill has no call
                // to spend it on, so it is given straight back.
                Task { try? await self.inner.settle(agent: agent, Settlement(checks: subset, admission: a, outcome: .refunded)) }
            }
            let now = self.now()
            self.leases.withLock { l in
                l.granted(
                    agent: agent, checks: subset, admission: decided?.admission ?? Admission(admitted: false, results: [], leaseID: id),
                    extras: decided?.extras ?? [], now: now, refill: true)
            }
        }
        if let loop, let sent = inner.admit(agent: agent, checks: subset, leaseID: id, wants: wants, on: loop) {
            sent.whenComplete { result in apply(try? result.get()) }
            return
        }
        Task { apply(try? await self.inner.admit(agent: agent, checks: subset, leaseID: id, wants: wants)) }
    }

    /// The checks the pools could not serve, with what to ask for; nil when they served all.
    private func storePart(_ checks: [LimitCheck], _ d: LimitLeases.Decision) -> (indices: [Int], checks: [LimitCheck], wants: [Int])? {
        guard !d.isLocal else { return nil }
        let indices = d.taken.indices.filter { d.taken[$0] == nil }
        return (indices, indices.map { checks[$0] }, indices.map { d.wants[$0] })
    }

    private func rollback(_ agent: String, _ checks: [LimitCheck], _ d: LimitLeases.Decision, _ leaseID: String) {
        leases.withLock { $0.rollback(agent: agent, checks: checks, taken: d.taken, leaseID: leaseID) }
    }

    /// The store's decision on its part, joined with what the pools took: one admission for the whole
    /// request. Refused → the pools' units go back (nothing counted for a refused request).
    private func merge(
        _ agent: String, _ checks: [LimitCheck], _ d: LimitLeases.Decision, _ store: (indices: [Int], checks: [LimitCheck], wants: [Int]),
        _ decided: (admission: Admission, extras: [Int])
    ) -> Admission {
        var results = d.taken.map { $0 ?? LimitResult(allowed: true, remaining: 0, resetMilliseconds: 0) }
        for (j, i) in store.indices.enumerated() where j < decided.admission.results.count { results[i] = decided.admission.results[j] }
        let admission = Admission(admitted: decided.admission.admitted, results: results, leaseID: decided.admission.leaseID, local: decided.admission.local)
        if !admission.admitted {
            rollback(agent, checks, d, admission.leaseID)
        } else if !admission.local {
            let now = self.now()
            let part = Admission(admitted: true, results: decided.admission.results, leaseID: admission.leaseID)
            leases.withLock { $0.granted(agent: agent, checks: store.checks, admission: part, extras: decided.extras, now: now) }
        }
        return admission
    }

    func settle(agent: String, _ settlement: Settlement) async throws {
        let now = self.now()
        guard let rest = leases.withLock({ $0.settle(agent: agent, settlement, now: now) }) else { return }
        try await inner.settle(agent: agent, rest)
    }

    func settleSoon(agent: String, _ settlement: Settlement, on loop: any EventLoop) {
        let now = self.now()
        guard let rest = leases.withLock({ $0.settle(agent: agent, settlement, now: now) }) else { return }
        inner.settleSoon(agent: agent, rest, on: loop)
    }

    /// Calls on lent slots are renewed with their pool; the others as before.
    func renew(agent: String, leaseIDs: [String]) async throws {
        let own = leases.withLock { l in leaseIDs.filter { !l.isLent($0) } }
        guard !own.isEmpty else { return }
        try await inner.renew(agent: agent, leaseIDs: own)
    }

    /// Gives back what idled or expired (every 100 ms) and renews the slots held (every sixth of the
    /// lease TTL); at shutdown gives back everything still held.
    func runMaintenance() async {
        var lastRenewal = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
            if Task.isCancelled { break }
            let now = self.now()
            await giveBack(leases.withLock { $0.expired(now: now) })
            if ContinuousClock.now - lastRenewal >= leaseTTL / 6 {
                lastRenewal = .now
                for held in leases.withLock({ $0.heldSlots }) {
                    do { try await inner.renew(agent: held.agent, leaseIDs: held.slots) } catch {
                        logger.warning("cannot renew leased concurrency slots", metadata: ["slots": "\(held.slots.count)", "error": "\(error)"])
                    }
                }
            }
        }
        // Outside the cancelled task, as the embedded store's last flush.
        let drained = leases.withLock { $0.drain() }
        await Task { await self.giveBack(drained) }.value
    }

    private func giveBack(_ items: [LimitLeases.GiveBack]) async {
        guard !items.isEmpty else { return }
        do { try await inner.giveBack(items) } catch {
            // Not given back: the units stay counted until their window ends (slots: until their TTL).
            logger.warning("cannot give back leased limit units", metadata: ["items": "\(items.count)", "error": "\(error)"])
        }
    }
}
