/// The generic cell rate algorithm: `limit` requests per `period`, with up to `burst` at once.
///
/// State is one number, the theoretical arrival time (TAT). Emission interval T = period / limit; burst
/// tolerance τ = (burst − 1) × T. A request at `now` is allowed iff TAT − now ≤ τ (with TAT raised to now if
/// it lags); allowing it advances TAT by T. So from idle, at most `burst + ⌊t / T⌋` requests pass in any
/// span t — never `burst × period` worth, the bug of the original implementation.
public struct GCRA: Sendable, Hashable {
    /// Emission interval in milliseconds (may be fractional).
    public let interval: Double
    /// Burst tolerance in milliseconds.
    public let tolerance: Double
    public let limit: Int
    public let burst: Int

    public init(limit: Int, periodMilliseconds: Double, burst: Int) {
        precondition(limit > 0 && periodMilliseconds > 0 && burst >= 1)
        self.limit = limit
        self.burst = burst
        interval = periodMilliseconds / Double(limit)
        tolerance = Double(burst - 1) * interval
    }

    public struct Outcome: Sendable, Hashable {
        public var allowed: Bool
        /// The TAT to store (unchanged when refused).
        public var tat: Double
        /// When a refused request could pass, in milliseconds from now.
        public var retryAfter: Double
        /// How many more requests could pass right now.
        public var remaining: Int
    }

    public func attempt(now: Double, tat stored: Double?) -> Outcome {
        let tat = max(stored ?? now, now)
        let wait = tat - now
        if wait > tolerance {
            return Outcome(allowed: false, tat: stored ?? now, retryAfter: wait - tolerance, remaining: 0)
        }
        let newTAT = tat + interval
        let remaining = Int(((tolerance - (newTAT - now - interval)) / interval).rounded(.down))
        return Outcome(allowed: true, tat: newTAT, retryAfter: 0, remaining: max(0, remaining))
    }
}
