import NIOHTTP1

/// Per-tool retry rules (DESIGN.md §8): what may be retried, how long to wait, and how many attempts.
public struct RetryPolicy: Sendable, Hashable {
    public var maxAttempts: Int
    public var baseDelayMilliseconds: Int64
    public var maxDelayMilliseconds: Int64

    public init(maxAttempts: Int = 3, baseDelayMilliseconds: Int64 = 100, maxDelayMilliseconds: Int64 = 2_000) {
        self.maxAttempts = maxAttempts
        self.baseDelayMilliseconds = baseDelayMilliseconds
        self.maxDelayMilliseconds = maxDelayMilliseconds
    }

    public enum Reason: String, Sendable, Hashable, CaseIterable {
        case status5xx = "5xx"
        case throttled = "429"
        case timeout
        case connect
    }

    /// Why an attempt's result may be retried for this call, or nil. Side-effecting calls (Gmail send)
    /// are never retried: a retry could send the email twice. OpenAI retries on 429, 5xx and connect
    /// errors; the others (GET/HEAD) on 5xx, timeouts and connect errors.
    public static func reason(tool: Tool, traits: CallTraits, method: HTTPMethod, status: Int?, error: UpstreamError?) -> Reason? {
        if traits.sideEffecting || !traits.idempotent { return nil }
        if tool == .httpFetch || tool == .serpapi, method != .GET, method != .HEAD { return nil }
        if let error {
            switch error.kind {
            case .unreachable: return .connect
            case .timeout: return tool == .openai ? nil : .timeout
            case .protocolError: return error.beforeSend ? .connect : nil
            case .responseTooLarge, .cancelled, .egressDenied, .invalidRequest: return nil
            }
        }
        guard let status else { return nil }
        if status == 429 { return tool == .openai ? .throttled : nil }
        if (500...599).contains(status), !permanent5xx.contains(status) { return .status5xx }
        return nil
    }

    /// Server errors that say the request itself cannot be served, not that the server is struggling:
    /// 501 Not Implemented, 505 HTTP Version Not Supported, 508 Loop Detected, 511 Network
    /// Authentication Required. Sent again, they fail again.
    static let permanent5xx: Set<Int> = [501, 505, 508, 511]

    /// `x-should-retry: false` on an answer: the upstream says the same request will fail again.
    public static func saysDoNotRetry(_ headers: HTTPHeaders) -> Bool {
        headers[canonicalForm: "x-should-retry"].contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "false" }
    }

    /// Full-jitter exponential backoff (`random` in [0, 1)): a uniform wait in [0, min(cap, base·2ⁿ)].
    public func backoff(attempt: Int, random: Double) -> Int64 {
        let ceiling = min(Double(maxDelayMilliseconds), Double(baseDelayMilliseconds) * Double(1 << min(attempt, 20)))
        return Int64(ceiling * random)
    }

    /// The server's own wait hint: `retry-after-ms`, `Retry-After` (seconds or an HTTP date is not
    /// parsed — seconds only), or OpenAI's `x-ratelimit-reset-requests` / `-tokens` (`1s`, `6m0s`, `20ms`).
    public static func serverDelay(_ headers: HTTPHeaders) -> Int64? {
        if let ms = headers.first(name: "retry-after-ms").flatMap(Double.init), let v = milliseconds(ms) { return v }
        if let s = headers.first(name: "retry-after").flatMap(Double.init), let v = milliseconds(s * 1000) { return v }
        let resets = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset"].compactMap {
            headers.first(name: $0).flatMap(parseGoDuration)
        }
        return resets.max()
    }

    /// `6m0s`, `1.5s`, `20ms` (the format OpenAI uses).
    static func parseGoDuration(_ s: String) -> Int64? {
        if let seconds = Double(s) { return milliseconds(seconds * 1000) }
        var total = 0.0
        var number = ""
        var i = s.startIndex
        var sawUnit = false
        while i < s.endIndex {
            let c = s[i]
            if c.isNumber || c == "." {
                number.append(c)
                i = s.index(after: i)
                continue
            }
            var unit = String(c)
            let next = s.index(after: i)
            if c == "m", next < s.endIndex, s[next] == "s" { unit = "ms"; i = next }
            guard let v = Double(number) else { return nil }
            switch unit {
            case "h": total += v * 3_600_000
            case "m": total += v * 60_000
            case "s": total += v * 1000
            case "ms": total += v
            default: return nil
            }
            number = ""
            sawUnit = true
            i = s.index(after: i)
        }
        return sawUnit && number.isEmpty ? milliseconds(total) : nil
    }

    /// Milliseconds from a number an upstream sent: NaN and negatives are nil, and anything past 1e15 ms
    /// (about 31 700 years) is clamped, so no header value (`Retry-After: 1e400`, read as infinity) can
    /// trap the conversion and take the process down.
    static func milliseconds(_ value: Double) -> Int64? {
        guard value >= 0 else { return nil }
        return Int64(min(value, 1e15))
    }
}
