import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import Upstreams

/// Cache → breaker → bulkhead → retry loop → transport (DESIGN.md §8), for one upstream call.
///
/// - The cache answers fresh hits, makes concurrent misses share one upstream call, and serves a stale
///   answer (marked) when the breaker is open or the upstream fails.
/// - The breaker (one per tool, one per destination host for http_fetch) fast-fails without touching the
///   network; with Redis, an open state is shared and one probe per fleet decides recovery.
/// - The bulkhead caps concurrent calls per tool with a bounded wait queue.
/// - The retry loop follows the per-tool policy, full-jitter backoff or the server's own hint, inside
///   the call's deadline and the retry budget.
final class ResilientCaller: Sendable {
    let transport: any UpstreamTransport
    let settings: ResilienceSettings
    let cache: ResponseCache
    let metrics: GatewayMetrics
    let logger: Logger
    let fleet: FleetResilience?
    /// The fleet's shared cache (Redis), consulted by the leader of a local miss.
    let shared: (any SharedCacheStore)?
    private let breakers = Mutex<[String: CircuitBreaker]>([:])
    private let budgets: Mutex<[Tool: RetryBudget]>
    private let bulkheads: [Tool: Bulkhead]
    private let rng = Mutex(SplitMix64(seed: UInt64.random(in: 1...UInt64.max)))
    let now: @Sendable () -> Int64

    init(
        transport: any UpstreamTransport, settings: ResilienceSettings, metrics: GatewayMetrics, logger: Logger, fleet: FleetResilience? = nil,
        shared: (any SharedCacheStore)? = nil, now: @escaping @Sendable () -> Int64 = unixMillis
    ) {
        self.transport = transport
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        self.fleet = fleet
        self.shared = shared
        self.now = now
        cache = ResponseCache(maxBytes: settings.cacheMaxBytes, maxEntryBytes: settings.cacheMaxEntryBytes)
        budgets = Mutex(Dictionary(uniqueKeysWithValues: Tool.allCases.map {
            ($0, RetryBudget(ratio: settings.retryBudgetRatio, minimumPerSecond: settings.retryBudgetMinimumPerSecond))
        }))
        bulkheads = Dictionary(uniqueKeysWithValues: Tool.allCases.map { tool in
            let t = settings.tools[tool]!
            return (tool, Bulkhead(maxConcurrent: t.maxConcurrent, maxQueue: t.queue, wait: t.queueWait))
        })
    }

    struct Result: Sendable {
        var response: UpstreamResponse
        /// Call when the response body has been consumed or abandoned (frees the bulkhead slot).
        var release: @Sendable () -> Void
    }

    private func random() -> Double { rng.withLock { $0.nextDouble() } }

    static func breakerKey(_ request: UpstreamRequest) -> String {
        request.tool == .httpFetch ? "http_fetch|\(request.url.host)" : request.tool.rawValue
    }

    // MARK: The call

