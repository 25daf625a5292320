import Foundation
import Testing

@testable import Policy

@Suite("GCRA")
struct GCRATests {
    /// A tiny deterministic generator so property runs are reproducible.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test func burstThenSteadyRate() {
        let g = GCRA(limit: 10, periodMilliseconds: 1000, burst: 5)
        var tat: Double? = nil
        var allowed = 0
        for _ in 0..<20 {
            let o = g.attempt(now: 0, tat: tat)
            if o.allowed { allowed += 1; tat = o.tat }
        }
        #expect(allowed == 5, "exactly the burst at one instant")
        let refused = g.attempt(now: 0, tat: tat)
        #expect(!refused.allowed && abs(refused.retryAfter - 100) < 0.001, "next slot one interval later")
        #expect(g.attempt(now: 100, tat: tat).allowed)
    }

    /// Property: from idle, in any span t at most burst + ⌊t / T⌋ requests pass (never burst × period),
    /// and a client that waits for its retry hint always gets through.
    @Test(arguments: [(1, 1000.0, 1), (10, 1000.0, 5), (20, 1000.0, 20), (3, 60_000.0, 2), (100, 1000.0, 1)])
    func neverMoreThanBurstPlusRate(_ limit: Int, _ period: Double, _ burst: Int) {
        let g = GCRA(limit: limit, periodMilliseconds: period, burst: burst)
        var rng = SplitMix(state: UInt64(limit * 7919 + burst))
        for _ in 0..<50 {
            var tat: Double? = nil
            var now = 0.0
            var times: [Double] = []
            for _ in 0..<400 {
                now += Double(rng.next() % UInt64(max(1, Int(g.interval * 2))))
                let o = g.attempt(now: now, tat: tat)
                if o.allowed {
                    tat = o.tat
                    times.append(now)
                } else {
                    #expect(o.retryAfter > 0)
                    #expect(g.attempt(now: now + o.retryAfter + 0.001, tat: tat).allowed)
                }
            }
            // Any window [times[i], times[i] + t] holds at most burst + floor(t / T) allowed requests.
            for i in times.indices {
                var j = i
                while j < times.count, times[j] - times[i] <= period { j += 1 }
                let count = j - i
                #expect(count <= burst + Int((period / g.interval).rounded(.down)), "window from \(times[i])")
            }
        }
    }
}

@Suite("Time windows and calendar windows")
struct TimeTests {
    let ny = TimeZone(identifier: "America/New_York")!

    func date(_ iso: String) -> Date { ISO8601DateFormatter().date(from: iso)! }

    @Test func businessHoursAcrossSpringForward() {
        // 2026-03-08 02:00 EST → 03:00 EDT. 09:00-17:00 local on Mon-Fri and on that Sunday.
        let w = TimeWindow(timeZone: ny, days: [1, 2, 3, 4, 5, 7], ranges: [TimeWindow.parseRange("09:00-17:00")!])
        #expect(w.contains(date("2026-03-08T13:30:00Z")), "09:30 EDT")
        #expect(!w.contains(date("2026-03-08T12:30:00Z")), "08:30 EDT (would be 07:30 with a fixed offset)")
        #expect(w.contains(date("2026-03-07T14:30:00Z")) == false, "Saturday")
        #expect(w.contains(date("2026-03-06T14:30:00Z")), "Friday 09:30 EST")
        #expect(!w.contains(date("2026-03-06T13:30:00Z")), "Friday 08:30 EST")
    }

    @Test func businessHoursAcrossFallBack() {
        // 2026-11-01 02:00 EDT → 01:00 EST.
        let w = TimeWindow(timeZone: ny, days: [1, 2, 3, 4, 5, 6, 7], ranges: [TimeWindow.parseRange("09:00-17:00")!])
        #expect(w.contains(date("2026-11-01T14:00:00Z")), "09:00 EST")
        #expect(!w.contains(date("2026-11-01T13:30:00Z")), "08:30 EST")
        #expect(w.contains(date("2026-10-31T13:30:00Z")), "09:30 EDT the day before")
    }

    @Test func overnightRangesWrap() {
        let utc = TimeZone(identifier: "UTC")!
        let w = TimeWindow(timeZone: utc, days: [5], ranges: [TimeWindow.parseRange("22:00-06:00")!])  // Friday night
        #expect(w.contains(date("2026-11-20T23:00:00Z")), "Friday 23:00")
        #expect(w.contains(date("2026-11-21T05:00:00Z")), "Saturday 05:00 belongs to Friday's range")
        #expect(!w.contains(date("2026-11-21T23:00:00Z")), "Saturday 23:00")
    }

