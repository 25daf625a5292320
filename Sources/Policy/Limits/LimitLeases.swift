/// Exact leases of shared limits: units a sidecar has reserved from the fleet's counters in one atomic
/// step and spends locally, without a round trip per request.
///
/// A lease is a reservation, so the fleet can never admit more than a limit: the shared counter already
/// counts every unit any sidecar holds. What leasing changes is only *who* gets the last units. The
/// store grants at most an eighth of the headroom left (`LimitLeases.share`), so grants shrink as a limit
/// nears and end at one unit per request — the per-request decision — for the last units.
///
/// Per class (a pool per agent and check):
/// - quota and budget: units of the current window; spent by admissions, refunded into the pool, a
///   budget's settlement to real usage taken from or given to the pool; unspent units go back when the
///   pool idles, when the limit changes (a reload), and at shutdown. A window's units die with it.
/// - rate (GCRA): emission slots reserved now; valid for `rateValidity` (a slot spent later than it was
///   reserved can only lower the fleet's rate), then given back (the TAT moves back by their interval).
/// - concurrency: slots (members of the shared lease set, renewed like any lease) held by this sidecar;
///   a call takes one and puts it back when it ends; idle slots go back.
///
/// A value type with time passed in; the caller owns locking and I/O.
public struct LimitLeases: Sendable {
    /// The store grants at most `headroom / share` extra units at a time.
    public static let share = 8
    /// An idle pool's units go back after this long without a local admission (ms).
    public var idleAfter: Int64 = 2_000
    /// Rate slots are spent within this long of their reservation or given back (ms).
    public var rateValidity: Int64 = 250
    /// The most extra units one grant asks for (quota, rate, concurrency); budgets ask in tokens for as
    /// many calls.
    public var maxBatch = 256
    /// How far ahead a grant covers the local spend rate (ms).
    public var horizon: Int64 = 250

    public struct Pool: Sendable, Hashable {
        /// Whose units, and the check's agent-relative key (what a give-back names).
        public var agent = ""
        public var checkKey = ""
        public var kind: LimitCheck.Kind
        /// The limit it was granted under: a different limit (a reload) voids the pool.
        public var limit: Int
        /// Quota/budget: the window the units belong to.
        public var window: String?
        public var windowEnd: Int64 = .max
        /// Units held (quota, budget tokens, rate slots).
        public var units = 0
        /// Concurrency: free slots (lease-set members) held.
        public var slots: [String] = []
        /// Concurrency: slots lent to calls in flight (by the call's lease id).
        public var lent: [String: String] = [:]
        /// Rate: when the held slots were reserved; GCRA interval (µs) for giving them back.
        public var reservedAt: Int64 = 0
        public var intervalMicros: Double = 0
        /// The headroom the store last reported beyond what this pool holds (for rate-limit headers).
        public var remaining = 0
        public var lastUsed: Int64 = 0
        /// Admissions in the current second and the last, for the batch size.
        public var callsThisSecond = 0
        public var callsLastSecond = 0
        public var second: Int64 = 0
        /// Cost of one call (budget: its token reservation), for the batch size.
        public var callCost = 1
        /// A background refill is in flight.
        public var refilling = false

        mutating func count(now: Int64, cost: Int) {
            let s = now / 1000
            if s != second {
                callsLastSecond = s == second + 1 ? callsThisSecond : 0
                callsThisSecond = 0
                second = s
            }
            callsThisSecond += 1
            lastUsed = now
            callCost = cost
        }

        var isEmpty: Bool { units == 0 && slots.isEmpty && lent.isEmpty }
    }

    /// Units (or slots) to give back to the shared store.
    public struct GiveBack: Sendable, Hashable {
        public var agent: String
        public var kind: LimitCheck.Kind
        /// The check's agent-relative key.
        public var key: String
        /// Quota/budget: the window id the units were counted in.
        public var window: String?
        public var units = 0
        public var slots: [String] = []
        public var intervalMicros: Double = 0
    }

