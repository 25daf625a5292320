import Testing

@testable import Upstreams

/// The breaker as a pure state machine: fixed clock (ms), fixed "random" for the jitter.
@Suite("Circuit breaker state machine")
struct CircuitBreakerTests {
    static func settings(
        volume: Int = 10, rate: Double = 0.5, consecutive: Int = 5, base: Int64 = 1000, cap: Int64 = 8000, jitter: Double = 0, probes: Int = 1
    ) -> CircuitBreaker.Settings {
        var s = CircuitBreaker.Settings()
        s.windowMilliseconds = 10_000
        s.buckets = 10
        s.minimumVolume = volume
        s.failureRate = rate
        s.consecutiveFailures = consecutive
        s.baseOpenMilliseconds = base
        s.maxOpenMilliseconds = cap
        s.jitter = jitter
        s.halfOpenProbes = probes
        return s
    }

    /// Feeds outcomes one per millisecond from `start`; returns the time after the last one.
    @discardableResult
    static func feed(_ b: inout CircuitBreaker, _ outcomes: [CircuitBreaker.Outcome], start: Int64 = 1_000_000) -> Int64 {
        var t = start
        for o in outcomes {
            _ = b.onRequest(now: t)
            b.onOutcome(o, probe: false, now: t, random: 0.5)
            t += 1
        }
        return t
    }

    struct Row: Sendable, CustomTestStringConvertible {
        var name: String
        var outcomes: [CircuitBreaker.Outcome]
        var opens: Bool
        var testDescription: String { name }
    }

    @Test(arguments: [
        Row(name: "4 failures in a row stay closed (threshold 5)", outcomes: Array(repeating: .failure, count: 4), opens: false),
        Row(name: "5 failures in a row open", outcomes: Array(repeating: .failure, count: 5), opens: true),
        Row(name: "alternating 4 ok / 4 fail under minimum volume stay closed",
            outcomes: [.success, .failure, .success, .failure, .success, .failure, .success, .failure], opens: false),
        Row(name: "50% failures at volume 10 open",
            outcomes: [.success, .failure, .success, .failure, .success, .failure, .success, .failure, .success, .failure], opens: true),
        Row(name: "40% failures at volume 10 stay closed",
            outcomes: [.success, .failure, .success, .failure, .success, .failure, .success, .failure, .success, .success], opens: false),
        Row(name: "429s never trip", outcomes: Array(repeating: .throttled, count: 50), opens: false),
        Row(name: "other 4xx and sidecar refusals never trip", outcomes: Array(repeating: .ignored, count: 50), opens: false),
        Row(name: "429s between failures do not reset the streak",
            outcomes: [.failure, .throttled, .failure, .throttled, .failure, .failure, .ignored, .failure], opens: true),
        Row(name: "with enough recent calls, a run of failures under the failure rate does not trip",
            outcomes: Array(repeating: .success, count: 60) + Array(repeating: .failure, count: 6), opens: false),
        Row(name: "with few recent calls, a run of failures trips even under the failure rate",
            outcomes: Array(repeating: .success, count: 20) + Array(repeating: .failure, count: 5), opens: true),
        Row(name: "at volume, the rate trips",
            outcomes: Array(repeating: .success, count: 20) + Array(repeating: .failure, count: 20), opens: true),
        Row(name: "a success resets the streak", outcomes: [.failure, .failure, .failure, .failure, .success, .failure, .failure, .failure, .failure], opens: false),
    ])
    func tripping(_ row: Row) {
        var b = CircuitBreaker(settings: Self.settings())
        Self.feed(&b, row.outcomes)
        #expect((b.state == .open) == row.opens, "\(row.name)")
    }

    @Test func failuresOutsideTheRollingWindowAreForgotten() {
        var b = CircuitBreaker(settings: Self.settings(volume: 6, consecutive: 100))
        // 3 failures + 2 successes, then 11 s later 3 more failures + 1 success: never 6 in one window.
        var t = Self.feed(&b, [.failure, .failure, .failure, .success, .success])
        t += 11_000
        Self.feed(&b, [.success, .failure, .failure, .failure], start: t)
        #expect(b.state == .closed)
        // Within one window the same mix trips (6 calls, 50% failures).
        var c = CircuitBreaker(settings: Self.settings(volume: 6, consecutive: 100))
        Self.feed(&c, [.failure, .failure, .failure, .success, .success, .success])
        #expect(c.state == .open)
    }

