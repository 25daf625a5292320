/// What faults to inject into one tool's upstream calls.
public struct ChaosFaults: Sendable, Hashable, Codable {
    /// Share of calls answered with a synthetic 5xx (one of `errorStatuses`).
    public var errorRate = 0.0
    public var errorStatuses = [500, 502, 503]
    /// Share answered with 429 and `Retry-After: retryAfterSeconds`.
    public var rateLimitRate = 0.0
    public var retryAfterSeconds = 1
    /// Share that hang until the call's deadline (a timeout).
    public var timeoutRate = 0.0
    /// Added latency, uniform in [min, max] milliseconds, on every call that is not otherwise faulted.
    public var latencyMinMilliseconds = 0
    public var latencyMaxMilliseconds = 0
    /// Share whose body is cut off halfway (the connection breaks mid-body).
    public var truncateRate = 0.0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case errorRate = "error_rate", errorStatuses = "error_statuses", rateLimitRate = "rate_limit_rate"
        case retryAfterSeconds = "retry_after", timeoutRate = "timeout_rate", latencyMinMilliseconds = "latency_min_ms"
        case latencyMaxMilliseconds = "latency_max_ms", truncateRate = "truncate_rate"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        errorRate = try c.decodeIfPresent(Double.self, forKey: .errorRate) ?? 0
        errorStatuses = try c.decodeIfPresent([Int].self, forKey: .errorStatuses) ?? [500, 502, 503]
        rateLimitRate = try c.decodeIfPresent(Double.self, forKey: .rateLimitRate) ?? 0
        retryAfterSeconds = try c.decodeIfPresent(Int.self, forKey: .retryAfterSeconds) ?? 1
        timeoutRate = try c.decodeIfPresent(Double.self, forKey: .timeoutRate) ?? 0
        latencyMinMilliseconds = try c.decodeIfPresent(Int.self, forKey: .latencyMinMilliseconds) ?? 0
        latencyMaxMilliseconds = try c.decodeIfPresent(Int.self, forKey: .latencyMaxMilliseconds) ?? 0
        truncateRate = try c.decodeIfPresent(Double.self, forKey: .truncateRate) ?? 0
        for r in [errorRate, rateLimitRate, timeoutRate, truncateRate] where !(0...1).contains(r) {
            throw DecodingError.dataCorruptedError(forKey: .errorRate, in: c, debugDescription: "rates are between 0 and 1")
        }
        guard errorStatuses.allSatisfy({ (500...599).contains($0) }), !errorStatuses.isEmpty else {
            throw DecodingError.dataCorruptedError(forKey: .errorStatuses, in: c, debugDescription: "error statuses are 5xx")
        }
        guard latencyMinMilliseconds >= 0, latencyMaxMilliseconds >= latencyMinMilliseconds else {
            throw DecodingError.dataCorruptedError(forKey: .latencyMaxMilliseconds, in: c, debugDescription: "0 <= latency_min_ms <= latency_max_ms")
        }
    }
}
