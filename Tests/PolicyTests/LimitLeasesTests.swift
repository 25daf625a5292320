import Testing

@testable import Policy

/// Leases of shared limits: exact by construction (a fleet never admits more than a limit), batches
/// that shrink to one unit near the limit, and every way units go back.
@Suite("Limit leases")
struct LimitLeasesTests {
    static let window = LimitCheck.WindowPair(currentID: "d1", currentEnd: 86_400_000, nextID: "d2", nextEnd: 172_800_000)

    static func quota(_ limit: Int, cost: Int = 1, kind: LimitCheck.Kind = .quota) -> LimitCheck {
        var c = LimitCheck(kind: kind, mode: .enforce, key: "q:serpapi:search", limit: limit)
        c.cost = cost
        c.window = window
        return c
    }

    static let slots = LimitCheck(kind: .concurrency, mode: .enforce, key: "c", limit: 100)

    /// The shared store as the admission script decides: the request's own cost, plus up to an eighth
    /// of the headroom left as extras; give-backs decrement.
    struct SharedQuota {
        var used = 0
        var admitted = 0

        mutating func decide(_ check: LimitCheck, want: Int) -> (Admission, Int)? {
            guard used + check.cost <= check.limit else { return nil }
            let remaining = check.limit - used - check.cost
            let extra = min(want, remaining / LimitLeases.share)
            used += check.cost + extra
            return (Admission(admitted: true, results: [LimitResult(allowed: true, remaining: remaining, resetMilliseconds: 1)], leaseID: "x"), extra)
        }
    }

    /// One sidecar's admission against the shared quota: from its pool, else from the store.
    static func call(_ leases: inout LimitLeases, _ store: inout SharedQuota, _ check: LimitCheck, id: String, now: Int64) -> Bool {
        if leases.admit(agent: "a", checks: [check], leaseID: id, now: now) != nil {
            store.admitted += check.cost
            return true
        }
        let want = leases.wants(agent: "a", checks: [check], now: now)[0]
        guard let decided = store.decide(check, want: want) else { return false }
        var admission = decided.0
        let extra = decided.1
        admission.leaseID = id
        leases.granted(agent: "a", checks: [check], admission: admission, extras: [extra], now: now)
        store.admitted += check.cost
        return true
    }

    @Test func batchesGrowWithTheSpendRateAndShrinkNearTheLimit() {
        var leases = LimitLeases()
        var store = SharedQuota()
        let q = Self.quota(10_000)
        var storeCalls = 0
        for i in 0..<10_000 {
            let before = store.used
            #expect(Self.call(&leases, &store, q, id: "r\(i)", now: Int64(i / 10)))  // 10 000 calls/s
            if store.used != before { storeCalls += 1 }
        }
        #expect(store.admitted == 10_000 && store.used == 10_000, "every unit admitted, none lost")
        #expect(storeCalls < 500, "most calls decided from the pool: \(storeCalls) store calls")
        #expect(!Self.call(&leases, &store, q, id: "over", now: 1000), "the limit holds")
    }

    /// Property: three sidecars in any interleaving, one of them crashing with a lease held, never admit
    /// more than the limit; the live ones admit every unit not stranded by the crash.
    @Test(arguments: [7, 50, 333, 1000])
    func aFleetNeverAdmitsMoreThanTheLimit(limit: Int) {
        var rng = GCRATests.SplitMix(state: UInt64(limit))
        var fleet = [LimitLeases(), LimitLeases(), LimitLeases()]
        var store = SharedQuota()
        let q = Self.quota(limit)
        var now: Int64 = 0
        var crashedHeld = 0
        for i in 0..<(limit * 3) {
            now += Int64(rng.next() % 3)
            let s = Int(rng.next() % 3)
            if s == 2, i == limit / 2 {
                // Crash: whatever it held is stranded (counted, never spent).
                crashedHeld = fleet[2].pools.values.reduce(0) { $0 + $1.units }
                fleet[2] = LimitLeases()
            }
            _ = Self.call(&fleet[s], &store, q, id: "r\(i)", now: now)
            #expect(store.admitted <= limit)
        }
        // The live sidecars give back what they hold; then the fleet admits exactly the rest.
        for s in 0..<2 {
            for g in fleet[s].drain() { store.used -= g.units }
        }
        while Self.call(&fleet[0], &store, q, id: "tail", now: now) {}
        #expect(store.admitted == limit - crashedHeld, "exact but for what the crash stranded")
        #expect(store.used == limit)
    }