    /// A local admission's bookkeeping, to settle it locally.
    public private(set) var pools: [String: Pool] = [:]
    /// Give-backs found on the request path (a reload voided a pool), taken by the maintenance loop.
    public private(set) var pending: [GiveBack] = []
    /// Slots lent from a pool that a reload voided, by the call's lease id: given back when it ends.
    private var orphans: [String: GiveBack] = [:]

    /// The classes leased (`state.lease`); the others are decided by the store on every request.
    public var classes: Set<LimitCheck.Kind>

    public init(classes: Set<LimitCheck.Kind> = Set(LimitCheck.Kind.allCases)) { self.classes = classes }

    static func poolKey(_ agent: String, _ check: LimitCheck) -> String { "\(agent)|\(check.key)" }

    /// Whether a check can be leased: its class is, and it is enforce-mode (a report-mode check's
    /// would-deny must be decided by the store each time).
    func leasable(_ check: LimitCheck) -> Bool { check.mode == .enforce && classes.contains(check.kind) }

    /// What the pools decided for a request: per check, the pool's result when a unit was taken
    /// locally (nil: the store must decide that check), and the extra units to ask the store for.
    public struct Decision: Sendable {
        public var taken: [LimitResult?]
        public var wants: [Int]
        /// Pools that served this request and run low: checks to refill now, in the background, before
        /// they run dry (otherwise every request arriving during the refill's round trip would go to the
        /// store). At most one refill per pool is in flight.
        public var refill: [(index: Int, want: Int)] = []
        public var isLocal: Bool { taken.allSatisfy { $0 != nil } }
    }

    /// Takes a unit from the pool of every check that has one; the store decides the others (and,
    /// in the same call, grants what `wants` asks). Units taken here are put back by `rollback` when the
    /// store refuses the request, so nothing is counted for a refused request.
    public mutating func decide(agent: String, checks: [LimitCheck], leaseID: String, now: Int64) -> Decision {
        guard !checks.isEmpty, checks.allSatisfy(leasable) else {
            return Decision(taken: Array(repeating: nil, count: checks.count), wants: Array(repeating: 0, count: checks.count))
        }
        var taken: [LimitResult?] = []
        var wants: [Int] = []
        var refill: [(index: Int, want: Int)] = []
        taken.reserveCapacity(checks.count)
        wants.reserveCapacity(checks.count)
        for (index, check) in checks.enumerated() {
            let key = Self.poolKey(agent, check)
            if let pool = pools[key], pool.limit != check.limit || pool.kind != check.kind {
                void(key, agent: agent, check: check)
            }
            guard let i = pools.index(forKey: key) else {
                taken.append(nil)
                wants.append(check.kind == .concurrency ? 1 : 0)
                continue
            }
            // In place: a copy of the pool would copy its slot arrays on write (measured: a third of
            // the Redis mode's CPU before this).
            let step = Self.take(&pools.values[i], check, leaseID: leaseID, now: now, tuning: tuning)
            taken.append(step.result)
            wants.append(step.result == nil ? step.wanted : 0)
            if step.refill { refill.append((index, step.wanted)) }
        }
        return Decision(taken: taken, wants: wants, refill: refill)
    }

    /// The settings `take` and `want` read (passed whole, so they can run on a pool held in place).
    struct Tuning {
        var rateValidity: Int64
        var maxBatch: Int
        var horizon: Int64
    }

    var tuning: Tuning { Tuning(rateValidity: rateValidity, maxBatch: maxBatch, horizon: horizon) }