    @Test func dayWindowsFollowLocalDaysAcrossDST() {
        let w = CalendarWindow(period: .day, timeZone: ny)
        let spring = w.window(containing: date("2026-03-08T12:00:00Z"))
        #expect(spring.id == "d2026-03-08" && spring.end - spring.start == 23 * 3_600_000)
        let fall = w.window(containing: date("2026-11-01T12:00:00Z"))
        #expect(fall.id == "d2026-11-01" && fall.end - fall.start == 25 * 3_600_000)
        // 04:59 UTC on Nov 2 is still Nov 1 in New York (EST, UTC-5).
        #expect(w.window(containing: date("2026-11-02T04:59:00Z")).id == "d2026-11-01")
        #expect(w.window(containing: date("2026-11-02T05:00:00Z")).id == "d2026-11-02")
    }

    @Test func windowBoundariesAndTheNextWindow() {
        let utc = TimeZone(identifier: "UTC")!
        let (cur, next) = CalendarWindow(period: .hour, timeZone: utc).windows(around: date("2026-11-22T21:59:59Z"))
        #expect(cur.id == "h2026-11-22T21" && next.id == "h2026-11-22T22" && next.start == cur.end)
        #expect(CalendarWindow(period: .week, timeZone: utc).window(containing: date("2026-11-22T12:00:00Z")).id == "w2026-47")
        #expect(CalendarWindow(period: .week, timeZone: utc).window(containing: date("2026-11-23T00:00:00Z")).id == "w2026-48", "ISO weeks start on Monday")
        let month = CalendarWindow(period: .month, timeZone: utc).window(containing: date("2026-02-10T00:00:00Z"))
        #expect(month.id == "m2026-02" && month.end - month.start == 28 * 86_400_000)
    }

    /// `windows(around:)` remembers the last answer per kind: it must still match the calendar for
    /// dates in any order — forwards over a boundary, backwards, across a DST change.
    @Test(arguments: [CalendarPeriod.hour, .day, .week, .month])
    func rememberedWindowsMatchTheCalendar(_ period: CalendarPeriod) {
        let w = CalendarWindow(period: period, timeZone: TimeZone(identifier: "America/New_York")!)
        let dates = [
            "2026-11-01T05:59:59Z", "2026-11-01T06:00:00Z", "2026-11-01T03:59:59Z", "2026-11-02T04:59:59Z", "2026-11-02T05:00:00Z",
            "2026-11-01T12:00:00Z", "2026-03-08T06:59:59Z", "2026-03-08T07:00:00Z", "2026-12-01T04:59:59Z", "2026-12-01T05:00:00Z",
            "2026-11-30T23:00:00Z",
        ]
        for text in dates {
            let d = date(text)
            let (cur, next) = w.windows(around: d)
            let expected = w.window(containing: d)
            #expect(cur.id == expected.id && cur.start == expected.start && cur.end == expected.end, "\(period) at \(text)")
            #expect(next.start == cur.end && next.id == w.window(containing: Date(timeIntervalSince1970: Double(cur.end) / 1000)).id)
        }
    }
}

@Suite("Limit state")
struct LimitStateTests {
    static func quota(_ limit: Int, cost: Int = 1, end: Int64 = 10_000) -> LimitCheck {
        var c = LimitCheck(kind: .quota, mode: .enforce, key: "q:serpapi:search:day", limit: limit)
        c.cost = cost
        c.window = .init(currentID: "d1", currentEnd: end, nextID: "d2", nextEnd: end * 2)
        return c
    }

    @Test func quotaCountsOnlyAdmittedCallsAndRefundsOnRequest() {
        var s = LimitState()
        var admitted = 0
        for i in 0..<5 {
            if s.admit(agent: "a", checks: [Self.quota(3)], leaseID: "l\(i)", now: 100).admitted { admitted += 1 }
        }
        #expect(admitted == 3)
        let refused = s.admit(agent: "a", checks: [Self.quota(3)], leaseID: "x", now: 100)
        #expect(!refused.admitted && refused.results[0].resetMilliseconds == 9_900)
        let other = s.admit(agent: "b", checks: [Self.quota(3)], leaseID: "y", now: 100)
        #expect(other.admitted, "quotas are per agent")
        s.settle(agent: "b", Settlement(checks: [Self.quota(3)], admission: other, outcome: .refunded), now: 100)
        #expect(s.counters["b|q:serpapi:search:day|d1"]?.used == 0)
        #expect(s.admit(agent: "a", checks: [Self.quota(3)], leaseID: "z", now: 10_000).admitted, "the next window starts fresh")
    }