    @Test func refundsAndBudgetSettlementsStayInThePool() {
        var leases = LimitLeases()
        var store = SharedQuota()
        let budget = Self.quota(100_000, cost: 1000, kind: .budget)
        for i in 0..<40 { _ = Self.call(&leases, &store, budget, id: "w\(i)", now: Int64(i)) }
        let held = leases.pools["a|q:serpapi:search"]!.units
        #expect(held > 0)
        let admitted = leases.admit(agent: "a", checks: [budget], leaseID: "b1", now: 40)!
        // Used 300 of the 1000 reserved: 700 back into the pool, nothing for the store to settle.
        let used = Settlement(checks: [budget], admission: admitted, outcome: .completed(usage: 300))
        #expect(leases.settle(agent: "a", used, now: 41) == nil)
        #expect(leases.pools["a|q:serpapi:search"]!.units == held - 300)
        // Used more than the pool holds: the pool pays what it can, the store the rest.
        let big = leases.admit(agent: "a", checks: [budget], leaseID: "b2", now: 42)!
        let poolNow = leases.pools["a|q:serpapi:search"]!.units
        let rest = leases.settle(agent: "a", Settlement(checks: [budget], admission: big, outcome: .completed(usage: 1000 + poolNow + 5)), now: 43)
        #expect(rest?.outcome == .completed(usage: 1005) && leases.pools["a|q:serpapi:search"]!.units == 0)
        // A refund goes back into the pool.
        let refunded = Settlement(checks: [budget], admission: admitted, outcome: .refunded)
        #expect(leases.settle(agent: "a", refunded, now: 44) == nil && leases.pools["a|q:serpapi:search"]!.units == 1000)
    }

    @Test func unitsGoBackWhenIdleOnAReloadAndAtTheWindowsEnd() {
        var leases = LimitLeases()
        var store = SharedQuota()
        let q = Self.quota(10_000)
        for i in 0..<100 { _ = Self.call(&leases, &store, q, id: "r\(i)", now: Int64(i)) }
        let held = leases.pools["a|q:serpapi:search"]!.units
        #expect(held > 0 && leases.expired(now: 200).isEmpty, "not idle yet")
        // A reload halving the limit: the pool is void at the next call; its units go back.
        let halved = Self.quota(5_000)
        #expect(leases.admit(agent: "a", checks: [halved], leaseID: "h", now: 300) == nil)
        #expect(leases.expired(now: 301) == [LimitLeases.GiveBack(agent: "a", kind: .quota, key: "q:serpapi:search", window: "d1", units: held)])
        // Idle: everything goes back.
        for i in 0..<100 { _ = Self.call(&leases, &store, q, id: "s\(i)", now: 400 + Int64(i)) }
        let again = leases.pools["a|q:serpapi:search"]!.units
        #expect(leases.expired(now: 499 + leases.idleAfter).map(\.units) == [again])
        // A window that ended takes its units with it (nothing to give back to a dead window).
        for i in 0..<100 { _ = Self.call(&leases, &store, q, id: "t\(i)", now: 3000 + Int64(i)) }
        #expect(leases.admit(agent: "a", checks: [q], leaseID: "late", now: Self.window.currentEnd) == nil)
        #expect(leases.expired(now: Self.window.currentEnd + 1).isEmpty)
    }

