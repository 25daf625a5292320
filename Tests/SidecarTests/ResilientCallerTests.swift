import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing
import Upstreams

@testable import Sidecar

/// The resilience stack with a scripted transport and a hand-driven clock.
@Suite("Resilient caller (cache, breaker, bulkhead, retries)")
struct ResilientCallerTests {
    /// Answers the n-th call (from 0) with the script's result; counts calls.
    final class ScriptedTransport: UpstreamTransport {
        let calls = Mutex(0)
        let script: @Sendable (Int) -> Result<UpstreamResponse, UpstreamError>
        let delay: Duration
        init(delay: Duration = .zero, _ script: @escaping @Sendable (Int) -> Result<UpstreamResponse, UpstreamError>) {
            self.script = script
            self.delay = delay
        }
        func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
            let n = calls.withLock { c in defer { c += 1 }; return c }
            if delay > .zero { try? await Task.sleep(for: delay) }
            return try script(n).get()
        }
        var count: Int { calls.withLock { $0 } }
    }

    /// Every call waits until `open()`: holds a bulkhead slot for as long as the test needs, not for a
    /// guessed time.
    final class GatedTransport: UpstreamTransport {
        private let state = Mutex<(calls: Int, open: Bool, waiters: [CheckedContinuation<Void, Never>])>((0, false, []))
        func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s in
                    s.calls += 1
                    if s.open { return true }
                    s.waiters.append(c)
                    return false
                }
                if now { c.resume() }
            }
            return try answer(200).get()
        }
        func open() {
            let waiters = state.withLock { s in
                s.open = true
                defer { s.waiters = [] }
                return s.waiters
            }
            for w in waiters { w.resume() }
        }
        var count: Int { state.withLock { $0.calls } }
    }

    final class FakeClock: Sendable {
        let ms = Atomic<Int64>(1_000_000_000)
        func advance(_ d: Int64) { ms.add(d, ordering: .relaxed) }
        var now: @Sendable () -> Int64 { { self.ms.load(ordering: .relaxed) } }
    }

    static func answer(_ status: Int, _ body: String = "{}", headers: [(String, String)] = []) -> Result<UpstreamResponse, UpstreamError> {
        .success(UpstreamResponse(
            status: HTTPResponseStatus(statusCode: status), headers: HTTPHeaders([("Content-Type", "application/json")] + headers),
            body: .bytes(ByteBuffer(string: body))))
    }

    static func settings(_ tweak: (inout ResilienceSettings) -> Void = { _ in }) -> ResilienceSettings {
        var s = ResilienceSettings()
        for tool in Tool.allCases {
            s.tools[tool]!.retry = RetryPolicy(maxAttempts: tool == .gmailSend ? 1 : 3, baseDelayMilliseconds: 1, maxDelayMilliseconds: 5)
        }
        tweak(&s)
        return s
    }

    static func caller(
        _ t: any UpstreamTransport, _ s: ResilienceSettings = settings(), clock: FakeClock = FakeClock(), shared: (any SharedCacheStore)? = nil
    ) -> ResilientCaller {
        ResilientCaller(transport: t, settings: s, metrics: GatewayMetrics(), logger: Logger(label: "test"), shared: shared, now: clock.now)
    }

    /// A shared-cache fake: a dictionary, and what was put.
    final class FakeSharedCache: SharedCacheStore {
        let entries = Mutex<[String: CachedResponse]>([:])
        let gets = Mutex(0)
        func get(_ key: String) async -> CachedResponse? {
            gets.withLock { $0 += 1 }
            return entries.withLock { $0[key] }
        }
        func put(_ key: String, _ response: CachedResponse) { entries.withLock { $0[key] = response } }
    }

    /// A deadline far enough away that no test meets it: a retry is refused when it cannot finish
    /// before the deadline, and with the suite's tests sharing two cooperative threads a slow run once
    /// took a retry test past a 5 s deadline (the retry was never sent).
    static var deadline: NIODeadline { .now() + .seconds(300) }

    static func serp(_ q: String = "coffee") throws -> (UpstreamRequest, CallTraits, String) {
        let adapter = SerpAPIAdapter()
        let call = try adapter.interpret(ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: "q=\(q)")))
        let request = UpstreamRequest(call: call, method: .GET, url: TargetURL(scheme: "https", host: "serpapi.com", path: "/search", query: "q=\(q)"),
                                      headers: [:], body: nil, deadline: deadline)
        return (request, adapter.traits(of: call), ResponseCache.serpAPIKey(call))
    }

    static func gmailSend() throws -> (UpstreamRequest, CallTraits) {
        let adapter = GmailAdapter()
        let body = #"{"raw":"VG86IGFAZXhhbXBsZS5jb20NClN1YmplY3Q6IGhpDQoNCmhp"}"#
        let call = try adapter.interpret(ToolRequest(method: .POST, path: "/gmail/v1/users/me/messages/send", headers: ["Content-Type": "application/json"], body: ByteBuffer(string: body)))
        let request = UpstreamRequest(call: call, method: .POST, url: TargetURL(scheme: "https", host: "gmail.googleapis.com", path: "/gmail/v1/users/me/messages/send"),
                                      headers: [:], body: ByteBuffer(string: body), deadline: deadline)
        return (request, adapter.traits(of: call))
    }

    static func record() -> RequestRecord { RequestRecord(requestID: "r", method: "GET", start: .now) }

    /// Calls and returns (status or error code, X-Cache, record).
    static func call(_ c: ResilientCaller, _ r: UpstreamRequest, _ traits: CallTraits, key: String?) async -> (String, String?, RequestRecord, [(String, String)]) {
        var rec = record()
        do {
            let result = try await c.call(r, traits: traits, cacheKey: key, record: &rec)
            defer { result.release() }
            result.response.body.cancel()
            return ("\(result.response.status.code)", result.response.headers.first(name: "x-cache"), rec, result.response.headers.map { ($0.name, $0.value) })
        } catch {
            return (error.codeString, nil, rec, error.headers)
        }
    }

    @Test func fiveFailuresOpenTheBreakerWhichThenFastFailsWithoutTheNetwork() async throws {
        let t = ScriptedTransport { _ in Self.answer(503) }
        let clock = FakeClock()
        let c = Self.caller(t, Self.settings { $0.tools[.serpapi]!.retry.maxAttempts = 1 }, clock: clock)
        let (r, traits, _) = try Self.serp()
        for _ in 0..<5 { #expect(await Self.call(c, r, traits, key: nil).0 == "503") }
        #expect(c.breakerState("serpapi") == .open)
        let (code, _, rec, headers) = await Self.call(c, r, traits, key: nil)
        #expect(code == "breaker_open")
        #expect(rec.breaker == "open")
        #expect(headers.contains { $0.0 == "Retry-After" && Int($0.1)! >= 1 })
        #expect(t.count == 5)

        // After the open period exactly one probe goes out; its failure re-opens the breaker.
        clock.advance(3_000)
        #expect(await Self.call(c, r, traits, key: nil).0 == "503")  // the probe fails (same script) and is not retried
        #expect(c.breakerState("serpapi") == .open)
        #expect(t.count == 6)
    }

    @Test func aHealthyProbeClosesTheBreaker() async throws {
        let failing = Atomic<Bool>(true)
        let t = ScriptedTransport { _ in failing.load(ordering: .relaxed) ? Self.answer(500) : Self.answer(200) }
        let clock = FakeClock()
        let c = Self.caller(t, Self.settings { $0.tools[.serpapi]!.retry.maxAttempts = 1 }, clock: clock)
        let (r, traits, _) = try Self.serp()
        for _ in 0..<5 { _ = await Self.call(c, r, traits, key: nil) }
        #expect(c.breakerState("serpapi") == .open)
        failing.store(false, ordering: .relaxed)
        clock.advance(3_000)
        #expect(await Self.call(c, r, traits, key: nil).0 == "200")
        #expect(c.breakerState("serpapi") == .closed)
        #expect(await Self.call(c, r, traits, key: nil).0 == "200")
    }

    @Test func http429AndOther4xxNeverTrip() async throws {
        let t = ScriptedTransport { n in n % 2 == 0 ? Self.answer(429, headers: [("Retry-After", "0")]) : Self.answer(404) }
        let c = Self.caller(t)
        let (r, traits, _) = try Self.serp()
        for _ in 0..<30 { _ = await Self.call(c, r, traits, key: nil) }
        #expect(c.breakerState("serpapi") == .closed)
    }

    @Test func a429WithAWaitHintPausesTheToolForEveryCaller() async throws {
        let t = ScriptedTransport { n in n == 0 ? Self.answer(429, headers: [("Retry-After", "2")]) : Self.answer(200) }
        let clock = FakeClock()
        let c = Self.caller(t, clock: clock)
        let (r, traits, _) = try Self.serp()
        #expect(await Self.call(c, r, traits, key: nil).0 == "429")  // the upstream's own answer, passed on
        let (code, _, rec, headers) = await Self.call(c, try Self.serp("other").0, traits, key: nil)
        #expect(code == "tool_throttled" && rec.breaker == "throttled")
        #expect(headers.contains { $0.0 == "Retry-After" && $0.1 == "2" })
        #expect(t.count == 1, "held without touching the upstream")
        clock.advance(2_000)
        #expect(await Self.call(c, r, traits, key: nil).0 == "200")
        #expect(c.breakerState("serpapi") == .closed)
    }

    @Test func transientFailuresAreRetriedAndCounted() async throws {
        let t = ScriptedTransport { n in n < 2 ? Self.answer(503) : Self.answer(200, #"{"ok":true}"#) }
        let c = Self.caller(t)
        let (r, traits, _) = try Self.serp()
        let (code, _, rec, _) = await Self.call(c, r, traits, key: nil)
        #expect(code == "200")
        #expect(rec.retries == 2 && t.count == 3)
    }

    @Test func connectErrorsAreRetriedThenReported() async throws {
        let t = ScriptedTransport { _ in .failure(UpstreamError(.unreachable, beforeSend: true, detail: "refused")) }
        let c = Self.caller(t)
        let (r, traits, _) = try Self.serp()
        let (code, _, rec, _) = await Self.call(c, r, traits, key: nil)
        #expect(code == "upstream_unreachable")
        #expect(rec.retries == 2 && t.count == 3)
    }

    @Test func gmailSendIsNeverRetried() async throws {
        for failure in [Self.answer(503), .failure(UpstreamError(.timeout, beforeSend: false, detail: "deadline")),
                        .failure(UpstreamError(.unreachable, beforeSend: true, detail: "refused"))] as [Result<UpstreamResponse, UpstreamError>] {
            let t = ScriptedTransport { _ in failure }
            // Even with a retry policy configured, the side-effecting trait wins.
            let c = Self.caller(t, Self.settings { $0.tools[.gmailSend]!.retry.maxAttempts = 5 })
            let (r, traits) = try Self.gmailSend()
            let (_, _, rec, _) = await Self.call(c, r, traits, key: nil)
            #expect(t.count == 1 && rec.retries == 0)
        }
    }

    @Test func theRetryBudgetStopsARetryStorm() async throws {
        let t = ScriptedTransport { _ in Self.answer(503) }
        let c = Self.caller(t, Self.settings {
            $0.retryBudgetRatio = 0.1
            $0.retryBudgetMinimumPerSecond = 1
            $0.tools[.serpapi]!.breaker.consecutiveFailures = 10_000
            $0.tools[.serpapi]!.breaker.minimumVolume = 10_000
        })
        let (r, traits, _) = try Self.serp()
        for _ in 0..<100 { _ = await Self.call(c, r, traits, key: nil) }
        // 100 calls: at most 10 % retries plus the floor of 1 (time does not move).
        #expect(t.count <= 100 + 10 + 1)
        #expect(t.count >= 100 + 9)
    }

    @Test func cacheMissThenHitThenStaleWhenTheUpstreamFails() async throws {
        let fail = Atomic<Bool>(false)
        let t = ScriptedTransport { _ in fail.load(ordering: .relaxed) ? Self.answer(503) : Self.answer(200, #"{"organic_results":[1]}"#) }
        let clock = FakeClock()
        let c = Self.caller(t, Self.settings { $0.tools[.serpapi]!.retry.maxAttempts = 1 }, clock: clock)
        let (r, traits, key) = try Self.serp()
        #expect(await Self.call(c, r, traits, key: key).1 == "MISS")
        #expect(await Self.call(c, r, traits, key: key).1 == "HIT")
        #expect(t.count == 1)
        // Past the TTL (600 s) the upstream is asked again; if it fails, the expired answer is served, marked.
        clock.advance(601_000)
        fail.store(true, ordering: .relaxed)
        let (code, marker, _, headers) = await Self.call(c, r, traits, key: key)
        #expect(code == "200" && marker == "STALE")
        #expect(headers.contains { $0.0 == "Warning" })
        #expect(t.count == 2)
        // Past the stale window (300 s more) nothing is served from cache.
        clock.advance(301_000)
        #expect(await Self.call(c, r, traits, key: key).0 == "503")
    }

    @Test func aStaleAnswerIsServedWhileTheBreakerIsOpen() async throws {
        let fail = Atomic<Bool>(false)
        let t = ScriptedTransport { _ in fail.load(ordering: .relaxed) ? Self.answer(503) : Self.answer(200, #"{"organic_results":[]}"#) }
        let clock = FakeClock()
        let c = Self.caller(t, Self.settings { $0.tools[.serpapi]!.retry.maxAttempts = 1 }, clock: clock)
        let (r, traits, key) = try Self.serp("cached")
        _ = await Self.call(c, r, traits, key: key)
        clock.advance(601_000)
        fail.store(true, ordering: .relaxed)
        for i in 0..<5 { _ = await Self.call(c, try Self.serp("other\(i)").0, traits, key: nil) }
        #expect(c.breakerState("serpapi") == .open)
        let before = t.count
        let (code, marker, rec, _) = await Self.call(c, r, traits, key: key)
        #expect(code == "200" && marker == "STALE" && rec.breaker == "open")
        #expect(t.count == before)
    }

    @Test func errorsAndNoStoreAnswersAreNotCached() async throws {
        let t = ScriptedTransport { n in n == 0 ? Self.answer(500) : Self.answer(200, "{}", headers: [("Cache-Control", "no-store")]) }
        let c = Self.caller(t, Self.settings { $0.tools[.serpapi]!.retry.maxAttempts = 1 })
        let (r, traits, key) = try Self.serp()
        for _ in 0..<3 { #expect(await Self.call(c, r, traits, key: key).1 != "HIT") }
        #expect(t.count == 3)
    }

    /// An answer that says gzip but cannot be undone is passed on (the pipeline answers it 502) and never
    /// stored — or every hit would fail the same way until the TTL ran out; one that can is stored.
    @Test(arguments: [
        ([31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 171, 174, 5, 0, 67, 191, 166, 163, 2, 0, 0, 0] as [UInt8], 1),  // gzip of "{}"
        ([31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 171, 174, 5, 0, 67, 191], 2),  // the same, cut off
        (Array("hello".utf8), 2),  // not gzip at all
        ([], 2),  // nothing
    ])
    func anAnswerItsGzipCannotUndoIsNeverStored(body: [UInt8], upstreamCalls: Int) async throws {
        let t = ScriptedTransport { _ in
            .success(UpstreamResponse(
                status: .ok, headers: ["Content-Type": "application/json", "Content-Encoding": "gzip"], body: .bytes(ByteBuffer(bytes: body))))
        }
        let c = Self.caller(t)
        let (r, traits, key) = try Self.serp("gzip")
        #expect(await Self.call(c, r, traits, key: key).1 == "MISS")
        #expect(await Self.call(c, r, traits, key: key).1 == (upstreamCalls == 1 ? "HIT" : "MISS"))
        #expect(t.count == upstreamCalls)
    }

    @Test func concurrentMissesMakeOneUpstreamCall() async throws {
        let t = ScriptedTransport(delay: .milliseconds(50)) { _ in Self.answer(200, #"{"organic_results":[]}"#) }
        let c = Self.caller(t)
        let (r, traits, key) = try Self.serp("popular")
        let markers = await withTaskGroup(of: String?.self) { g in
            for _ in 0..<10 { g.addTask { await Self.call(c, r, traits, key: key).1 } }
            var out: [String?] = []
            for await m in g { out.append(m) }
            return out
        }
        #expect(t.count == 1)
        #expect(markers.filter { $0 == "MISS" }.count == 1 && markers.filter { $0 == "HIT" }.count == 9)
    }

    @Test func anAnswerWhoseBodyArrivesAfterItsHeadIsStillCachedForTheWaiters() async throws {
        // A live upstream: the head first, the body 30 ms later (as a slow TLS upstream delivers it).
        let t = ScriptedTransport(delay: .milliseconds(20)) { _ in
            let stream = BodyStream()
            let body = #"{"organic_results":["late"]}"#
            Task {
                try? await Task.sleep(for: .milliseconds(30))
                _ = stream.append(ByteBuffer(string: body), on: MultiThreadedEventLoopGroup.singleton.any())
                stream.finish()
            }
            return .success(UpstreamResponse(
                status: .ok, headers: HTTPHeaders([("Content-Type", "application/json"), ("Content-Length", String(body.utf8.count))]), body: .stream(stream)))
        }
        let c = Self.caller(t)
        let (r, traits, key) = try Self.serp("late")
        let markers = await withTaskGroup(of: String?.self) { g in
            for _ in 0..<6 { g.addTask { await Self.call(c, r, traits, key: key).1 } }
            var out: [String?] = []
            for await m in g { out.append(m) }
            return out
        }
        #expect(t.count == 1 && markers.filter { $0 == "HIT" }.count == 5)
        #expect(await Self.call(c, r, traits, key: key).1 == "HIT")
    }

    @Test func aFullBulkheadAnswersToolSaturated() async throws {
        // The first call holds the only slot until the other two have been answered: one waited its
        // 50 ms in the queue, one found the queue full. (A transport that slept 1 s failed on a loaded
        // machine: a call that started late found the slot free.)
        let t = GatedTransport()
        let c = Self.caller(t, Self.settings {
            $0.tools[.serpapi]!.maxConcurrent = 1
            $0.tools[.serpapi]!.queue = 1
            $0.tools[.serpapi]!.queueWait = .milliseconds(50)
        })
        let (r, traits, _) = try Self.serp()
        let codes = await withTaskGroup(of: String.self) { g in
            for _ in 0..<3 { g.addTask { await Self.call(c, r, traits, key: nil).0 } }
            var out: [String] = []
            for await code in g {
                out.append(code)
                if out.count == 2 { t.open() }
            }
            return out.sorted()
        }
        #expect(codes == ["200", "tool_saturated", "tool_saturated"])
        #expect(t.count == 1)
    }

    @Test func aLocalMissIsAnsweredFromTheFleetsSharedCache() async throws {
        let t = ScriptedTransport { _ in Self.answer(200, #"{"organic_results":["fresh"]}"#) }
        let clock = FakeClock()
        let shared = FakeSharedCache()
        let (r, traits, key) = try Self.serp("shared")
        let now = clock.now()
        shared.put(key, CachedResponse(status: .ok, headers: ["Content-Type": "application/json"], body: ByteBuffer(string: #"{"from":"fleet"}"#),
                                       storedAt: now - 5_000, expiresAt: now + 60_000, staleUntil: now + 360_000))
        let c = Self.caller(t, clock: clock, shared: shared)
        let (code, marker, _, headers) = await Self.call(c, r, traits, key: key)
        #expect(code == "200" && marker == "HIT" && t.count == 0)
        #expect(headers.contains { $0.0 == "Age" && $0.1 == "5" })
        // Now in the local cache too: no second shared lookup.
        #expect(await Self.call(c, r, traits, key: key).1 == "HIT")
        #expect(shared.gets.withLock { $0 } == 1)
    }

    @Test func whatOneSidecarStoresIsPutInTheSharedCache() async throws {
        let t = ScriptedTransport { _ in Self.answer(200, #"{"organic_results":[]}"#) }
        let shared = FakeSharedCache()
        let (r, traits, key) = try Self.serp("put")
        _ = await Self.call(Self.caller(t, shared: shared), r, traits, key: key)
        let stored = try #require(shared.entries.withLock { $0[key] })
        #expect(String(buffer: stored.body) == #"{"organic_results":[]}"#)
        // A second sidecar (its own local cache) answers from it without calling the upstream.
        _ = await Self.call(Self.caller(t, shared: shared), r, traits, key: key)
        #expect(t.count == 1)
    }

    @Test func anExpiredSharedAnswerIsOnlyServedStaleWhenTheUpstreamFails() async throws {
        let t = ScriptedTransport { _ in Self.answer(503) }
        let clock = FakeClock()
        let shared = FakeSharedCache()
        let (r, traits, key) = try Self.serp("old")
        let now = clock.now()
        shared.put(key, CachedResponse(status: .ok, headers: [:], body: ByteBuffer(string: "{}"), storedAt: now - 700_000,
                                       expiresAt: now - 100_000, staleUntil: now + 200_000))
        let c = Self.caller(t, Self.settings { $0.tools[.serpapi]!.retry.maxAttempts = 1 }, clock: clock, shared: shared)
        let (code, marker, _, _) = await Self.call(c, r, traits, key: key)
        #expect(code == "200" && marker == "STALE" && t.count == 1)
    }

    @Test func theSharedFormRoundTripsAnyBody() throws {
        var body = ByteBuffer()
        body.writeBytes((0..<256).map { UInt8($0) })
        let r = CachedResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "application/octet-stream"), ("X-A", "1"), ("X-A", "2")]),
                               body: body, storedAt: 1, expiresAt: 2, staleUntil: 3)
        let text = try #require(RedisSharedCache.encode(r))
        let back = try #require(RedisSharedCache.decode(text))
        #expect(back.status == .ok && back.body == body && back.headers["x-a"] == ["1", "2"])
        #expect(back.storedAt == 1 && back.expiresAt == 2 && back.staleUntil == 3)
        for garbage in ["", "{}", "not json", #"{"status":200,"headers":[["a"]],"body":"","storedAt":1,"expiresAt":2,"staleUntil":3}"#,
                        #"{"status":99,"headers":[],"body":"","storedAt":1,"expiresAt":2,"staleUntil":3}"#] {
            #expect(RedisSharedCache.decode(garbage) == nil, "\(garbage)")
        }
    }

    @Test func breakersForFetchAreKeptPerDestinationHost() throws {
        let a = try HTTPFetchAdapter().interpret(ToolRequest(method: .GET, path: "/fetch", target: TargetURL.parse("https://a.example/x")))
        let b = try HTTPFetchAdapter().interpret(ToolRequest(method: .GET, path: "/fetch", target: TargetURL.parse("https://b.example/x")))
        func req(_ call: ToolCall) -> UpstreamRequest {
            UpstreamRequest(call: call, method: .GET, url: call.request.target!, headers: [:], body: nil, deadline: .now())
        }
        #expect(ResilientCaller.breakerKey(req(a)) == "http_fetch|a.example")
        #expect(ResilientCaller.breakerKey(req(a)) != ResilientCaller.breakerKey(req(b)))
    }

    @Test(arguments: [
        (200, nil, CircuitBreaker.Outcome.success), (404, nil, .ignored), (429, nil, .throttled), (500, nil, .failure), (503, nil, .failure),
        (nil, UpstreamError(.timeout, beforeSend: false, detail: ""), .failure), (nil, UpstreamError(.unreachable, beforeSend: true, detail: ""), .failure),
        (nil, UpstreamError(.egressDenied, beforeSend: true, detail: ""), .ignored), (nil, UpstreamError(.cancelled, beforeSend: false, detail: ""), .ignored),
        // An agent's unsendable request says nothing about the upstream: it must not open the breaker.
        (nil, UpstreamError(.invalidRequest, beforeSend: true, detail: ""), .ignored),
    ] as [(Int?, UpstreamError?, CircuitBreaker.Outcome)])
    func outcomeClassification(_ status: Int?, _ error: UpstreamError?, _ expected: CircuitBreaker.Outcome) {
        #expect(ResilientCaller.outcome(status: status, error: error) == expected)
    }

    @Test func perHostBreakersStayBoundedAndKeepWhatMatters() {
        let t: Int64 = 1_000_000
        var breakers: [String: CircuitBreaker] = ["serpapi": CircuitBreaker(), "http_fetch": CircuitBreaker()]
        var open = CircuitBreaker()
        for _ in 0..<5 { _ = open.onRequest(now: t); open.onOutcome(.failure, probe: false, now: t, random: 0.5) }
        breakers["http_fetch|down.example"] = open
        for i in 0..<(ResilientCaller.maxHostBreakers + 10) { breakers["http_fetch|h\(i).example"] = CircuitBreaker() }
        ResilientCaller.prune(&breakers, now: t)
        // The quiet per-host breakers go; the open one and the tools' own stay.
        #expect(Set(breakers.keys) == ["serpapi", "http_fetch", "http_fetch|down.example"])
        // Thousands of failing hosts: still bounded.
        for i in 0..<(3 * ResilientCaller.maxHostBreakers) { breakers["http_fetch|f\(i).example"] = open }
        ResilientCaller.prune(&breakers, now: t)
        #expect(Set(breakers.keys) == ["serpapi", "http_fetch"])
    }
}
