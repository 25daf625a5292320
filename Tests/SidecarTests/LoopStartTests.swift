import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Policy
import Synchronization
import Testing
import Upstreams

@testable import Sidecar

/// The task-free path: `ResilientCaller.start` and `Pipeline.start` answer through event-loop futures
/// when no stage has to wait, continue in a task where one does, and answer exactly as the async path.
@Suite("Loop start (no task per request)")
struct LoopStartTests {
    /// A transport that starts calls on the loop (counting them apart from async sends) and answers from
    /// a script; `hold` keeps a started call open until cancelled.
    final class LoopTransport: UpstreamTransport {
        let started = Mutex(0)
        let sent = Mutex(0)
        let script: @Sendable (Int) -> Result<UpstreamResponse, UpstreamError>
        let hold: Bool
        let requests = Mutex<[UpstreamRequest]>([])

        init(hold: Bool = false, _ script: @escaping @Sendable (Int) -> Result<UpstreamResponse, UpstreamError>) {
            self.script = script
            self.hold = hold
        }

        private func next() -> Int { started.withLock { $0 } + sent.withLock { $0 } }

        func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
            let n = next()
            sent.withLock { $0 += 1 }
            requests.withLock { $0.append(request) }
            return try script(n).get()
        }

        func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? {
            let n = next()
            started.withLock { $0 += 1 }
            requests.withLock { $0.append(request) }
            let promise = loop.makePromise(of: UpstreamResponse.self)
            if !hold {
                switch script(n) {
                case .success(let r): promise.succeed(r)
                case .failure(let e): promise.fail(e)
                }
            }
            return StartedCall(response: promise.futureResult) {
                promise.fail(UpstreamError(.cancelled, beforeSend: false, detail: "cancelled"))
            }
        }
    }

    static let loop = MultiThreadedEventLoopGroup.singleton.next()

    static func caller(_ t: any UpstreamTransport, _ tweak: (inout ResilienceSettings) -> Void = { _ in }) -> ResilientCaller {
        ResilientCallerTests.caller(t, ResilientCallerTests.settings(tweak))
    }

    /// Starts on the loop; the outcome arrives through the future. Nil when the call was not started.
    static func begin(
        _ c: ResilientCaller, _ r: UpstreamRequest, _ traits: CallTraits, cacheKey: String? = nil
    ) -> (EventLoopFuture<ResilientCaller.Outcome>, cancel: @Sendable () -> Void)? {
        let promise = loop.makePromise(of: ResilientCaller.Outcome.self)
        let cancel = c.start(r, traits: traits, cacheKey: cacheKey, on: loop, record: ResilientCallerTests.record()) { promise.succeed($0) }
        guard let cancel else {
            promise.fail(CancellationError())
            return nil
        }
        return (promise.futureResult, cancel)
    }

    /// Starts on the loop and waits for the outcome: (status or error code, record).
    static func start(_ c: ResilientCaller, _ r: UpstreamRequest, _ traits: CallTraits) async throws -> (String, RequestRecord) {
        let (future, _) = try #require(begin(c, r, traits))
        let outcome = try await future.get()
        switch outcome.result {
        case .success(let result):
            result.release()
            return ("\(result.response.status.code)", outcome.record)
        case .failure(let e):
            return (e.codeString, outcome.record)
        }
    }

    @Test func aCallWithNothingToWaitForIsStartedOnTheLoop() async throws {
        let t = LoopTransport { _ in ResilientCallerTests.answer(200) }
        let (r, traits, _) = try ResilientCallerTests.serp()
        let (code, record) = try await Self.start(Self.caller(t), r, traits)
        #expect(code == "200" && record.retries == 0)
        #expect(t.started.withLock { $0 } == 1 && t.sent.withLock { $0 } == 0)
    }

    @Test func aCallWithACacheKeyIsLeftToTheAsyncPath() throws {
        let t = LoopTransport { _ in ResilientCallerTests.answer(200) }
        let (r, traits, key) = try ResilientCallerTests.serp()
        #expect(Self.begin(Self.caller(t), r, traits, cacheKey: key) == nil)
        #expect(t.started.withLock { $0 } == 0)
    }

    @Test func aRetryContinuesInATaskAndIsCounted() async throws {
        let t = LoopTransport { n in n == 0 ? ResilientCallerTests.answer(503) : ResilientCallerTests.answer(200) }
        let (r, traits, _) = try ResilientCallerTests.serp()
        let (code, record) = try await Self.start(Self.caller(t), r, traits)
        #expect(code == "200" && record.retries == 1)
        #expect(t.started.withLock { $0 } == 1 && t.sent.withLock { $0 } == 1)
    }

    @Test func gmailIsNeverRetriedOnTheLoopEither() async throws {
        let t = LoopTransport { _ in ResilientCallerTests.answer(503) }
        let (r, traits) = try ResilientCallerTests.gmailSend()
        let (code, record) = try await Self.start(Self.caller(t), r, traits)
        #expect(code == "503" && record.retries == 0)
        #expect(t.started.withLock { $0 } + t.sent.withLock { $0 } == 1)
    }

    @Test func anOpenBreakerAnswersWithoutTheTransport() async throws {
        let t = LoopTransport { _ in ResilientCallerTests.answer(503) }
        let (r, traits, _) = try ResilientCallerTests.serp()
        let c = Self.caller(t) { s in s.tools[.serpapi]!.retry.maxAttempts = 1 }
        for _ in 0..<5 { _ = try await Self.start(c, r, traits) }
        let before = t.started.withLock { $0 } + t.sent.withLock { $0 }
        let (code, record) = try await Self.start(c, r, traits)
        #expect(code == "breaker_open" && record.breaker == "open")
        #expect(t.started.withLock { $0 } + t.sent.withLock { $0 } == before)
    }

    @Test func aFullBulkheadQueuesTheCallInATask() async throws {
        let t = LoopTransport { _ in ResilientCallerTests.answer(200) }
        let (r, traits, _) = try ResilientCallerTests.serp()
        let c = Self.caller(t) { s in s.tools[.serpapi]!.maxConcurrent = 1 }
        // The first call holds the only slot until its answer is released.
        let (first, _) = try #require(Self.begin(c, r, traits))
        let held = try await first.get()
        let (second, _) = try #require(Self.begin(c, r, traits))
        try await Task.sleep(for: .milliseconds(50))
        #expect(t.sent.withLock { $0 } == 0, "the second call waits for the slot")
        try held.result.get().release()
        let outcome = try await second.get()
        #expect(try outcome.result.get().response.status == .ok)
        #expect(t.sent.withLock { $0 } == 1, "it went out from the task once the slot was free")
    }

    @Test func cancellingAStartedCallAbortsIt() async throws {
        let t = LoopTransport(hold: true) { _ in ResilientCallerTests.answer(200) }
        let (r, traits, _) = try ResilientCallerTests.serp()
        let (future, cancel) = try #require(Self.begin(Self.caller(t), r, traits))
        cancel()
        let outcome = try await future.get()
        guard case .failure(let e) = outcome.result else { Issue.record("a cancelled call answered"); return }
        #expect(e.codeString == "upstream_protocol_error")
    }

    // MARK: Pipeline

    /// Every tool live against `transport`, the serpapi cache off; a policy and its limit store when given.
    static func pipeline(
        _ transport: any UpstreamTransport, resilient: Bool, policy: PolicyRuntime? = nil, limits: (any LimitStore)? = nil
    ) -> Pipeline {
        var config = SidecarConfig()
        for tool in Tool.allCases { config.tools[tool]!.mode = .live }
        return Pipeline(
            classifier: EntryClassifier(hosts: config.tools.mapValues(\.hosts)), adapters: ToolAdapters(), transport: transport,
            credentials: StaticCredentials([.serpapi: Credential("SERP-SECRET-KEY")]), settings: PipelineSettings(config: config),
            metrics: policy?.metrics, policy: policy, limits: limits,
            resilience: resilient ? Self.caller(transport) { s in s.tools[.serpapi]!.cacheTTL = .zero } : nil)
    }

    static func handled(_ p: Pipeline, _ request: InboundRequest) async throws -> Pipeline.Handled {
        let promise = loop.makePromise(of: Pipeline.Handled.self)
        _ = p.start(request, record: RequestRecord(requestID: "rid-1", method: "GET", start: .now), on: loop) { promise.succeed($0) }
        return try await promise.futureResult.get()
    }

    @Test(arguments: [true, false])
    func theLoopPathAnswersLikeTheAsyncPath(resilient: Bool) async throws {
        let echo = #"{"echo":"SERP-SECRET-KEY","organic_results":[]}"#
        let loopT = LoopTransport { _ in ResilientCallerTests.answer(200, echo) }
        let asyncT = RecordingTransport.ok(echo)
        let request = PipelineTests.request(.GET, "/serpapi/search?q=x&api_key=agent", headers: [("X-Request-Id", "rid-1")])
        let fast = try await Self.handled(Self.pipeline(loopT, resilient: resilient), request)
        var record = RequestRecord(requestID: "rid-1", method: "GET", start: .now)
        let slow = await Self.pipeline(asyncT, resilient: resilient).handle(request, record: &record)
        #expect(loopT.started.withLock { $0 } == 1 && loopT.sent.withLock { $0 } == 0)
        #expect(fast.response.status == slow.status)
        #expect(fast.response.headers.map(\.name) == slow.headers.map(\.name))
        let fastBody = try #require(Self.whole(fast.response))
        #expect(fastBody == Self.whole(slow))
        #expect(!fastBody.contains("SERP-SECRET-KEY"))
        #expect(loopT.requests.withLock { $0.first?.url.query } == "q=x&api_key=SERP-SECRET-KEY")
        #expect(fast.record.tool == .serpapi && fast.record.action == "search" && fast.record.upstreamStatus == 200)
        if case .sync = fast.response.completion {} else { Issue.record("an unmetered call frees its slot on the loop") }
    }

    @Test func refusalsAndTheCompatibilityAPIAnswerThroughTheSameFuture() async throws {
        let p = Self.pipeline(LoopTransport { _ in ResilientCallerTests.answer(200) }, resilient: true)
        let missing = try await Self.handled(p, PipelineTests.request(.GET, "/nothing"))
        #expect(missing.response.status == .notFound && missing.record.outcome == "route_not_found")
        let compat = try await Self.handled(
            p,
            PipelineTests.request(
                .POST, "/api/proxy-request", headers: [("Content-Type", "application/json")],
                body: #"{"tool":"serpapi","action":"search","params":{"q":"coffee"}}"#))
        #expect(compat.response.status == .ok && compat.record.entry == .compat)
    }

    @Test func aTransportWithoutALoopStartIsServedFromATask() async throws {
        let t = RecordingTransport.ok(#"{"organic_results":[]}"#)
        let handled = try await Self.handled(Self.pipeline(t, resilient: true), PipelineTests.request(.GET, "/serpapi/search?q=x"))
        #expect(handled.response.status == .ok)
        #expect(t.sent.withLock { $0.count } == 1)
    }

    static func whole(_ r: ProxyResponse) -> String? {
        switch r.body {
        case .buffer(let b): return String(buffer: b)
        case .stream(let s, _): return try? s.takeCompleteBody().map { String(buffer: $0) }
        }
    }
}