    /// Takes one call's unit from `pool` when it has one; says what to ask for, and whether to refill.
    static func take(_ pool: inout Pool, _ check: LimitCheck, leaseID: String, now: Int64, tuning: Tuning) -> (result: LimitResult?, wanted: Int, refill: Bool) {
        pool.count(now: now, cost: check.cost)
        var result: LimitResult?
        switch check.kind {
        case .concurrency:
            if let slot = pool.slots.popLast() {
                pool.lent[leaseID] = slot
                result = LimitResult(allowed: true, remaining: pool.remaining + pool.slots.count, resetMilliseconds: 0)
            }
        case .rate:
            if pool.units > 0, now - pool.reservedAt < tuning.rateValidity {
                pool.units -= 1
                result = LimitResult(allowed: true, remaining: pool.remaining + pool.units, resetMilliseconds: 0)
            }
        case .quota, .budget:
            let w = LimitState.windowChoice(check.window!, now: now)
            if pool.window != w.id {
                // A window that is over takes its units with it; units of a window not yet begun here
                // (the store's clock ahead of this host's) wait, or go back when the pool idles.
                if now >= pool.windowEnd {
                    pool.units = 0
                    pool.window = nil
                }
            } else if pool.units >= check.cost {
                pool.units -= check.cost
                result = LimitResult(allowed: true, remaining: pool.remaining + pool.units, resetMilliseconds: w.end - now, windowIndex: w.index)
            }
        }
        let wanted = want(check, pool, now: now, tuning: tuning)
        var refill = false
        // Near the limit (headroom under `share`) nothing is refilled: a refill takes a unit for itself,
        // and the last units must go to calls, decided one by one.
        if result != nil, !pool.refilling, wanted > 0, pool.remaining >= share, lowWater(check, pool, wanted: wanted) {
            pool.refilling = true
            refill = true
        }
        return (result, wanted, refill)
    }

    /// Admits from the pools when every check can be; nil when the store must decide (units taken
    /// for some checks are put back).
    public mutating func admit(agent: String, checks: [LimitCheck], leaseID: String, now: Int64) -> Admission? {
        let d = decide(agent: agent, checks: checks, leaseID: leaseID, now: now)
        guard d.isLocal else {
            rollback(agent: agent, checks: checks, taken: d.taken, leaseID: leaseID)
            return nil
        }
        return Admission(admitted: true, results: d.taken.map { $0! }, leaseID: leaseID)
    }

    /// Puts back the units `decide` took for a request the store then refused.
    public mutating func rollback(agent: String, checks: [LimitCheck], taken: [LimitResult?], leaseID: String) {
        for (check, result) in zip(checks, taken) where result != nil {
            guard let i = pools.index(forKey: Self.poolKey(agent, check)) else { continue }
            switch check.kind {
            case .concurrency:
                if let slot = pools.values[i].lent.removeValue(forKey: leaseID) { pools.values[i].slots.append(slot) }
            case .rate:
                pools.values[i].units += 1
            case .quota, .budget:
                pools.values[i].units += check.cost
            }
        }
    }

    /// Whether a pool that still serves has fallen below half of what it should hold.
    static func lowWater(_ check: LimitCheck, _ pool: Pool, wanted: Int) -> Bool {
        let held = check.kind == .concurrency ? pool.slots.count : pool.units
        return held < wanted  // `wanted` = target − held: below half the target
    }

    /// Free concurrency slots worth holding: half the calls this sidecar has in flight, at least two.
    static func slotTarget(_ pool: Pool, maxBatch: Int) -> Int { min(maxBatch, max(2, pool.lent.count / 2 + 1)) }

    /// The extra units to ask for a check the pool could not serve: the local spend over `horizon`,
    /// less what the pool holds (concurrency: up to `slotTarget` free slots).
    static func want(_ check: LimitCheck, _ pool: Pool, now: Int64, tuning: Tuning) -> Int {
        guard pool.limit == check.limit else { return 0 }
        if check.kind == .concurrency { return max(0, slotTarget(pool, maxBatch: tuning.maxBatch) - pool.slots.count) }
        let recent = now / 1000 == pool.second ? max(pool.callsThisSecond, pool.callsLastSecond) : pool.callsThisSecond
        let calls = min(tuning.maxBatch, Int((Int64(recent) * tuning.horizon + 999) / 1000))
        return max(0, calls * max(1, check.cost) - pool.units)
    }

    /// The extra units to ask the store for with a request it must decide wholly.
    public func wants(agent: String, checks: [LimitCheck], now: Int64) -> [Int] {
        guard checks.allSatisfy(leasable) else { return Array(repeating: 0, count: checks.count) }
        return checks.map { check in
            guard let pool = pools[Self.poolKey(agent, check)] else { return check.kind == .concurrency ? 1 : 0 }
            return Self.want(check, pool, now: now, tuning: tuning)
        }
    }