    @Test func anOutageAfterALongHealthyStretchTripsOnTheRecentBuckets() {
        var b = CircuitBreaker(settings: Self.settings(volume: 10, consecutive: 1000))  // runs alone never trip here
        // 8 s of 100 successes per second, then failures at 100 per second.
        for ms in stride(from: Int64(0), to: 8_000, by: 10) {
            _ = b.onRequest(now: ms)
            b.onOutcome(.success, probe: false, now: ms, random: 0.5)
        }
        var tripAt: Int64?
        for ms in stride(from: Int64(8_000), to: 18_000, by: 10) where tripAt == nil {
            _ = b.onRequest(now: ms)
            if b.onOutcome(.failure, probe: false, now: ms, random: 0.5) == .open { tripAt = ms }
        }
        // The whole window (800 successes) would need ~8 s of failures; the recent 2 s need ~1 s.
        let after = (tripAt ?? 99_999) - 8_000
        #expect(after > 0 && after <= 1_500, "tripped \(after) ms after the outage began")
    }

    @Test func aClosedLoopCallerThatSlowsDownIsCaughtByTheRun() {
        // 50 calls/s healthy, then every call fails and the caller slows to 2 calls/s.
        var b = CircuitBreaker(settings: Self.settings())
        for ms in stride(from: Int64(0), to: 10_000, by: 20) {
            _ = b.onRequest(now: ms)
            b.onOutcome(.success, probe: false, now: ms, random: 0.5)
        }
        var tripAt: Int64?
        for ms in stride(from: Int64(10_000), to: 20_000, by: 500) where tripAt == nil {
            _ = b.onRequest(now: ms)
            if b.onOutcome(.failure, probe: false, now: ms, random: 0.5) == .open { tripAt = ms }
        }
        let after = (tripAt ?? 99_999) - 10_000
        #expect(after <= 2_500, "tripped \(after) ms after the outage began")
    }

    @Test func aSteadyThirtyPercentErrorRateNeverTrips() {
        var b = CircuitBreaker(settings: Self.settings())
        var rng = SplitMix64(seed: 30)
        for ms in stride(from: Int64(0), to: 60_000, by: 5) {
            _ = b.onRequest(now: ms)
            b.onOutcome(rng.nextDouble() < 0.3 ? .failure : .success, probe: false, now: ms, random: 0.5)
        }
        #expect(b.state == .closed)
    }

    @Test func openRejectsWithTheRemainingTimeThenAdmitsBoundedProbes() {
        var b = CircuitBreaker(settings: Self.settings(probes: 2))
        let t = Self.feed(&b, Array(repeating: .failure, count: 5))
        let openedAt = t - 1
        #expect(b.reopensAt == openedAt + 1000)
        let r1 = b.onRequest(now: openedAt + 400)
        #expect(r1 == .reject(retryAfterMilliseconds: 600))
        let r2 = b.onRequest(now: openedAt + 1000)
        #expect(r2 == .probe)
        #expect(b.state == .halfOpen)
        let r3 = b.onRequest(now: openedAt + 1001)
        #expect(r3 == .probe)
        let third = b.onRequest(now: openedAt + 1002)
        guard case .reject = third else {
            Issue.record("a third concurrent probe must be refused")
            return
        }
        // One success closes.
        let r4 = b.onOutcome(.success, probe: true, now: openedAt + 1010, random: 0.5)
        #expect(r4 == .closed)
        let r5 = b.onRequest(now: openedAt + 1011)
        #expect(r5 == .allow)
    }

    @Test func aFailedProbeReopensForTwiceAsLongUpToTheCap() {
        var b = CircuitBreaker(settings: Self.settings(base: 1000, cap: 5000))
        var t = Self.feed(&b, Array(repeating: .failure, count: 5))
        var periods: [Int64] = []
        periods.append(b.reopensAt - (t - 1))
        for _ in 0..<4 {
            t = b.reopensAt
            let r6 = b.onRequest(now: t)
            #expect(r6 == .probe)
            b.onOutcome(.failure, probe: true, now: t, random: 0.5)
            #expect(b.state == .open)
            periods.append(b.reopensAt - t)
        }
        #expect(periods == [1000, 2000, 4000, 5000, 5000])
        // Recovery resets the growth.
        t = b.reopensAt
        _ = b.onRequest(now: t)
        b.onOutcome(.success, probe: true, now: t, random: 0.5)
        t = Self.feed(&b, Array(repeating: .failure, count: 5), start: t + 1)
        #expect(b.reopensAt - (t - 1) == 1000)
    }

    @Test(arguments: [(0.0, 800), (0.5, 1000), (0.999_999, 1199)] as [(Double, Int64)])
    func jitterSpreadsTheOpenPeriod(_ random: Double, _ expected: Int64) {
        var b = CircuitBreaker(settings: Self.settings(consecutive: 1, base: 1000, jitter: 0.2))
        _ = b.onRequest(now: 5000)
        b.onOutcome(.failure, probe: false, now: 5000, random: random)
        #expect(b.reopensAt - 5000 == expected)
    }