    @Test func concurrencySlotsAreLentAndKeptFarFromTheLimitOnly() {
        var leases = LimitLeases()
        // The store gave the first call its slot and 3 extra (`<lease>#n`).
        let first = Admission(admitted: true, results: [LimitResult(allowed: true, remaining: 60, resetMilliseconds: 0)], leaseID: "r1")
        leases.granted(agent: "a", checks: [Self.slots], admission: first, extras: [3], now: 0)
        #expect(leases.heldSlots.first?.slots.sorted() == ["r1#1", "r1#2", "r1#3"])
        let lent = leases.admit(agent: "a", checks: [Self.slots], leaseID: "r2", now: 1)
        #expect(lent != nil && leases.isLent("r2"))
        #expect(leases.settle(agent: "a", Settlement(checks: [Self.slots], admission: lent!, outcome: .completed(usage: nil)), now: 2) == nil)
        // The store's own slot for r1: the pool already holds the free slots its calls need → released.
        #expect(leases.settle(agent: "a", Settlement(checks: [Self.slots], admission: first, outcome: .completed(usage: nil)), now: 3) != nil)
        // With every pooled slot lent, a store slot far from the limit is kept; near the limit it is released.
        let busy = (4...6).map { leases.admit(agent: "a", checks: [Self.slots], leaseID: "r\($0)", now: 4)! }
        #expect(leases.heldSlots.first?.slots.count == 3 && busy.count == 3)
        let far = Admission(admitted: true, results: [LimitResult(allowed: true, remaining: 60, resetMilliseconds: 0)], leaseID: "r7")
        #expect(leases.settle(agent: "a", Settlement(checks: [Self.slots], admission: far, outcome: .completed(usage: nil)), now: 5) == nil)
        let near = Admission(admitted: true, results: [LimitResult(allowed: true, remaining: 2, resetMilliseconds: 0)], leaseID: "r9")
        #expect(leases.settle(agent: "a", Settlement(checks: [Self.slots], admission: near, outcome: .completed(usage: nil)), now: 5) != nil)
        // Idle: the free slot goes back; the lent ones stay until their calls end, then return to the pool.
        let back = leases.expired(now: 5 + leases.idleAfter)
        #expect(back.count == 1 && back[0].slots == ["r7"])
        #expect(leases.heldSlots.first?.slots.count == 3)
        for b in busy {
            #expect(leases.settle(agent: "a", Settlement(checks: [Self.slots], admission: b, outcome: .completed(usage: nil)), now: 6) == nil)
        }
    }

    @Test func rateSlotsAreSpentSoonOrGivenBack() {
        var leases = LimitLeases()
        var rate = LimitCheck(kind: .rate, mode: .enforce, key: "r:serpapi:search", limit: 1000)
        rate.periodMilliseconds = 1000
        rate.burst = 100
        let admission = Admission(admitted: true, results: [LimitResult(allowed: true, remaining: 90, resetMilliseconds: 0)], leaseID: "r1")
        leases.granted(agent: "a", checks: [rate], admission: admission, extras: [5], now: 0)
        #expect(leases.admit(agent: "a", checks: [rate], leaseID: "r2", now: 10) != nil)
        #expect(leases.admit(agent: "a", checks: [rate], leaseID: "r3", now: leases.rateValidity) == nil, "too late to spend")
        let back = leases.expired(now: leases.rateValidity)
        #expect(back.map(\.units) == [4] && back[0].intervalMicros == 1000)
    }

    @Test func reportModeAndUnleasedClassesAlwaysGoToTheStore() {
        var leases = LimitLeases(classes: [.quota])
        var report = Self.quota(100)
        report.mode = .report
        #expect(leases.wants(agent: "a", checks: [report], now: 0) == [0])
        let admission = Admission(admitted: true, results: [LimitResult(allowed: true, remaining: 90, resetMilliseconds: 0)], leaseID: "r1")
        leases.granted(agent: "a", checks: [Self.slots], admission: admission, extras: [5], now: 0)
        #expect(leases.heldSlots.isEmpty, "concurrency is not leased here")
    }

    @Test func aPoolThatCanServeTakesItsUnitAndGivesItBackWhenTheStoreRefuses() {
        var leases = LimitLeases()
        let q = Self.quota(100)
        let first = Admission(
            admitted: true, results: [LimitResult(allowed: true, remaining: 90, resetMilliseconds: 0), LimitResult(allowed: true, remaining: 90, resetMilliseconds: 1)],
            leaseID: "r1")
        leases.granted(agent: "a", checks: [Self.slots, q], admission: first, extras: [4, 0], now: 0)
        let d = leases.decide(agent: "a", checks: [Self.slots, q], leaseID: "r2", now: 1)
        #expect(d.taken[0] != nil && d.taken[1] == nil && !d.isLocal, "a slot from the pool; the quota from the store")
        #expect(d.wants[0] == 0 && leases.isLent("r2"))
        leases.rollback(agent: "a", checks: [Self.slots, q], taken: d.taken, leaseID: "r2")
        #expect(!leases.isLent("r2") && leases.heldSlots.first?.slots.count == 4, "refused: the slot is back")
    }
}
