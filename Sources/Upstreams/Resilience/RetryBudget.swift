/// Retries at most a share of requests (plus a small floor per second), so a failing upstream is not hit
/// by a retry storm: each request deposits `ratio` tokens, each retry costs one; the floor refills at
/// `minimumPerSecond`. A value type with the time passed in.
public struct RetryBudget: Sendable, Hashable {
    public let ratio: Double
    public let minimumPerSecond: Double
    public let maxTokens: Double
    private var tokens: Double
    private var floorTokens: Double
    private var last: Int64 = 0

    public init(ratio: Double = 0.2, minimumPerSecond: Double = 5, maxTokens: Double = 100) {
        self.ratio = ratio
        self.minimumPerSecond = minimumPerSecond
        self.maxTokens = maxTokens
        tokens = 0
        floorTokens = minimumPerSecond
    }

    public mutating func onRequest() { tokens = min(maxTokens, tokens + ratio) }

    /// Takes one retry if the budget allows it.
    public mutating func tryRetry(now: Int64) -> Bool {
        if last == 0 { last = now }
        floorTokens = min(minimumPerSecond, floorTokens + Double(now - last) / 1000 * minimumPerSecond)
        last = now
        if tokens >= 1 {
            tokens -= 1
            return true
        }
        if floorTokens >= 1 {
            floorTokens -= 1
            return true
        }
        return false
    }
}