    @Test func aThrottledOrIgnoredProbeFreesItsSlotWithoutDeciding() {
        var b = CircuitBreaker(settings: Self.settings(consecutive: 1))
        Self.feed(&b, [.failure], start: 0)
        let t = b.reopensAt
        let r7 = b.onRequest(now: t)
        #expect(r7 == .probe)
        let r8 = b.onOutcome(.throttled, probe: true, now: t, random: 0.5)
        #expect(r8 == nil)
        #expect(b.state == .halfOpen)
        let r9 = b.onRequest(now: t + 1)
        #expect(r9 == .probe)
    }

    @Test func theFleetCanForceItOpenButNotShortenIt() {
        var b = CircuitBreaker(settings: Self.settings())
        let r10 = b.forceOpen(until: 10_000, now: 1000)
        #expect(r10 == .open)
        let r11 = b.onRequest(now: 2000)
        #expect(r11 == .reject(retryAfterMilliseconds: 8000))
        let r12 = b.forceOpen(until: 5_000, now: 2000)
        #expect(r12 == nil)
        #expect(b.reopensAt == 10_000)
        let r13 = b.forceOpen(until: 500, now: 2000)
        #expect(r13 == nil)
        let r14 = b.forceOpen(until: 12_000, now: 2000)
        #expect(r14 == nil)
        #expect(b.reopensAt == 12_000)
    }

    @Test func aWaitHintFrom429PausesTheToolUntilItPassesCappedAndNeverTrips() {
        var s = Self.settings()
        s.maxThrottleMilliseconds = 5_000
        var b = CircuitBreaker(settings: s)
        _ = b.onRequest(now: 1_000)
        b.onOutcome(.throttled, probe: false, now: 1_000, random: 0.5)
        b.onThrottleHint(waitMilliseconds: 2_000, now: 1_000)
        let during = b.onRequest(now: 2_500)
        #expect(during == .throttled(retryAfterMilliseconds: 500))
        let after = b.onRequest(now: 3_000)
        #expect(after == .allow && b.state == .closed)
        // A shorter hint never shortens a pause; a huge one is capped.
        b.onThrottleHint(waitMilliseconds: 600_000, now: 4_000)
        b.onThrottleHint(waitMilliseconds: 10, now: 4_000)
        let capped = b.onRequest(now: 4_000)
        #expect(capped == .throttled(retryAfterMilliseconds: 5_000))
        // Zero or negative hints do nothing.
        var c = CircuitBreaker(settings: s)
        c.onThrottleHint(waitMilliseconds: 0, now: 0)
        let zero = c.onRequest(now: 0)
        #expect(zero == .allow)
        // An open breaker answers as open, not throttled.
        var d = CircuitBreaker(settings: Self.settings(consecutive: 1))
        Self.feed(&d, [.failure], start: 0)
        d.onThrottleHint(waitMilliseconds: 100_000, now: 1)
        guard case .reject = d.onRequest(now: 2) else {
            Issue.record("open wins over throttled")
            return
        }
    }

    @Test func gaugeValues() {
        #expect(CircuitBreaker.State.closed.gaugeValue == 0)
        #expect(CircuitBreaker.State.halfOpen.gaugeValue == 1)
        #expect(CircuitBreaker.State.open.gaugeValue == 2)
    }

    @Test func quietMeansNothingWouldBeLostByForgettingIt() {
        let t: Int64 = 1_000_000
        #expect(CircuitBreaker(settings: Self.settings()).isQuiet(now: t))
        var healthy = CircuitBreaker(settings: Self.settings())
        Self.feed(&healthy, [.success, .success], start: t)
        #expect(healthy.isQuiet(now: t + 10))
        var failing = CircuitBreaker(settings: Self.settings())
        Self.feed(&failing, [.success, .failure, .success], start: t)
        #expect(!failing.isQuiet(now: t + 10))  // a failure in the window
        #expect(failing.isQuiet(now: t + 20_000))  // ... until it ages out
        var open = CircuitBreaker(settings: Self.settings())
        Self.feed(&open, Array(repeating: .failure, count: 5), start: t)
        #expect(open.state == .open && !open.isQuiet(now: t + 100_000))
        var throttled = CircuitBreaker(settings: Self.settings())
        throttled.onThrottleHint(waitMilliseconds: 5_000, now: t)
        #expect(!throttled.isQuiet(now: t + 1_000) && throttled.isQuiet(now: t + 6_000))
    }
}
