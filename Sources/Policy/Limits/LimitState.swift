/// The counters of one host, and the admission algorithm over them — the same semantics the Redis
/// script implements, so the embedded store, the Redis store and the local fallback limiter agree.
/// A value type with the time passed in; the caller owns locking and persistence.
public struct LimitState: Sendable {
    /// GCRA theoretical arrival times, by `agent|key`, in unix ms.
    public var tats: [String: Double] = [:]
    /// Quota and budget usage by `agent|key|window`, with the window's end (for expiry).
    public var counters: [String: Counter] = [:]
    /// Concurrency leases by `agent`: lease id → expiry (unix ms).
    public var leases: [String: [String: Int64]] = [:]

    public struct Counter: Sendable, Hashable {
        public var used: Int
        public var expires: Int64
        public init(used: Int, expires: Int64) {
            self.used = used
            self.expires = expires
        }

        /// Counts `cost` in the window ending at `expires`; an expired counter starts over.
        mutating func bump(by cost: Int, now: Int64, expires end: Int64) {
            if expires <= now { self = Counter(used: 0, expires: end) }
            used = used.addingSaturated(cost)
        }
    }

    public init() {}

    /// Counter keys touched since the last `takeDirty()` (for write-behind persistence).
    public private(set) var dirty: Set<String> = []

    public mutating func takeDirty() -> Set<String> {
        defer { dirty = [] }
        return dirty
    }

    /// Gives back keys whose write failed, so the next flush writes them (with their values then).
    public mutating func markDirty(_ keys: some Sequence<String>) { dirty.formUnion(keys) }

    static func windowChoice(_ w: LimitCheck.WindowPair, now: Int64) -> (index: Int, id: String, end: Int64) {
        now < w.currentEnd ? (0, w.currentID, w.currentEnd) : (1, w.nextID, w.nextEnd)
    }

    /// Decides every check; applies them only if no enforce-mode check refuses.
    ///
    /// What each check would apply (its key, a rate check's new TAT, a window's end) is worked out once,
    /// in the deciding pass; leases are counted and added in place (expired ones are dropped only when
    /// some are found).
    public mutating func admit(agent: String, checks: [LimitCheck], leaseID: String, now: Int64, leaseTTL: Int64 = 300_000) -> Admission {
        var results: [LimitResult] = []
        results.reserveCapacity(checks.count)
        var plan: [(key: String, tat: Double, end: Int64)] = []
        plan.reserveCapacity(checks.count)
        var expiredLeases = false
        var admitted = true
        for check in checks {
            let result: LimitResult
            switch check.kind {
            case .concurrency:
                var live = 0
                for (_, expiry) in leases[agent] ?? [:] {
                    if expiry > now { live += 1 } else { expiredLeases = true }
                }
                let ok = live < check.limit
                result = LimitResult(allowed: ok, remaining: max(0, check.limit - live - (ok ? 1 : 0)), resetMilliseconds: ok ? 0 : 1000)
                plan.append(("", 0, 0))
            case .rate:
                let key = "\(agent)|\(check.key)"
                let outcome = check.gcra.attempt(now: Double(now), tat: tats[key])
                result = LimitResult(allowed: outcome.allowed, remaining: outcome.remaining, resetMilliseconds: Int64(outcome.retryAfter.rounded(.up)))
                plan.append((key, outcome.tat, 0))
            case .quota, .budget:
                let w = Self.windowChoice(check.window!, now: now)
                let key = "\(agent)|\(check.key)|\(w.id)"
                let used = counters[key].map { $0.expires > now ? $0.used : 0 } ?? 0
                // Written so that a saturated counter (Int.max, see `settle`) cannot overflow.
                let ok = used <= check.limit - check.cost
                result = LimitResult(
                    allowed: ok, remaining: ok ? check.limit - check.cost - used : max(0, check.limit - used), resetMilliseconds: w.end - now,
                    windowIndex: w.index)
                plan.append((key, 0, w.end))
            }
            if !result.allowed, check.mode == .enforce { admitted = false }
            results.append(result)
        }
        guard admitted else { return Admission(admitted: false, results: results, leaseID: leaseID) }
        for (i, check) in checks.enumerated() {
            let step = plan[i]
            switch check.kind {
            case .concurrency:
                if expiredLeases {
                    leases[agent] = leases[agent]?.filter { $0.value > now }
                    expiredLeases = false
                }
                leases[agent, default: [:]][leaseID] = now + leaseTTL
            case .rate:
                guard results[i].allowed else { continue }
                tats[step.key] = step.tat
            case .quota, .budget:
                counters[step.key, default: Counter(used: 0, expires: step.end)].bump(by: check.cost, now: now, expires: step.end)
                dirty.insert(step.key)
            }
        }
        return Admission(admitted: true, results: results, leaseID: leaseID)
    }

    public mutating func settle(agent: String, _ s: Settlement, now: Int64) {
        for (check, result) in zip(s.checks, s.results) {
            switch check.kind {
            case .concurrency:
                leases[agent]?[s.leaseID] = nil
            case .rate:
                break
            case .quota, .budget:
                let window = check.window!
                let id = result.windowIndex == 0 ? window.currentID : window.nextID
                let key = "\(agent)|\(check.key)|\(id)"
                guard var c = counters[key] else { continue }
                switch s.outcome {
                case .refunded:
                    c.used = max(0, c.used - check.cost)
                case .completed(let usage?) where check.kind == .budget:
                    // Saturating: the usage is the upstream's word (up to 9e15 tokens a call), and a
                    // counter past Int.max must pin at "exhausted", not trap.
                    c.used = max(0, c.used.addingSaturated(usage - check.cost))
                case .completed:
                    continue
                }
                counters[key] = c
                dirty.insert(key)
            }
        }
    }

    /// Extends the concurrency leases of calls still running to `now + ttl` (a lease already gone —
    /// settled, or expired because its holder stopped renewing — stays gone).
    public mutating func renew(agent: String, leaseIDs: [String], now: Int64, ttl: Int64) {
        for id in leaseIDs where leases[agent]?[id] != nil { leases[agent]?[id] = now + ttl }
    }

    /// Drops expired counters, leases and idle rate state.
    public mutating func prune(now: Int64) {
        counters = counters.filter { $0.value.expires > now }
        for (agent, l) in leases {
            let live = l.filter { $0.value > now }
            leases[agent] = live.isEmpty ? nil : live
        }
        tats = tats.filter { $0.value > Double(now) }
    }
}

