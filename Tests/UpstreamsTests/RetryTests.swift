import NIOHTTP1
import Testing

@testable import Upstreams

@Suite("Retry policy, backoff and budget")
struct RetryTests {
    static let readOnly = CallTraits(idempotent: true, cacheable: true, sideEffecting: false)
    static let send = CallTraits(idempotent: false, cacheable: false, sideEffecting: true)
    static let chat = CallTraits(idempotent: true, cacheable: false, sideEffecting: false)

    struct Row: Sendable, CustomTestStringConvertible {
        var tool: Tool
        var traits: CallTraits
        var method: HTTPMethod
        var status: Int?
        var error: UpstreamError?
        var expected: RetryPolicy.Reason?
        var testDescription: String { "\(tool) \(method) \(status.map(String.init) ?? error.map { "\($0.kind)" } ?? "-") → \(expected?.rawValue ?? "no retry")" }
    }

    static let connect = UpstreamError(.unreachable, beforeSend: true, detail: "refused")
    static let timeout = UpstreamError(.timeout, beforeSend: false, detail: "deadline")
    static let resetBeforeSend = UpstreamError(.protocolError, beforeSend: true, detail: "reset")
    static let resetAfterSend = UpstreamError(.protocolError, beforeSend: false, detail: "reset")

    @Test(arguments: [
        Row(tool: .serpapi, traits: readOnly, method: .GET, status: 503, expected: .status5xx),
        Row(tool: .serpapi, traits: readOnly, method: .GET, status: 500, expected: .status5xx),
        Row(tool: .serpapi, traits: readOnly, method: .GET, status: 501, expected: nil),
        Row(tool: .serpapi, traits: readOnly, method: .GET, status: 505, expected: nil),
        Row(tool: .openai, traits: readOnly, method: .POST, status: 508, expected: nil),
        Row(tool: .httpFetch, traits: readOnly, method: .GET, status: 511, expected: nil),
        Row(tool: .httpFetch, traits: readOnly, method: .GET, status: 599, expected: .status5xx),
        Row(tool: .serpapi, traits: readOnly, method: .GET, status: 429, expected: nil),
        Row(tool: .serpapi, traits: readOnly, method: .GET, status: 404, expected: nil),
        Row(tool: .serpapi, traits: readOnly, method: .GET, status: 200, expected: nil),
        Row(tool: .serpapi, traits: readOnly, method: .GET, error: timeout, expected: .timeout),
        Row(tool: .serpapi, traits: readOnly, method: .GET, error: connect, expected: .connect),
        Row(tool: .httpFetch, traits: readOnly, method: .HEAD, status: 502, expected: .status5xx),
        Row(tool: .httpFetch, traits: readOnly, method: .POST, status: 502, expected: nil),
        Row(tool: .httpFetch, traits: readOnly, method: .GET, error: resetBeforeSend, expected: .connect),
        Row(tool: .httpFetch, traits: readOnly, method: .GET, error: resetAfterSend, expected: nil),
        Row(tool: .httpFetch, traits: readOnly, method: .GET, error: UpstreamError(.egressDenied, beforeSend: true, detail: "x"), expected: nil),
        Row(tool: .serpapi, traits: readOnly, method: .GET, error: UpstreamError(.invalidRequest, beforeSend: true, detail: "x"), expected: nil),
        Row(tool: .openai, traits: chat, method: .POST, status: 429, expected: .throttled),
        Row(tool: .openai, traits: chat, method: .POST, status: 503, expected: .status5xx),
        Row(tool: .openai, traits: chat, method: .POST, error: connect, expected: .connect),
        Row(tool: .openai, traits: chat, method: .POST, error: timeout, expected: nil),
        Row(tool: .openai, traits: chat, method: .POST, status: 400, expected: nil),
        Row(tool: .gmailSend, traits: send, method: .POST, status: 503, expected: nil),
        Row(tool: .gmailSend, traits: send, method: .POST, error: connect, expected: nil),
        Row(tool: .gmailSend, traits: send, method: .POST, error: timeout, expected: nil),
    ])
    func whatIsRetried(_ row: Row) {
        #expect(RetryPolicy.reason(tool: row.tool, traits: row.traits, method: row.method, status: row.status, error: row.error) == row.expected)
    }

    @Test func anUpstreamThatSaysDoNotRetryIsHeard() {
        #expect(RetryPolicy.saysDoNotRetry(["x-should-retry": "false"]))
        #expect(RetryPolicy.saysDoNotRetry(["X-Should-Retry": " FALSE "]))
        #expect(!RetryPolicy.saysDoNotRetry(["x-should-retry": "true"]))
        #expect(!RetryPolicy.saysDoNotRetry([:]))
    }