    func call(_ request: UpstreamRequest, traits: CallTraits, cacheKey: String?, record: inout RequestRecord) async throws(GatewayError) -> Result {
        let tool = request.tool
        var leader = false
        var stale: CachedResponse?
        if let key = cacheKey {
            switch cache.lookup(key, now: now()) {
            case .fresh(let hit):
                return served(hit, tool: tool, marker: "HIT", record: &record)
            case .stale(let s):
                stale = s
            case .miss:
                break
            }
            leader = cache.beginFetch(key)
            if !leader {
                if let answer = await cache.wait(for: key) { return served(answer, tool: tool, marker: "HIT", record: &record) }
            }
            // The leader asks the fleet before going upstream; its answer also wakes the local waiters.
            if leader, let shared, let remote = await shared.get(key) {
                let t = now()
                if remote.expiresAt > t {
                    cache.endFetch(key, storing: remote)
                    leader = false
                    metrics.cacheSharedHit(tool)
                    return served(remote, tool: tool, marker: "HIT", record: &record)
                }
                if stale == nil, remote.staleUntil > t { stale = remote }
            }
            metrics.cacheMiss(tool)
        }
        defer { if leader, let key = cacheKey { cache.endFetch(key, storing: nil) } }

        // Breaker: fast-fail without touching the network.
        let key = Self.breakerKey(request)
        // Mutated in place (through the default subscript), so the bucket arrays are never copied.
        var decision = breakers.withLock { b in
            b[key, default: CircuitBreaker(settings: settings.tools[tool]!.breaker)].onRequest(now: now())
        }
        if case .probe = decision, let fleet, !(await fleet.acquireProbe(key)) {
            decision = .reject(retryAfterMilliseconds: 1000)
            breakers.withLock { b in _ = b[key]?.onOutcome(.ignored, probe: true, now: now(), random: 0) }
        }
        // A paused tool (open breaker, or a 429's wait hint) is answered without the network: a stale
        // answer when there is one, else a problem with Retry-After.
        let paused: (code: GatewayError.Code, detail: String, retryAfter: Int64)?
        switch decision {
        case .reject(let ms):
            metrics.breakerFastFail(tool)
            record.breaker = "open"
            paused = (.breakerOpen, "\(tool.rawValue) is failing; calls are paused", ms)
        case .throttled(let ms):
            record.breaker = "throttled"
            paused = (.toolThrottled, "\(tool.rawValue) asked the sidecar to slow down; calls are paused briefly", ms)
        case .allow, .probe:
            paused = nil
        }
        if let paused {
            if let stale { return served(stale, tool: tool, marker: "STALE", record: &record) }
            var e = GatewayError(paused.code, paused.detail)
            e.headers = [("Retry-After", String(max(1, (paused.retryAfter + 999) / 1000)))]
            e.nothingSent = true
            throw e
        }
        let probe: Bool
        if case .probe = decision { probe = true } else { probe = false }

        // Bulkhead.
        let bulkhead = bulkheads[tool]!
        metrics.bulkheadQueue(tool, bulkhead.queueLength + 1)
        do {
            try await bulkhead.acquire()
        } catch {
            metrics.bulkheadRejection(tool)
            metrics.bulkheadQueue(tool, bulkhead.queueLength)
            var e = GatewayError(.toolSaturated, "too many \(tool.rawValue) calls are waiting; try again shortly")
            e.headers = [("Retry-After", "1")]
            e.nothingSent = true
            throw e
        }
        metrics.bulkheadQueue(tool, bulkhead.queueLength)
        let release: @Sendable () -> Void = { bulkhead.release() }

        // Attempts.
        budgets.withLock { $0[tool]!.onRequest() }
        fleet?.countRequest(tool)
        let policy = settings.tools[tool]!.retry
        var attempt = 0
        var retried = false
        while true {
            attempt += 1
            var response: UpstreamResponse?
            var failure: UpstreamError?
            do { response = try await transport.send(request) } catch { failure = error }
            let outcome = Self.outcome(status: response.map { Int($0.status.code) }, error: failure)
            recordBreaker(key: key, tool: tool, outcome: outcome, probe: probe && attempt == 1)
            if let r = response, r.status == .tooManyRequests, let wait = RetryPolicy.serverDelay(r.headers) {
                let t = now()
                breakers.withLock { b in b[key]?.onThrottleHint(waitMilliseconds: wait, now: t) }
            }
            let reason = RetryPolicy.reason(
                tool: tool, traits: traits, method: request.method, status: response.map { Int($0.status.code) }, error: failure)
            if let reason, attempt < policy.maxAttempts, !probe, await mayRetry(tool) {
                var delay = policy.backoff(attempt: attempt - 1, random: random())
                if let hint = response.flatMap({ RetryPolicy.serverDelay($0.headers) }) { delay = max(delay, hint) }
                if NIODeadline.now() + .milliseconds(delay) + .milliseconds(50) < request.deadline,
                    breakers.withLock({ $0[key]?.state }) == .closed
                {
                    response?.body.cancel()
                    metrics.retry(tool, reason: reason.rawValue)
                    retried = true
                    record.retries += 1
                    if delay > 0 { try? await Task.sleep(for: .milliseconds(delay)) }
                    continue
                }
            } else if reason != nil, attempt < policy.maxAttempts, !probe {
                metrics.retryBudgetExhausted(tool)
            }
            // Final answer of this call.
            if let failure {
                release()
                if let stale, failure.kind != .cancelled { return served(stale, tool: tool, marker: "STALE", record: &record) }
                throw GatewayError(failure)
            }
            var final = response!
            let status = Int(final.status.code)
            if retried, (200..<500).contains(status), status != 429 { metrics.retrySuccess(tool) }
            if status >= 500, let stale {
                final.body.cancel()
                release()
                return served(stale, tool: tool, marker: "STALE", record: &record)
            }
            if let key = cacheKey {
                final.headers.replaceOrAdd(name: "X-Cache", value: "MISS")
                record.cache = "MISS"
                if leader, let complete = final.body.takeCompleteBody() { final.body = .bytes(complete) }
                if leader, cacheable(final, tool: tool) {
                    // Read the (bounded, declared-length) body now: an answer whose body arrives after its
                    // head must still be stored, or concurrent waiters would all go upstream.
                    let body: ByteBuffer
                    do { body = try await final.body.collect(upTo: settings.cacheMaxEntryBytes) } catch {
                        release()
                        if let stale { return served(stale, tool: tool, marker: "STALE", record: &record) }
                        throw GatewayError(UpstreamError(.protocolError, beforeSend: false, detail: "the upstream body broke off"))
                    }
                    let stored = entry(final, body: body, tool: tool)
                    final.body = .bytes(body)
                    cache.endFetch(key, storing: stored)
                    shared?.put(key, stored)
                    metrics.cacheBytes(cache.totalBytes)
                    leader = false
                }
            }
            return Result(response: final, release: release)
        }
    }