    @Test func anEnforcedRefusalCountsNothing() {
        var s = LimitState()
        var rate = LimitCheck(kind: .rate, mode: .enforce, key: "r", limit: 1)
        rate.periodMilliseconds = 1000
        _ = s.admit(agent: "a", checks: [rate], leaseID: "1", now: 0)
        let refused = s.admit(agent: "a", checks: [Self.quota(10), rate], leaseID: "2", now: 0)
        #expect(!refused.admitted && refused.results[0].allowed && !refused.results[1].allowed)
        #expect(s.counters["a|q:serpapi:search:day|d1"] == nil, "the quota was not charged for a refused call")
    }

    @Test func reportModeCountsButNeverRefuses() {
        var s = LimitState()
        var q = Self.quota(1)
        q.mode = .report
        #expect(s.admit(agent: "a", checks: [q], leaseID: "1", now: 0).admitted)
        let second = s.admit(agent: "a", checks: [q], leaseID: "2", now: 0)
        #expect(second.admitted && !second.results[0].allowed, "would deny")
    }

    @Test func budgetsSettleToRealUsage() {
        var s = LimitState()
        var b = LimitCheck(kind: .budget, mode: .enforce, key: "b:openai:chat:day", limit: 1000)
        b.cost = 600
        b.window = .init(currentID: "d1", currentEnd: 10_000, nextID: "d2", nextEnd: 20_000)
        let first = s.admit(agent: "a", checks: [b], leaseID: "1", now: 0)
        #expect(first.admitted)
        #expect(!s.admit(agent: "a", checks: [b], leaseID: "2", now: 0).admitted, "600 reserved, 600 more does not fit")
        s.settle(agent: "a", Settlement(checks: [b], admission: first, outcome: .completed(usage: 120)), now: 1)
        #expect(s.counters["a|b:openai:chat:day|d1"]?.used == 120)
        #expect(s.admit(agent: "a", checks: [b], leaseID: "3", now: 2).admitted)
    }

    /// An upstream's usage is taken at its word (up to 9e15 tokens a call): piling such settlements
    /// pins the counter at exhausted instead of overflowing it.
    @Test func budgetSettlementsSaturateInsteadOfOverflowing() {
        var s = LimitState()
        var b = LimitCheck(kind: .budget, mode: .enforce, key: "b", limit: 1000)
        b.cost = 1
        b.window = .init(currentID: "d1", currentEnd: 10_000, nextID: "d2", nextEnd: 20_000)
        let admissions = (0..<3).map { s.admit(agent: "a", checks: [b], leaseID: "\($0)", now: 0) }
        for admission in admissions {
            s.settle(agent: "a", Settlement(checks: [b], admission: admission, outcome: .completed(usage: Int.max / 2)), now: 1)
        }
        #expect(s.counters["a|b|d1"]?.used == Int.max)
        let refused = s.admit(agent: "a", checks: [b], leaseID: "4", now: 2)
        #expect(!refused.admitted && refused.results[0].remaining == 0)
        b.mode = .report  // counted even though it would deny: still no overflow
        #expect(s.admit(agent: "a", checks: [b], leaseID: "5", now: 2).admitted)
        #expect(s.counters["a|b|d1"]?.used == Int.max)
    }

    @Test func concurrencyLeasesAreReleasedAndExpire() {
        var s = LimitState()
        let c = LimitCheck(kind: .concurrency, mode: .enforce, key: "c", limit: 2)
        let a1 = s.admit(agent: "a", checks: [c], leaseID: "1", now: 0, leaseTTL: 1000)
        _ = s.admit(agent: "a", checks: [c], leaseID: "2", now: 0, leaseTTL: 1000)
        #expect(!s.admit(agent: "a", checks: [c], leaseID: "3", now: 0, leaseTTL: 1000).admitted)
        s.settle(agent: "a", Settlement(checks: [c], admission: a1, outcome: .completed(usage: nil)), now: 10)
        #expect(s.admit(agent: "a", checks: [c], leaseID: "4", now: 10, leaseTTL: 1000).admitted)
        #expect(s.admit(agent: "a", checks: [c], leaseID: "5", now: 2000, leaseTTL: 1000).admitted, "a crashed holder's lease expires")
    }
}
