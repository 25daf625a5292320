import NIOCore
import NIOHTTP1
import Synchronization

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

    /// Every `X-Chaos-Injected` value this transport writes.
    public static let kinds: Set<String> = ["error", "rate_limit", "timeout", "truncate", "latency"]

    public func update(_ new: ChaosSettings) {
        settings.withLock { $0 = new }
        if let seed = new.seed { rng.withLock { $0 = SplitMix64(seed: seed) } }
    }

    private func roll() -> Double { rng.withLock { $0.nextDouble() } }

    /// Without faults for the tool, the base transport's loop start; with faults, the async `send`.
    public func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? {
        let t = now()
        guard settings.withLock({ $0.faults(for: request.tool, now: t) }) == nil else { return nil }
        return base.start(request, on: loop)
    }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        let t = now()
        // Only the tool's faults leave the lock, not a copy of every tool's settings on each call.
        guard let f = settings.withLock({ $0.faults(for: request.tool, now: t) }) else { return try await base.send(request) }
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
