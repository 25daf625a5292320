/// A circuit breaker as a value-type state machine with the time passed in (milliseconds), driven by
/// classified outcomes — never by error message text.
///
/// - closed: requests pass; outcomes go into a rolling window (buckets). It trips when the failure rate
///   reaches `failureRate` over the whole window (with at least `minimumVolume` calls) or over its most
///   recent fifth (with at least 5 × `minimumVolume`), or after `consecutiveFailures` failures in a row
///   unless that recent fifth holds enough calls for its rate to decide.
/// - open: requests are refused at once (`retryAfter`), for an open period that grows exponentially with
///   each consecutive trip (`baseOpen` × 2ⁿ, capped at `maxOpen`) with ± `jitter` so a fleet does not
///   probe in lockstep.
/// - half-open: at most `halfOpenProbes` probes pass at a time; one success closes, one failure re-opens.
///
/// 429 answers slow the tool down instead (they count as neither success nor failure; a wait hint pauses
/// the tool until it passes, see `onThrottleHint`); other 4xx and failures the sidecar caused never count.
public struct CircuitBreaker: Sendable, Hashable {
    public struct Settings: Sendable, Hashable {
        public var windowMilliseconds: Int64 = 10_000
        public var buckets = 10
        public var minimumVolume = 10
        public var failureRate = 0.5
        public var consecutiveFailures = 5
        public var baseOpenMilliseconds: Int64 = 2_000
        public var maxOpenMilliseconds: Int64 = 60_000
        /// Fraction of the open period added or removed at random.
        public var jitter = 0.2
        public var halfOpenProbes = 1
        /// Longest pause a 429's wait hint may impose on the whole tool.
        public var maxThrottleMilliseconds: Int64 = 60_000

        public init() {}
    }

    public enum State: String, Sendable, Hashable {
        case closed
        case halfOpen = "half_open"
        case open
        /// Metric value: 0 closed, 1 half-open, 2 open.
        public var gaugeValue: Int { self == .closed ? 0 : (self == .halfOpen ? 1 : 2) }
    }

    public enum Outcome: Sendable, Hashable {
        case success
        /// 5xx, timeout, connect error.
        case failure
        /// 429: slow down, do not trip.
        case throttled
        /// Other 4xx, or refused by the sidecar itself: not the upstream's health.
        case ignored
    }

    public enum Decision: Sendable, Hashable {
        case allow
        /// Half-open probe: report its outcome with `probe: true`.
        case probe
        case reject(retryAfterMilliseconds: Int64)
        /// The upstream answered 429 with a wait hint that has not passed: hold every call until then.
        case throttled(retryAfterMilliseconds: Int64)
    }

    public let settings: Settings
    public private(set) var state = State.closed
    private var successes: [Int]
    private var failures: [Int]
    private var bucketStart: Int64 = 0
    private var consecutive = 0
    private var trips = 0
    private var openUntil: Int64 = 0
    private var probesInFlight = 0
    private var throttledUntil: Int64 = 0

    public init(settings: Settings = Settings()) {
        self.settings = settings
        successes = Array(repeating: 0, count: settings.buckets)
        failures = Array(repeating: 0, count: settings.buckets)
    }

    /// When an open breaker lets the next probe through (unix ms), for `Retry-After` and fleet sharing.
    public var reopensAt: Int64 { openUntil }

    /// Asks whether a request may go out now. `random` in [0, 1) drives the jitter of a new open period.
    public mutating func onRequest(now: Int64) -> Decision {
        if state != .open, now < throttledUntil { return .throttled(retryAfterMilliseconds: throttledUntil - now) }
        switch state {
        case .closed:
            return .allow
        case .open:
            guard now >= openUntil else { return .reject(retryAfterMilliseconds: openUntil - now) }
            state = .halfOpen
            probesInFlight = 0
            return takeProbe(now: now)
        case .halfOpen:
            return takeProbe(now: now)
        }
    }

    private mutating func takeProbe(now: Int64) -> Decision {
        guard probesInFlight < settings.halfOpenProbes else { return .reject(retryAfterMilliseconds: 1000) }
        probesInFlight += 1
        return .probe
    }

