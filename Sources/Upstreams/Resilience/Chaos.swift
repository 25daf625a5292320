import NIOCore
import NIOHTTP1
import Synchronization

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

/// The chaos switch: on or off, the faults per tool, an optional seed and an optional end time.
/// Gmail sends are excluded unless `gmailOptIn` (an injected "failure" after the send would tempt a
/// client into sending twice).
public struct ChaosSettings: Sendable, Hashable, Codable {
    public var enabled = false
    public var tools: [String: ChaosFaults] = [:]
    public var seed: UInt64?
    /// Unix ms after which chaos turns itself off.
    public var until: Int64?
    public var gmailOptIn = false

    public init() {}

    enum CodingKeys: String, CodingKey { case enabled, tools, seed, until, gmailOptIn = "gmail_opt_in" }

    /// Every key is optional (`{"enabled": false}` is a whole document).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? false
        tools = try c.decodeIfPresent([String: ChaosFaults].self, forKey: .tools) ?? [:]
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed)
        until = try c.decodeIfPresent(Int64.self, forKey: .until)
        gmailOptIn = try c.decodeIfPresent(Bool.self, forKey: .gmailOptIn) ?? false
    }

    public func faults(for tool: Tool, now: Int64) -> ChaosFaults? {
        guard enabled, until.map({ now < $0 }) ?? true else { return nil }
        if tool == .gmailSend, !gmailOptIn { return nil }
        return tools[tool.rawValue] ?? tools["*"]
    }
}

/// Injects faults at the transport seam, so retries, breakers and the cache see them exactly as real
/// upstream failures. Affected answers carry `X-Chaos-Injected: <kind>`.
public final class ChaosTransport: UpstreamTransport {
    private let base: any UpstreamTransport
    private let settings: Mutex<ChaosSettings>
    private let rng: Mutex<SplitMix64>
    private let now: @Sendable () -> Int64
    private let onInject: @Sendable (Tool, String) -> Void

    public init(
        base: any UpstreamTransport, settings: ChaosSettings, now: @escaping @Sendable () -> Int64,
        onInject: @escaping @Sendable (Tool, String) -> Void = { _, _ in }
    ) {
        self.base = base
        self.settings = Mutex(settings)
        self.rng = Mutex(SplitMix64(seed: settings.seed ?? UInt64.random(in: 1...UInt64.max)))
        self.now = now
        self.onInject = onInject
    }

    public var current: ChaosSettings { settings.withLock { $0 } }

    public func update(_ new: ChaosSettings) {
        settings.withLock { $0 = new }
        if let seed = new.seed { rng.withLock { $0 = SplitMix64(seed: seed) } }
    }

    private func roll() -> Double { rng.withLock { $0.nextDouble() } }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        guard let f = settings.withLock({ $0 }).faults(for: request.tool, now: now()) else { return try await base.send(request) }
        let r = roll()
        var edge = f.errorRate
        if r < edge {
            let status = f.errorStatuses[Int(roll() * Double(f.errorStatuses.count)) % f.errorStatuses.count]
            onInject(request.tool, "error")
            return Self.synthetic(status: status, kind: "error", extra: [])
        }
        edge += f.rateLimitRate
        if r < edge {
            onInject(request.tool, "rate_limit")
            return Self.synthetic(status: 429, kind: "rate_limit", extra: [("Retry-After", String(f.retryAfterSeconds))])
        }
        edge += f.timeoutRate
        if r < edge {
            onInject(request.tool, "timeout")
            let wait = request.deadline - .now()
            if wait > .zero { try? await Task.sleep(nanoseconds: UInt64(wait.nanoseconds)) }
            var e = UpstreamError(.timeout, beforeSend: false, detail: "deadline exceeded")
            e.chaos = "timeout"
            throw e
        }
        edge += f.truncateRate
        let truncate = r < edge
        if f.latencyMaxMilliseconds > 0 {
            let ms = f.latencyMinMilliseconds + Int(roll() * Double(f.latencyMaxMilliseconds - f.latencyMinMilliseconds + 1))
            if ms > 0 {
                onInject(request.tool, "latency")
                try? await Task.sleep(for: .milliseconds(ms))
            }
        }
        var response = try await base.send(request)
        if truncate {
            onInject(request.tool, "truncate")
            response.headers.replaceOrAdd(name: "X-Chaos-Injected", value: "truncate")
            response.body = .truncated(response.body)
        } else if f.latencyMaxMilliseconds > 0 {
            response.headers.replaceOrAdd(name: "X-Chaos-Injected", value: "latency")
        }
        return response
    }

    static func synthetic(status: Int, kind: String, extra: [(String, String)]) -> UpstreamResponse {
        let text = #"{"error":{"message":"injected by the sidecar's chaos mode","type":"chaos"}}"#
        var headers = HTTPHeaders([("Content-Type", "application/json"), ("Content-Length", String(text.utf8.count)), ("X-Chaos-Injected", kind)])
        for (n, v) in extra { headers.add(name: n, value: v) }
        return UpstreamResponse(status: HTTPResponseStatus(statusCode: status), headers: headers, body: .bytes(ByteBuffer(string: text)))
    }
}

/// A small seedable generator, so a chaos run with a seed is reproducible.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func nextDouble() -> Double { Double(next() >> 11) / Double(UInt64(1) << 53) }
}