    /// Records what the store granted beyond the request's own need (`extras`, per check), the
    /// concurrency slots named `<leaseID>#<n>`.
    ///
    /// `refill`: a background refill (no call of its own): the units it was granted for its "own" need go
    /// into the pool too, and the pool may refill again.
    public mutating func granted(agent: String, checks: [LimitCheck], admission: Admission, extras: [Int], now: Int64, refill: Bool = false) {
        if refill {
            for check in checks { pools[Self.poolKey(agent, check)]?.refilling = false }
        }
        guard admission.admitted, !admission.local else { return }
        for (i, check) in checks.enumerated() where leasable(check) {
            let key = Self.poolKey(agent, check)
            if let pool = pools[key], pool.limit != check.limit || pool.kind != check.kind { void(key, agent: agent, check: check) }
            var pool: Pool
            if let existing = pools[key] {
                pool = existing  // `decide` counted this call
            } else {
                pool = Pool(agent: agent, checkKey: check.key, kind: check.kind, limit: check.limit)
                pool.count(now: now, cost: check.cost)
            }
            let extra = i < extras.count ? extras[i] : 0
            let result = admission.results[i]
            pool.remaining = max(0, result.remaining - extra)
            switch check.kind {
            case .concurrency:
                if refill { pool.slots.append(admission.leaseID) }
                if extra > 0 { pool.slots += (1...extra).map { "\(admission.leaseID)#\($0)" } }
            case .rate:
                let units = extra + (refill ? 1 : 0)
                if units > 0 {
                    if pool.units > 0, now - pool.reservedAt >= rateValidity {
                        pending.append(giveBack(pool))
                        pool.units = 0
                    }
                    pool.units += units
                    pool.reservedAt = now
                    pool.intervalMicros = check.gcra.interval * 1000
                }
            case .quota, .budget:
                let w = check.window!
                let window = result.windowIndex == 0 ? w.currentID : w.nextID
                if pool.window != window {
                    if pool.units > 0, now < pool.windowEnd { pending.append(giveBack(pool)) }
                    pool.units = 0
                    pool.window = window
                    pool.windowEnd = result.windowIndex == 0 ? w.currentEnd : w.nextEnd
                }
                pool.units += extra + (refill ? check.cost : 0)
            }
            pools[key] = pool
        }
    }

    /// Settles what can be settled locally (a lent slot back to its pool, a refund into the pool, a
    /// budget's correction from or to the pool); returns what the store must still settle, or nil.
    public mutating func settle(agent: String, _ s: Settlement, now: Int64) -> Settlement? {
        var rest = s
        rest.checks = []
        rest.results = []
        var budgetUsage: Int?
        for (check, result) in zip(s.checks, s.results) {
            let index = pools.index(forKey: Self.poolKey(agent, check))
            var settled = false
            switch check.kind {
            case .concurrency:
                if let i = index, let slot = pools.values[i].lent.removeValue(forKey: s.leaseID) {
                    pools.values[i].slots.append(slot)
                    settled = true
                } else if let orphan = orphans.removeValue(forKey: s.leaseID) {
                    pending.append(orphan)
                    settled = true
                } else if let i = index, pools.values[i].limit == check.limit, !s.local, result.remaining >= Self.share, leasable(check),
                    pools.values[i].slots.count < Self.slotTarget(pools.values[i], maxBatch: maxBatch)
                {
                    // A slot the store gave this call, far from the limit: kept for the next call here
                    // instead of released (the pool gives it back when it idles).
                    pools.values[i].slots.append(s.leaseID)
                    settled = true
                }
            case .rate:
                settled = true
            case .quota, .budget:
                let w = check.window!
                let window = result.windowIndex == 0 ? w.currentID : w.nextID
                let same = index.map { pools.values[$0].window == window && pools.values[$0].limit == check.limit } == true && !s.local
                var delta = 0
                switch s.outcome {
                case .refunded: delta = -check.cost
                case .completed(let usage?) where check.kind == .budget: delta = usage - check.cost
                case .completed: delta = 0
                }
                if delta == 0 {
                    settled = true
                } else if same, let i = index, delta < 0 {
                    pools.values[i].units += -delta
                    settled = true
                } else if same, let i = index, delta > 0 {
                    let taken = min(delta, pools.values[i].units)
                    pools.values[i].units -= taken
                    if taken == delta { settled = true } else if check.kind == .budget { budgetUsage = check.cost + delta - taken }
                }
            }
            if !settled {
                rest.checks.append(check)
                rest.results.append(result)
            }
        }
        guard !rest.checks.isEmpty else { return nil }
        if let budgetUsage { rest.outcome = .completed(usage: budgetUsage) }
        return rest
    }

