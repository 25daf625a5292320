import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Policy
import Synchronization
import Testing
import Upstreams

@testable import Sidecar

/// Stateful limits on the loop path: a call with concurrency, rate or quota limits is admitted from the
/// connection's loop (no task) when the store can, settled once its answer has been written, refunded
/// when nothing was sent — the same decisions as the async path.
@Suite("Limits on the loop path")
struct LoopLimitsTests {
    static let loop = LoopStartTests.loop

    /// One slot in flight and two calls a day for the anonymous agent (authentication off).
    static let policy = """
        version: 1
        roles:
          anonymous:
            allow: ["serpapi:search"]
            concurrency: 1
            rules:
              - scope: "serpapi:search"
                quota: {limit: 2, window: day, timezone: UTC}
        """

    static func pipeline(_ transport: any UpstreamTransport, limits: any LimitStore) throws -> Pipeline {
        let policy = try PolicyRuntime(file: nil, metrics: GatewayMetrics(), logger: Logger(label: "test"))
        try policy.install(Self.policy, reason: "test")
        return LoopStartTests.pipeline(transport, resilient: true, policy: policy, limits: limits)
    }

    /// Starts a call on the loop, as the connection handler does, and waits for its answer.
    static func call(_ p: Pipeline, _ n: Int) async throws -> Pipeline.Handled {
        var built = PipelineTests.request(.GET, "/serpapi/search?q=\(n)")
        built.requestID = "rid-\(n)"
        let request = built
        let promise = loop.makePromise(of: Pipeline.Handled.self)
        let record = RequestRecord(requestID: request.requestID, method: "GET", start: .now)
        try await loop.submit { _ = p.start(request, record: record, on: loop) { promise.succeed($0) } }.get()
        return try await promise.futureResult.get()
    }

    /// What the connection handler does once it writes the answer: completes it from its loop.
    static func written(_ handled: Pipeline.Handled) async throws {
        let completion = handled.response.completion
        try await loop.submit { completion.start(on: loop) }.get()
    }

    @Test func admittedOnTheLoopHeldUntilTheAnswerIsWrittenAndCounted() async throws {
        let t = LoopStartTests.LoopTransport { _ in ResilientCallerTests.answer(200) }
        let p = try Self.pipeline(t, limits: try EmbeddedLimitStore(databasePath: ":memory:"))
        let first = try await Self.call(p, 1)
        #expect(first.response.status == .ok)
        #expect(t.started.withLock { $0 } == 1 && t.sent.withLock { $0 } == 0, "admitted and sent from the loop, no task")
        guard case .settle = first.response.completion else {
            Issue.record("a loop-path call settles its limits on the loop")
            return
        }
        let second = try await Self.call(p, 2)
        #expect(second.record.outcome == "concurrency_limited", "the slot is held until the answer has been written")
        try await Self.written(first)
        let third = try await Self.call(p, 3)
        #expect(third.response.status == .ok, "written, settled: the slot is free")
        try await Self.written(third)
        let fourth = try await Self.call(p, 4)
        #expect(fourth.record.outcome == "quota_exceeded" && fourth.response.status.code == 429)
        #expect(fourth.response.headers.first(name: "retry-after") != nil)
        #expect(t.started.withLock { $0 } == 2, "refusals never reach the upstream")
    }

    @Test func aCallThatSentNothingGivesItsQuotaAndSlotBack() async throws {
        // Unreachable before sending, then a good answer: with a quota of 2, three calls succeed only
        // if the failed ones were refunded (and the slot freed each time).
        let t = LoopStartTests.LoopTransport { n in
            n < 3 ? .failure(UpstreamError(.unreachable, beforeSend: true, detail: "refused")) : ResilientCallerTests.answer(200)
        }
        let p = try Self.pipeline(t, limits: try EmbeddedLimitStore(databasePath: ":memory:"))
        let failed = try await Self.call(p, 1)
        #expect(failed.record.outcome == "upstream_unreachable")
        try await Self.written(failed)
        for n in 2...3 {
            let ok = try await Self.call(p, n)
            #expect(ok.response.status == .ok, "call \(n)")
            try await Self.written(ok)
        }
        #expect(try await Self.call(p, 4).record.outcome == "quota_exceeded")
    }

    @Test func aStoreWithoutALoopPathIsAskedFromATask() async throws {
        /// The embedded store's decisions, through the async methods only.
        final class AsyncOnly: LimitStore {
            let inner: EmbeddedLimitStore
            let asked = Mutex(0)
            init() throws { inner = try EmbeddedLimitStore(databasePath: ":memory:") }
            func admit(agent: String, checks: [LimitCheck], leaseID: String) async throws -> Admission {
                asked.withLock { $0 += 1 }
                return try await inner.admit(agent: agent, checks: checks, leaseID: leaseID)
            }
            func settle(agent: String, _ settlement: Settlement) async throws { try await inner.settle(agent: agent, settlement) }
        }
        let store = try AsyncOnly()
        let t = LoopStartTests.LoopTransport { _ in ResilientCallerTests.answer(200) }
        let p = try Self.pipeline(t, limits: store)
        let first = try await Self.call(p, 1)
        #expect(first.response.status == .ok && store.asked.withLock { $0 } == 1)
        if case .async = first.response.completion {} else { Issue.record("settled from a task") }
        #expect(try await Self.call(p, 2).record.outcome == "concurrency_limited")
        await first.response.completion.run()
        #expect(try await Self.call(p, 3).response.status == .ok)
    }

    @Test func aCancelBeforeTheNextStageStopsIt() async throws {
        let early = LoopCancel(Self.loop)
        let cancelledStage = Mutex(false)
        let sawCancel = try await Self.loop.submit {
            early.cancel()
            let seen = early.isCancelled
            early.then { cancelledStage.withLock { $0 = true } }
            return seen
        }.get()
        #expect(sawCancel)
        #expect(cancelledStage.withLock { $0 }, "a stage handed over after the cancel is cancelled at once")

        let late = LoopCancel(Self.loop)
        let stage = Mutex(0)
        let before = try await Self.loop.submit {
            late.then { stage.withLock { $0 += 1 } }
            return late.isCancelled
        }.get()
        #expect(!before)
        late.cancel()  // from off the loop: it hops there
        #expect(try await Self.loop.submit { late.isCancelled }.get())
        #expect(stage.withLock { $0 } == 1, "the running stage was cancelled once")
    }
}