    /// Records an outcome. Returns the new state when it changed (for logs and metrics).
    @discardableResult
    public mutating func onOutcome(_ outcome: Outcome, probe: Bool, now: Int64, random: Double) -> State? {
        if probe {
            probesInFlight = max(0, probesInFlight - 1)
            switch outcome {
            case .success:
                return close(now: now)
            case .failure:
                return trip(now: now, random: random)
            case .throttled, .ignored:
                return nil
            }
        }
        guard state == .closed else { return nil }
        rotate(now: now)
        let index = Int((now / bucketWidth) % Int64(settings.buckets))
        switch outcome {
        case .success:
            successes[index] += 1
            consecutive = 0
        case .failure:
            failures[index] += 1
            consecutive += 1
        case .throttled, .ignored:
            return nil
        }
        let f = failures.reduce(0, +)
        let total = f + successes.reduce(0, +)
        // The most recent fifth of the window (2 of 10 buckets) decides too, so a hard outage after a long
        // healthy stretch trips in about a second instead of waiting for old successes to age out. It needs
        // five times the minimum volume: a small sample of a 30 % error rate too often shows 50 %.
        var recentFailures = 0
        var recentTotal = 0
        for back in 0..<max(1, settings.buckets / 5) {
            let i = (index - back + settings.buckets) % settings.buckets
            recentFailures += failures[i]
            recentTotal += failures[i] + successes[i]
        }
        let recentDecides = recentTotal >= 5 * settings.minimumVolume
        // A run of failures trips unless the recent calls are enough for their rate to decide: at 100 req/s
        // a 30 % transient error rate makes runs of 5 common, and retries handle those; when callers slow
        // down because every call fails (closed-loop agents), the run is what catches the outage quickly.
        let tripping = (!recentDecides && consecutive >= settings.consecutiveFailures)
            || (total >= settings.minimumVolume && Double(f) / Double(total) >= settings.failureRate)
            || (recentDecides && Double(recentFailures) / Double(recentTotal) >= settings.failureRate)
        if tripping {
            return trip(now: now, random: random)
        }
        return nil
    }

    /// A 429 carried a wait hint (`Retry-After`, `retry-after-ms`, `x-ratelimit-reset-*`): the credential
    /// is shared by every agent, so the whole tool (or fetch host) pauses until then, capped. It never
    /// trips the breaker.
    public mutating func onThrottleHint(waitMilliseconds: Int64, now: Int64) {
        guard waitMilliseconds > 0 else { return }
        throttledUntil = max(throttledUntil, now + min(waitMilliseconds, settings.maxThrottleMilliseconds))
    }

    /// Forces the open state until `until` (another sidecar of the fleet tripped first).
    public mutating func forceOpen(until: Int64, now: Int64) -> State? {
        guard until > now, state != .open || openUntil < until else { return nil }
        let changed = state != .open
        state = .open
        openUntil = until
        return changed ? .open : nil
    }

    private var bucketWidth: Int64 { max(1, settings.windowMilliseconds / Int64(settings.buckets)) }

    /// Nothing would be lost by forgetting this breaker: closed, not pausing for a 429, no probe out, and
    /// no failure in its rolling window. (A fresh breaker would decide every later call the same way.)
    public func isQuiet(now: Int64) -> Bool {
        guard state == .closed, now >= throttledUntil, probesInFlight == 0, consecutive == 0 else { return false }
        if (now / bucketWidth) - (bucketStart / bucketWidth) >= Int64(settings.buckets) { return true }
        return !failures.contains { $0 > 0 }
    }

    /// Clears buckets that fell out of the rolling window.
    private mutating func rotate(now: Int64) {
        let current = now / bucketWidth
        let last = bucketStart / bucketWidth
        if current - last >= Int64(settings.buckets) {
            for i in 0..<settings.buckets { successes[i] = 0; failures[i] = 0 }
        } else if current > last {
            for b in (last + 1)...current {
                let i = Int(b % Int64(settings.buckets))
                successes[i] = 0
                failures[i] = 0
            }
        }
        bucketStart = now
    }

    private mutating func trip(now: Int64, random: Double) -> State? {
        let base = Double(settings.baseOpenMilliseconds) * Double(1 << min(trips, 20))
        let capped = min(base, Double(settings.maxOpenMilliseconds))
        let jittered = capped * (1 + settings.jitter * (2 * random - 1))
        trips += 1
        openUntil = now + Int64(max(1, jittered))
        let changed = state != .open
        state = .open
        consecutive = 0
        for i in 0..<settings.buckets { successes[i] = 0; failures[i] = 0 }
        return changed ? .open : nil
    }

    private mutating func close(now: Int64) -> State? {
        let changed = state != .closed
        state = .closed
        trips = 0
        consecutive = 0
        probesInFlight = 0
        bucketStart = now
        for i in 0..<settings.buckets { successes[i] = 0; failures[i] = 0 }
        return changed ? .closed : nil
    }
}