    /// Pools that idled, rate slots past their validity, pools voided by a reload: what to give back.
    /// Windows that ended are dropped (their units died with them).
    public mutating func expired(now: Int64) -> [GiveBack] {
        var out = pending
        pending = []
        for (key, pool) in pools {
            var p = pool
            if (p.kind == .quota || p.kind == .budget), now >= p.windowEnd {
                p.units = 0
                p.window = nil
            }
            let idle = now - p.lastUsed >= idleAfter
            if p.kind == .rate, p.units > 0, idle || now - p.reservedAt >= rateValidity {
                out.append(giveBack(p))
                p.units = 0
            } else if idle, p.units > 0 || !p.slots.isEmpty {
                out.append(giveBack(p))
                p.units = 0
                p.slots = []
            } else if p.kind == .concurrency, p.slots.count > 2 * Self.slotTarget(p, maxBatch: maxBatch) {
                // More free slots than the calls here need: the rest go back for other sidecars.
                let keep = Self.slotTarget(p, maxBatch: maxBatch)
                var excess = giveBack(p)
                excess.slots = Array(p.slots[keep...])
                out.append(excess)
                p.slots.removeSubrange(keep...)
            }
            if p.isEmpty, idle { pools[key] = nil } else { pools[key] = p }
        }
        return out
    }

    /// Everything held, given back (shutdown). Slots lent to calls still running are left to their
    /// settlement (or their lease's expiry).
    public mutating func drain() -> [GiveBack] {
        var out = pending
        pending = []
        for (key, pool) in pools where pool.units > 0 || !pool.slots.isEmpty {
            out.append(giveBack(pool))
            pools[key]?.units = 0
            pools[key]?.slots = []
        }
        return out
    }

    /// Every concurrency slot this sidecar holds (free or lent), by agent and check key: renewed together.
    public var heldSlots: [(agent: String, key: String, slots: [String])] {
        var out: [(agent: String, key: String, slots: [String])] = pools.values.compactMap { pool in
            guard pool.kind == .concurrency, !pool.slots.isEmpty || !pool.lent.isEmpty else { return nil }
            return (pool.agent, pool.checkKey, pool.slots + pool.lent.values)
        }
        for orphan in orphans.values { out.append((orphan.agent, orphan.key, orphan.slots)) }
        return out
    }

    /// Whether this call holds a slot lent from a pool (renewed with the pool's, not by its lease id).
    public func isLent(_ leaseID: String) -> Bool {
        orphans[leaseID] != nil || pools.values.contains { $0.lent[leaseID] != nil }
    }

    private func giveBack(_ pool: Pool) -> GiveBack {
        GiveBack(
            agent: pool.agent, kind: pool.kind, key: pool.checkKey, window: pool.window, units: pool.units, slots: pool.slots,
            intervalMicros: pool.intervalMicros)
    }

    /// A pool granted under another limit (a reload): its free units go back, its lent slots are given
    /// back as they return.
    private mutating func void(_ key: String, agent: String, check: LimitCheck) {
        guard let pool = pools[key] else { return }
        if pool.units > 0 || !pool.slots.isEmpty {
            var g = giveBack(pool)
            if pool.kind == .rate, pool.units > 0 { g.intervalMicros = pool.intervalMicros }
            pending.append(g)
        }
        for (leaseID, slot) in pool.lent {
            orphans[leaseID] = GiveBack(agent: agent, kind: .concurrency, key: check.key, slots: [slot])
        }
        pools[key] = nil
    }
}
