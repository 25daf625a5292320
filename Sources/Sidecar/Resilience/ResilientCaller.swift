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
    private let budgets: Mutex<PerTool<RetryBudget>>
    private let bulkheads: PerTool<Bulkhead>
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
        budgets = Mutex(PerTool { _ in RetryBudget(ratio: settings.retryBudgetRatio, minimumPerSecond: settings.retryBudgetMinimumPerSecond) })
        bulkheads = PerTool { tool in
            let t = settings.tools[tool]!
            return Bulkhead(maxConcurrent: t.maxConcurrent, maxQueue: t.queue, wait: t.queueWait)
        }
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

    /// What one call carries from stage to stage (the async `call` and the loop start share the stages).
    struct Call: Sendable {
        let request: UpstreamRequest
        let traits: CallTraits
        let cacheKey: String?
        let breakerKey: String
        /// This call fetches for every concurrent miss of its cache key.
        var leader = false
        var stale: CachedResponse?
        var probe = false
        var attempt = 0
        var retried = false
        /// Frees the bulkhead slot (once the body has been consumed).
        var release: @Sendable () -> Void = {}

        var tool: Tool { request.tool }

        init(_ request: UpstreamRequest, traits: CallTraits, cacheKey: String?) {
            self.request = request
            self.traits = traits
            self.cacheKey = cacheKey
            breakerKey = ResilientCaller.breakerKey(request)
        }
    }

    /// One attempt's result.
    enum Sent: Sendable {
        case response(UpstreamResponse)
        case failure(UpstreamError)

        var status: Int? {
            if case .response(let r) = self { return Int(r.status.code) }
            return nil
        }
        var error: UpstreamError? {
            if case .failure(let e) = self { return e }
            return nil
        }
    }

    func call(_ request: UpstreamRequest, traits: CallTraits, cacheKey: String?, record: inout RequestRecord) async throws(GatewayError) -> Result {
        var c = Call(request, traits: traits, cacheKey: cacheKey)
        if let served = await lookUpCache(&c, record: &record) { return served }
        defer { if c.leader, let key = c.cacheKey { cache.endFetch(key, storing: nil) } }
        if let served = try await admit(&c, decision: decide(c), record: &record) { return served }
        return try await attempts(&c, record: &record)
    }

    /// A call started on `loop` without a task, when no stage has to wait: no cache key, a closed
    /// breaker, a free bulkhead slot and a transport that can start on the loop. Whatever has to wait
    /// after all (a half-open probe, a queued bulkhead, a transport without a loop start, a retry)
    /// continues in a task. Either way `then` gets the outcome once, on `loop` (at once, before this
    /// returns, when nothing had to wait). Returns how to cancel the call, or nil, having done nothing,
    /// for calls with a cache key (use `call`).
    ///
    /// A callback rather than a future: on this path every future hop was a promise, a callback list
    /// and a generic copy of the outcome per request.
    func start(
        _ request: UpstreamRequest, traits: CallTraits, cacheKey: String?, on loop: any EventLoop, record: RequestRecord,
        then: @escaping @Sendable (consuming Outcome) -> Void
    ) -> (@Sendable () -> Void)? {
        guard cacheKey == nil else { return nil }
        var c = Call(request, traits: traits, cacheKey: nil)
        let decision = decide(c)
        guard case .allow = decision, bulkheads[c.tool]!.tryAcquire() else {
            var record = record
            do {
                if let served = try refuseIfPaused(&c, decision, record: &record) {
                    then(Outcome(result: .success(served), record: record))
                    return {}
                }
            } catch {
                then(Outcome(result: .failure(error), record: record))
                return {}
            }
            // A probe, or a busy bulkhead: the rest of admission waits, in a task.
            let call = c
            let begun = record
            return continued(on: loop, record: begun, then: then) { (r: inout RequestRecord) throws(GatewayError) in
                var c = call
                if let served = try await self.admit(&c, decision: decision, record: &r) { return served }
                return try await self.attempts(&c, record: &r)
            }
        }
        beginAttempts(&c)
        guard let started = transport.start(request, on: loop) else {
            let call = c
            return continued(on: loop, record: record, then: then) { (r: inout RequestRecord) throws(GatewayError) in
                var c = call
                return try await self.attempts(&c, record: &r)
            }
        }
        c.attempt = 1
        let attempt = LoopAttempt(caller: self, call: c, begun: record, loop: loop, then: then, cancel: started.cancel)
        started.response.whenComplete { attempt.answered($0) }
        return { attempt.cancel() }
    }

    /// A call started on the loop, until its first answer: what that answer needs, and the relay of a
    /// cancel to whichever stage holds the call (the transport, then a retry's task). One object per call
    /// instead of a relay plus closure contexts holding copies of the call and the record.
    private final class LoopAttempt: CancelRelay, @unchecked Sendable {
        let caller: ResilientCaller
        /// Touched only on `loop`, in `answered`.
        var call: Call
        /// Taken by `answered`: a record still held here would be copied by the next change.
        var begun: RequestRecord?
        let loop: any EventLoop
        let then: @Sendable (consuming Outcome) -> Void

        init(caller: ResilientCaller, call: Call, begun: RequestRecord, loop: any EventLoop, then: @escaping @Sendable (consuming Outcome) -> Void, cancel: @escaping @Sendable () -> Void) {
            self.caller = caller
            self.call = call
            self.begun = begun
            self.loop = loop
            self.then = then
            super.init(cancel)
        }

        func answered(_ result: Swift.Result<UpstreamResponse, any Error>) {
            let sent: Sent
            switch result {
            case .success(let r): sent = .response(r)
            case .failure(let e): sent = .failure(HTTPClientTransport.classify(e))
            }
            let caller = self.caller
            // The transport answers once; were a second answer ever to come, there is no one left to give it to.
            guard let begun = self.begun.take() else { return }
            guard let reason = caller.assess(&call, sent) else {
                return then(Outcome.now(consume begun) { (r: inout RequestRecord) throws(GatewayError) in try caller.settleAttempt(&call, sent, record: &r).result })
            }
            // A retry waits (budget, backoff): it continues in a task.
            let attempted = call
            replace(loop.run(inTask: {
                await Outcome.of(begun) { (r: inout RequestRecord) throws(GatewayError) in
                    var c = attempted
                    return try await caller.retryOrFinish(&c, sent, reason: reason, record: &r)
                }
            }, then: then))
        }
    }

    /// The result of a started call with the request record as its stages left it.
    struct Outcome: Sendable {
        var result: Swift.Result<Result, GatewayError>
        var record: RequestRecord

        /// The result and the record, moved out: the next stage changes the record, and one still held
        /// here would make that change copy it.
        consuming func parts() -> (Swift.Result<Result, GatewayError>, RequestRecord) { (result, record) }

        static func now(_ record: consuming RequestRecord, _ body: (inout RequestRecord) throws(GatewayError) -> Result) -> Outcome {
            do { return Outcome(result: .success(try body(&record)), record: record) } catch {
                return Outcome(result: .failure(error), record: record)
            }
        }

        static func of(_ record: consuming RequestRecord, _ body: (inout RequestRecord) async throws(GatewayError) -> Result) async -> Outcome {
            do { return Outcome(result: .success(try await body(&record)), record: record) } catch {
                return Outcome(result: .failure(error), record: record)
            }
        }
    }

    private func continued(
        on loop: any EventLoop, record: RequestRecord, then: @escaping @Sendable (consuming Outcome) -> Void,
        _ body: @escaping @Sendable (inout RequestRecord) async throws(GatewayError) -> Result
    ) -> @Sendable () -> Void {
        loop.run(inTask: { await Outcome.of(record, body) }, then: then)
    }

    // MARK: Stages

    /// Fresh hits answer at once; concurrent misses share one upstream call; the leader asks the fleet.
    private func lookUpCache(_ c: inout Call, record: inout RequestRecord) async -> Result? {
        guard let key = c.cacheKey else { return nil }
        let tool = c.tool
        switch cache.lookup(key, now: now()) {
        case .fresh(let hit):
            return served(hit, tool: tool, marker: "HIT", record: &record)
        case .stale(let s):
            c.stale = s
        case .miss:
            break
        }
        c.leader = cache.beginFetch(key)
        if !c.leader {
            if let answer = await cache.wait(for: key) { return served(answer, tool: tool, marker: "HIT", record: &record) }
        }
        // The leader asks the fleet before going upstream; its answer also wakes the local waiters.
        if c.leader, let shared, let remote = await shared.get(key) {
            let t = now()
            if remote.expiresAt > t {
                cache.endFetch(key, storing: remote)
                c.leader = false
                metrics.cacheSharedHit(tool)
                return served(remote, tool: tool, marker: "HIT", record: &record)
            }
            if c.stale == nil, remote.staleUntil > t { c.stale = remote }
        }
        metrics.cacheMiss(tool)
        return nil
    }

    /// The breaker's word on this call. Mutated in place (through the default subscript), so the bucket
    /// arrays are never copied; a half-open probe is counted here.
    private func decide(_ c: Call) -> CircuitBreaker.Decision {
        let t = now()
        return breakers.withLock { b in breaker(c.breakerKey, c.tool, in: &b, now: t) { $0.onRequest(now: t) } }
    }

    /// Applies `change` to the key's breaker — made first when the key has none, after forgetting quiet
    /// per-host ones if there are many — with one access of the (string) key.
    private func breaker<T>(
        _ key: String, _ tool: Tool, in b: inout [String: CircuitBreaker], now t: Int64, _ change: (inout CircuitBreaker) -> T
    ) -> T {
        if b.count >= Self.maxHostBreakers, b[key] == nil { Self.prune(&b, now: t) }
        return change(&b[key, default: newBreaker(tool)])
    }

    /// Per-host breakers (http_fetch) kept before quiet ones are forgotten: an agent that fetches from
    /// ever new hosts must not grow the sidecar's memory without bound.
    static let maxHostBreakers = 1024

    /// Forgets per-host breakers, least valuable first: quiet ones (a fresh breaker would decide the
    /// same), then, if the map is still over twice the bound (hosts failing by the thousand), every
    /// per-host breaker that is not open, then all of them. The tools' own breakers always stay.
    static func prune(_ breakers: inout [String: CircuitBreaker], now: Int64) {
        let perHost = { (key: String) in key.hasPrefix("http_fetch|") }
        breakers = breakers.filter { !perHost($0.key) || !$0.value.isQuiet(now: now) }
        guard breakers.count >= 2 * maxHostBreakers else { return }
        breakers = breakers.filter { !perHost($0.key) || $0.value.state == .open }
        guard breakers.count >= 2 * maxHostBreakers else { return }
        breakers = breakers.filter { !perHost($0.key) }
    }

    /// Turns the breaker's decision into a go-ahead: one probe per fleet, a refusal (or a stale answer)
    /// for a paused tool, then a bulkhead slot. Returns a served stale answer, or nil to go ahead.
    private func admit(_ c: inout Call, decision: CircuitBreaker.Decision, record: inout RequestRecord) async throws(GatewayError) -> Result? {
        var decision = decision
        let key = c.breakerKey
        if case .probe = decision, let fleet, !(await fleet.acquireProbe(key)) {
            decision = .reject(retryAfterMilliseconds: 1000)
            breakers.withLock { b in _ = b[key]?.onOutcome(.ignored, probe: true, now: now(), random: 0) }
        }
        if let served = try refuseIfPaused(&c, decision, record: &record) { return served }
        if case .probe = decision { c.probe = true }
        let tool = c.tool
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
        beginAttempts(&c)
        return nil
    }

    /// A paused tool (open breaker, or a 429's wait hint) is answered without the network: a stale
    /// answer when there is one, else a problem with Retry-After. nil when the call may go ahead.
    private func refuseIfPaused(_ c: inout Call, _ decision: CircuitBreaker.Decision, record: inout RequestRecord) throws(GatewayError) -> Result? {
        let tool = c.tool
        let paused: (code: GatewayError.Code, detail: String, retryAfter: Int64)
        switch decision {
        case .reject(let ms):
            metrics.breakerFastFail(tool)
            record.breaker = "open"
            paused = (.breakerOpen, "\(tool.rawValue) is failing; calls are paused", ms)
        case .throttled(let ms):
            record.breaker = "throttled"
            paused = (.toolThrottled, "\(tool.rawValue) asked the sidecar to slow down; calls are paused briefly", ms)
        case .allow, .probe:
            return nil
        }
        if let stale = c.stale { return served(stale, tool: tool, marker: "STALE", record: &record) }
        var e = GatewayError(paused.code, paused.detail)
        e.headers = [("Retry-After", String(max(1, (paused.retryAfter + 999) / 1000)))]
        e.nothingSent = true
        throw e
    }

    /// The call holds its bulkhead slot: count it for the retry budgets and arm the release.
    private func beginAttempts(_ c: inout Call) {
        let bulkhead = bulkheads[c.tool]!
        c.release = { bulkhead.release() }
        budgets.withLock { $0[c.tool]!.onRequest() }
        fleet?.countRequest(c.tool)
    }

    /// Sends until an answer is final: the per-tool retry policy, full-jitter backoff or the server's own
    /// hint, inside the deadline and the retry budget.
    private func attempts(_ c: inout Call, record: inout RequestRecord) async throws(GatewayError) -> Result {
        c.attempt += 1
        let sent: Sent
        do { sent = .response(try await transport.send(c.request)) } catch { sent = .failure(error) }
        guard let reason = assess(&c, sent) else { return try await finish(&c, sent, record: &record) }
        return try await retryOrFinish(&c, sent, reason: reason, record: &record)
    }

    /// After a retryable attempt (made here or on the loop): the next attempt, or its answer. Bounded by
    /// the tool's `maxAttempts`, so the recursion with `attempts` is too.
    private func retryOrFinish(_ c: inout Call, _ sent: Sent, reason: RetryPolicy.Reason, record: inout RequestRecord) async throws(GatewayError) -> Result {
        if try await retries(&c, sent, reason: reason, record: &record) { return try await attempts(&c, record: &record) }
        return try await finish(&c, sent, record: &record)
    }

    /// Records an attempt's outcome with the breaker (and a 429's wait hint); returns why it may be
    /// retried, or nil when its answer is final.
    private func assess(_ c: inout Call, _ sent: Sent) -> RetryPolicy.Reason? {
        let tool = c.tool
        // Taken apart once: each `sent.status` / `sent.error` / `case .response(let r) = sent` copied
        // the whole response (headers, body) out of the enum.
        let status: Int?
        let error: UpstreamError?
        var throttleWait: Int64?
        var upstreamSaysNo = false
        switch sent {
        case .response(let r):
            (status, error) = (Int(r.status.code), nil)
            if r.status == .tooManyRequests { throttleWait = RetryPolicy.serverDelay(r.headers) }
            // OpenAI's (and every Stainless-served API's) word that the same request will fail again.
            upstreamSaysNo = r.status.code >= 400 && RetryPolicy.saysDoNotRetry(r.headers)
        case .failure(let e):
            (status, error) = (nil, e)
        }
        let outcome = Self.outcome(status: status, error: error)
        recordBreaker(key: c.breakerKey, tool: tool, outcome: outcome, probe: c.probe && c.attempt == 1)
        if let wait = throttleWait {
            let t = now()
            breakers.withLock { b in b[c.breakerKey]?.onThrottleHint(waitMilliseconds: wait, now: t) }
        }
        let reason = RetryPolicy.reason(tool: tool, traits: c.traits, method: c.request.method, status: status, error: error)
        guard let reason, !upstreamSaysNo, c.attempt < settings.tools[tool]!.retry.maxAttempts, !c.probe else { return nil }
        return reason
    }

    /// Whether a retryable attempt is retried (budget, deadline, breaker still closed); if so, waits the
    /// backoff first.
    private func retries(_ c: inout Call, _ sent: Sent, reason: RetryPolicy.Reason, record: inout RequestRecord) async throws(GatewayError) -> Bool {
        let tool = c.tool
        guard await mayRetry(tool) else {
            metrics.retryBudgetExhausted(tool)
            return false
        }
        var delay = settings.tools[tool]!.retry.backoff(attempt: c.attempt - 1, random: random())
        if case .response(let r) = sent, let hint = RetryPolicy.serverDelay(r.headers) { delay = max(delay, hint) }
        guard NIODeadline.now() + .milliseconds(delay) + .milliseconds(50) < c.request.deadline,
            breakers.withLock({ $0[c.breakerKey]?.state }) == .closed
        else { return false }
        if case .response(let r) = sent { r.body.cancel() }
        metrics.retry(tool, reason: reason.rawValue)
        c.retried = true
        record.retries += 1
        if delay > 0 { try? await Task.sleep(for: .milliseconds(delay)) }
        return true
    }

    /// The final answer of the call, stored in the cache when it is the leader's and cacheable.
    private func finish(_ c: inout Call, _ sent: Sent, record: inout RequestRecord) async throws(GatewayError) -> Result {
        var (result, fresh) = try settleAttempt(&c, sent, record: &record)
        guard let key = c.cacheKey, fresh else { return result }
        // The upstream's own body: its content coding is undone later, in the pipeline, so taking it here
        // cannot fail (`takeCompleteBody` throws only for a body wrapped to be decoded).
        if c.leader, let complete = (try? result.response.body.takeCompleteBody()) ?? nil { result.response.body = .bytes(complete) }
        guard c.leader, cacheable(result.response, tool: c.tool) else { return result }
        // Read the (bounded, declared-length) body now: an answer whose body arrives after its head must
        // still be stored, or concurrent waiters would all go upstream.
        let body: ByteBuffer
        do { body = try await result.response.body.collect(upTo: settings.cacheMaxEntryBytes) } catch {
            c.release()
            if let stale = c.stale { return served(stale, tool: c.tool, marker: "STALE", record: &record) }
            throw GatewayError(UpstreamError(.protocolError, beforeSend: false, detail: "the upstream body broke off"))
        }
        result.response.body = .bytes(body)
        // A body its content coding cannot undo (corrupt or cut-off gzip) is passed on — the pipeline
        // answers it as the upstream's protocol error — but never stored: the next call asks again.
        guard ContentCoding(headers: result.response.headers)?.undoes(body, limit: settings.maxDecodedBytes) ?? true else {
            metrics.cacheUndecodable(c.tool)
            return result
        }
        let stored = entry(result.response, body: body, tool: c.tool)
        cache.endFetch(key, storing: stored)
        shared?.put(key, stored)
        metrics.cacheBytes(cache.totalBytes)
        c.leader = false
        return result
    }

    /// The final attempt as the agent's answer (`fresh`), or its failure — or a stale answer instead of
    /// either when there is one.
    private func settleAttempt(_ c: inout Call, _ sent: Sent, record: inout RequestRecord) throws(GatewayError) -> (result: Result, fresh: Bool) {
        let tool = c.tool
        switch sent {
        case .failure(let failure):
            c.release()
            if let stale = c.stale, failure.kind != .cancelled { return (served(stale, tool: tool, marker: "STALE", record: &record), false) }
            throw GatewayError(failure)
        case .response(var final):
            let status = Int(final.status.code)
            if c.retried, (200..<500).contains(status), status != 429 { metrics.retrySuccess(tool) }
            if status >= 500, let stale = c.stale {
                final.body.cancel()
                c.release()
                return (served(stale, tool: tool, marker: "STALE", record: &record), false)
            }
            if c.cacheKey != nil {
                final.headers.replaceOrAdd(name: "X-Cache", value: "MISS")
                record.cache = "MISS"
            }
            return (Result(response: final, release: c.release), true)
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
            case .cancelled, .responseTooLarge, .egressDenied, .invalidRequest: return .ignored
            }
        }
        guard let status else { return .ignored }
        if status == 429 { return .throttled }
        if status >= 500 { return .failure }
        if status >= 400 { return .ignored }
        return .success
    }

    /// The breaker a key starts with, the first time one of its calls is decided or recorded.
    private func newBreaker(_ tool: Tool) -> CircuitBreaker { CircuitBreaker(settings: settings.tools[tool]!.breaker) }

    func recordBreaker(key: String, tool: Tool, outcome: CircuitBreaker.Outcome, probe: Bool) {
        let r = random()
        let t = now()
        // One lookup of the (string) key: the outcome and the reopening time from the same access.
        func apply(_ breaker: inout CircuitBreaker) -> (CircuitBreaker.State?, Int64) {
            (breaker.onOutcome(outcome, probe: probe, now: t, random: r), breaker.reopensAt)
        }
        let (change, reopens) = breakers.withLock { b in breaker(key, tool, in: &b, now: t, apply) }
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
        let t = now()
        let change = breakers.withLock { b in breaker(key, tool, in: &b, now: t) { $0.forceOpen(until: until, now: t) } }
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