    @Test func fullJitterBackoffStaysUnderTheExponentialCeilingAndTheCap() {
        let p = RetryPolicy(maxAttempts: 5, baseDelayMilliseconds: 100, maxDelayMilliseconds: 1000)
        #expect(p.backoff(attempt: 0, random: 0) == 0)
        #expect(p.backoff(attempt: 0, random: 0.999) == 99)
        #expect(p.backoff(attempt: 1, random: 0.5) == 100)
        #expect(p.backoff(attempt: 2, random: 0.5) == 200)
        #expect(p.backoff(attempt: 3, random: 0.999) == 799)
        #expect(p.backoff(attempt: 4, random: 0.999) == 999)
        #expect(p.backoff(attempt: 60, random: 0.5) == 500)
        var rng = SplitMix64(seed: 42)
        for attempt in 0..<8 {
            for _ in 0..<200 {
                let d = p.backoff(attempt: attempt, random: rng.nextDouble())
                #expect(d >= 0 && d <= min(1000, 100 << attempt))
            }
        }
    }

    @Test(arguments: [
        ([("Retry-After", "3")], 3000),
        ([("Retry-After", "0")], 0),
        ([("retry-after-ms", "250")], 250),
        ([("retry-after-ms", "250"), ("Retry-After", "9")], 250),
        ([("x-ratelimit-reset-requests", "1s")], 1000),
        ([("x-ratelimit-reset-requests", "6m0s")], 360_000),
        ([("x-ratelimit-reset-tokens", "20ms")], 20),
        ([("x-ratelimit-reset-tokens", "1.5s"), ("x-ratelimit-reset-requests", "200ms")], 1500),
        ([("x-ratelimit-reset", "2")], 2000),
        ([("x-ratelimit-reset", "1h2m3s")], 3_723_000),
        // Hostile or broken upstreams: huge values are clamped (they once trapped the Int64 conversion).
        ([("Retry-After", "1e400")], 1_000_000_000_000_000),
        ([("retry-after-ms", "inf")], 1_000_000_000_000_000),
        ([("Retry-After", "99999999999999999999")], 1_000_000_000_000_000),
        ([("x-ratelimit-reset-requests", "99999999999999999999h")], 1_000_000_000_000_000),
        ([("x-ratelimit-reset", "1e308")], 1_000_000_000_000_000),
    ] as [([(String, String)], Int64)])
    func theServersOwnWaitHintIsHonoured(_ headers: [(String, String)], _ expected: Int64) {
        #expect(RetryPolicy.serverDelay(HTTPHeaders(headers)) == expected)
    }

    @Test(arguments: [
        [("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")], [("Retry-After", "-1")], [("x-ratelimit-reset-requests", "soon")],
        [("x-ratelimit-reset-requests", "5x")], [("x-ratelimit-reset-requests", "1s5")], [] as [(String, String)],
        [("Retry-After", "nan")], [("retry-after-ms", "-inf")], [("x-ratelimit-reset", "NaN")],
    ])
    func unusableHintsAreIgnored(_ headers: [(String, String)]) {
        #expect(RetryPolicy.serverDelay(HTTPHeaders(headers)) == nil)
    }

    @Test func theBudgetAllowsAShareOfRequestsPlusAFloor() {
        var b = RetryBudget(ratio: 0.25, minimumPerSecond: 2)
        let t: Int64 = 1_000_000
        // No traffic yet: only the floor (2 per second).
        let floor = [b.tryRetry(now: t), b.tryRetry(now: t), b.tryRetry(now: t)]
        #expect(floor == [true, true, false])
        // 100 requests deposit 25 retries.
        for _ in 0..<100 { b.onRequest() }
        var granted = 0
        for _ in 0..<100 where b.tryRetry(now: t) { granted += 1 }
        #expect(granted == 25)
        // The floor refills with time, at its rate, up to its size.
        let okt_400 = b.tryRetry(now: t + 400)
        #expect(!okt_400)
        let okt_500 = b.tryRetry(now: t + 500)
        #expect(okt_500)
        granted = 0
        for _ in 0..<10 where b.tryRetry(now: t + 60_000) { granted += 1 }
        #expect(granted == 2)
    }

    @Test func aRetryStormIsCappedAtTheRatio() {
        // A failing upstream: every request wants 2 retries. Over 10 s of 100 req/s, retries stay near 20 %.
        var b = RetryBudget(ratio: 0.2, minimumPerSecond: 5)
        var requests = 0
        var retries = 0
        for ms in stride(from: Int64(1_000), to: 11_000, by: 10) {
            b.onRequest()
            requests += 1
            for _ in 0..<2 where b.tryRetry(now: ms) { retries += 1 }
        }
        #expect(requests == 1000)
        #expect(retries <= 200 + 5 * 11)
        #expect(retries >= 200)
    }
}