    private func served(_ c: CachedResponse, tool: Tool, marker: String, record: inout RequestRecord) -> Result {
        if marker == "STALE" { metrics.cacheStale(tool) } else { metrics.cacheHit(tool) }
        record.cache = marker
        var headers = c.headers
        headers.replaceOrAdd(name: "X-Cache", value: marker)
        headers.replaceOrAdd(name: "Age", value: String(max(0, (now() - c.storedAt) / 1000)))
        if marker == "STALE" { headers.replaceOrAdd(name: "Warning", value: #"110 - "Response is Stale""#) }
        return Result(response: UpstreamResponse(status: c.status, headers: headers, body: .bytes(c.body)), release: {})
    }

    /// Whether an answer may be stored: a 200 the headers allow, with a declared length within the entry
    /// limit (or already complete and small), and a lifetime.
    private func cacheable(_ response: UpstreamResponse, tool: Tool) -> Bool {
        guard response.status == .ok, ttl(response, tool: tool) != nil else { return false }
        if let length = response.headers.first(name: "content-length").flatMap(Int.init) { return length <= settings.cacheMaxEntryBytes }
        return (response.body.bufferedBytes?.readableBytes).map { $0 <= settings.cacheMaxEntryBytes } ?? false
    }

    /// How long the answer stays fresh: the tool's TTL, or for http_fetch what `Cache-Control`/`Expires` allow (capped).
    private func ttl(_ response: UpstreamResponse, tool: Tool) -> Int64? {
        let cap = settings.tools[tool]!.cacheTTL.milliseconds
        guard cap > 0 else { return nil }
        if tool == .httpFetch { return ResponseCache.freshness(response.headers, now: now(), cap: cap) }
        if response.headers["cache-control"].contains(where: { $0.lowercased().contains("no-store") }) { return nil }
        return cap
    }

    private func entry(_ response: UpstreamResponse, body: ByteBuffer, tool: Tool) -> CachedResponse {
        let now = self.now()
        let ttl = ttl(response, tool: tool) ?? 0
        var headers = response.headers
        headers.remove(name: "x-chaos-injected")
        return CachedResponse(
            status: response.status, headers: headers, body: body, storedAt: now, expiresAt: now + ttl,
            staleUntil: now + ttl + settings.staleIfError.milliseconds)
    }

    // MARK: Breakers and budgets

    static func outcome(status: Int?, error: UpstreamError?) -> CircuitBreaker.Outcome {
        if let error {
            switch error.kind {
            case .unreachable, .timeout, .protocolError: return .failure
            case .cancelled, .responseTooLarge, .egressDenied: return .ignored
            }
        }
        guard let status else { return .ignored }
        if status == 429 { return .throttled }
        if status >= 500 { return .failure }
        if status >= 400 { return .ignored }
        return .success
    }

    private func recordBreaker(key: String, tool: Tool, outcome: CircuitBreaker.Outcome, probe: Bool) {
        let r = random()
        let (change, reopens) = breakers.withLock { b -> (CircuitBreaker.State?, Int64) in
            let change = b[key, default: CircuitBreaker(settings: settings.tools[tool]!.breaker)].onOutcome(outcome, probe: probe, now: now(), random: r)
            return (change, b[key]!.reopensAt)
        }
        if let change {
            transitioned(key: key, tool: tool, to: change, reopensAt: reopens)
            if change == .open { fleet?.publishOpen(key: key, until: reopens) }
            if change == .closed { fleet?.publishClosed(key: key) }
        }
    }

    private func transitioned(key: String, tool: Tool, to state: CircuitBreaker.State, reopensAt: Int64) {
        metrics.breakerTransition(tool, to: state.rawValue)
        metrics.breakerState(tool, worstState(tool))
        logger.warning(
            "circuit breaker \(state.rawValue)",
            metadata: ["breaker": "\(key.hasPrefix("http_fetch|") ? "http_fetch (host)" : key)", "tool": "\(tool)",
                       "retry_in_ms": "\(state == .open ? max(0, reopensAt - now()) : 0)"])
    }

    /// The gauge shows the worst state among the tool's breakers (http_fetch has one per host).
    private func worstState(_ tool: Tool) -> Int {
        breakers.withLock { b in
            b.filter { $0.key == tool.rawValue || $0.key.hasPrefix("\(tool.rawValue)|") }.map { $0.value.state.gaugeValue }.max() ?? 0
        }
    }

    /// Another sidecar tripped this breaker: obey until it reopens.
    func applyFleetOpen(key: String, until: Int64) {
        guard let tool = Tool(rawValue: String(key.split(separator: "|").first ?? "")) else { return }
        let change = breakers.withLock { b -> CircuitBreaker.State? in
            b[key, default: CircuitBreaker(settings: settings.tools[tool]!.breaker)].forceOpen(until: until, now: now())
        }
        if let change { transitioned(key: key, tool: tool, to: change, reopensAt: until) }
    }

    /// Another sidecar's probe succeeded: close.
    func applyFleetClosed(key: String) {
        guard let tool = Tool(rawValue: String(key.split(separator: "|").first ?? "")) else { return }
        let changed = breakers.withLock { b -> Bool in
            guard var br = b[key], br.state != .closed else { return false }
            br = CircuitBreaker(settings: br.settings)
            b[key] = br
            return true
        }
        if changed { transitioned(key: key, tool: tool, to: .closed, reopensAt: 0) }
    }

    private func mayRetry(_ tool: Tool) async -> Bool {
        guard budgets.withLock({ $0[tool]!.tryRetry(now: now()) }) else { return false }
        if let fleet { return await fleet.mayRetry(tool) }
        return true
    }

    func breakerState(_ key: String) -> CircuitBreaker.State? { breakers.withLock { $0[key]?.state } }
}

extension Duration {
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
