import Foundation
import Policy
import Testing
import Upstreams

@testable import Sidecar

/// The one contract both run stores keep (embedded SQLite and Redis): the same calls, the same answers.
enum RunStoreContract {
    static func newRun(agent: String = "agt_a", budget: RunBudget = RunBudget(), parent: Run? = nil, at now: Int64 = 1_000_000) -> Run {
        let id = parent.map { Run.newChildID(parent: $0.id) } ?? Run.newRootID()
        return Run(
            id: id, agent: agent, createdBy: agent, name: "t", input: nil, tags: [], status: .created, budget: budget, parent: parent?.id,
            chain: [id] + (parent?.chain ?? []), createdAt: now)
    }

    static func created(_ c: RunCreation) -> Run? { if case .created(let r) = c { return r } else { return nil } }

    static func run(_ store: any RunStore) async throws {
        try await idempotency(store)
        try await transitionsAndEvents(store)
        try await reservations(store)
        try await familiesAndDeadlines(store)
        try await trimmingAndClaims(store)
        try await listing(store)
        try await openCounts(store)
    }

    /// An agent's unfinished runs (the cap `runs.max_open_per_agent`): counted per agent, and a run leaves
    /// the count when it finishes — at the cap, where the Redis store re-checks its members, too.
    static func openCounts(_ store: any RunStore) async throws {
        var made: [String] = []
        for i in 0..<20 {
            made.append(created(try await store.create(newRun(agent: "agt_open", at: 7_000_000 + Int64(i)), caller: "agt_open", clientToken: nil, digest: ""))!.id)
        }
        _ = try await store.create(newRun(agent: "agt_other"), caller: "agt_other", clientToken: nil, digest: "")
        #expect(try await store.openCount(agent: "agt_open", cap: 5) == 20)
        _ = try await store.apply(.start, to: made[0], reason: nil, now: 7_100_000)
        _ = try await store.apply(.complete, to: made[0], reason: nil, now: 7_100_001)
        _ = try await store.apply(.cancel, to: made[1], reason: nil, now: 7_100_002)
        #expect(try await store.openCount(agent: "agt_open", cap: 5) == 18)
        #expect(try await store.openCount(agent: "agt_other", cap: 5) == 1)
        #expect(try await store.openCount(agent: "agt_none", cap: 5) == 0)
    }

    static func idempotency(_ store: any RunStore) async throws {
        let first = newRun()
        guard let made = created(try await store.create(first, caller: "agt_a", clientToken: "token-123", digest: "d1")) else {
            Issue.record("not created")
            return
        }
        #expect(made.id == first.id)
        guard case .existing(let again) = try await store.create(newRun(), caller: "agt_a", clientToken: "token-123", digest: "d1") else {
            Issue.record("the same key and body made a second run")
            return
        }
        #expect(again.id == first.id)
        guard case .conflict = try await store.create(newRun(), caller: "agt_a", clientToken: "token-123", digest: "d2") else {
            Issue.record("the same key with another body was not a conflict")
            return
        }
        // Another caller's key never names this caller's run.
        guard let other = created(try await store.create(newRun(agent: "agt_b"), caller: "agt_b", clientToken: "token-123", digest: "d1")) else {
            Issue.record("another caller's key returned someone else's run")
            return
        }
        #expect(other.id != first.id)
        // Asked without creating (a create refused by the open-run cap): the same answers, nothing made.
        let now = first.createdAt
        guard case .existing(let seen)? = try await store.previous(caller: "agt_a", clientToken: "token-123", digest: "d1", now: now) else {
            Issue.record("a known key and body was not found")
            return
        }
        #expect(seen.id == first.id)
        guard case .conflict? = try await store.previous(caller: "agt_a", clientToken: "token-123", digest: "d2", now: now) else {
            Issue.record("a known key with another body was not a conflict")
            return
        }
        #expect(try await store.previous(caller: "agt_c", clientToken: "token-123", digest: "d1", now: now) == nil)
        #expect(try await store.previous(caller: "agt_a", clientToken: "token-999", digest: "d1", now: now) == nil)
        // Fifty at once with one key: one run.
        let ids = try await withThrowingTaskGroup(of: String?.self) { group in
            for _ in 0..<50 {
                group.addTask {
                    switch try await store.create(newRun(), caller: "agt_a", clientToken: "race-race-1", digest: "same") {
                    case .created(let r), .existing(let r): return r.id
                    case .conflict: return nil
                    }
                }
            }
            var out = Set<String?>()
            for try await id in group { out.insert(id) }
            return out
        }
        #expect(ids.count == 1 && !ids.contains(nil))
    }

    static func transitionsAndEvents(_ store: any RunStore) async throws {
        let run = created(try await store.create(newRun(), caller: "agt_a", clientToken: nil, digest: ""))!
        #expect(try await store.apply(.start, to: "run_0000", reason: nil, now: 1) == nil)
        guard case .success(let started)? = try await store.apply(.start, to: run.id, reason: nil, now: 2_000) else {
            Issue.record("not started")
            return
        }
        #expect(started.status == .running && started.startedAt == 2_000)
        _ = try await store.append(run.id, agent: "agt_a", type: "tool.call", data: ["n": 1], now: 2_001)
        #expect(try await store.append(run.id, agent: "agt_other", type: "tool.call", data: ["n": 2], now: 2_002) == nil)
        guard case .success(let cancelled)? = try await store.apply(.cancel, to: run.id, reason: "stop", now: 3_000) else {
            Issue.record("not cancelled")
            return
        }
        #expect(cancelled.status == .cancelled && cancelled.endedAt == 3_000 && cancelled.reason == "stop")
        #expect(try await store.apply(.cancel, to: run.id, reason: nil, now: 3_001) == .failure(.alreadyCancelled))
        #expect(try await store.apply(.start, to: run.id, reason: nil, now: 3_002) == .failure(.finished))
        let events = try await store.events(run.id, after: nil, limit: 100)
        #expect(events.map(\.type) == ["run.created", "run.running", "tool.call", "run.cancelled"])
        #expect(events.last?.data["final"] == .bool(true))
        // Ids increase, and `after` resumes exactly after one.
        for (a, b) in zip(events, events.dropFirst()) { #expect(RunEvent.isAfter(b.id, a.id)) }
        let rest = try await store.events(run.id, after: events[1].id, limit: 100)
        #expect(rest.map(\.id) == events.dropFirst(2).map(\.id))
        #expect(try await store.events(run.id, after: events.last!.id, limit: 100).isEmpty)
        #expect(store.validEventID(events[0].id) && !store.validEventID("x") && !store.validEventID(""))
    }

    static func reservations(_ store: any RunStore) async throws {
        let one = RunCharge(fixed: RunLedger(calls: 1, searches: 1))
        #expect(try await store.reserve("run_00000000", agent: "agt_a", charge: one, now: 1) == .unknown)
        let run = created(try await store.create(newRun(budget: RunBudget(maxCalls: 3, maxSearches: 2)), caller: "agt_a", clientToken: nil, digest: ""))!
        guard case .notRunning(_, .created, _) = try await store.reserve(run.id, agent: "agt_a", charge: one, now: 1) else {
            Issue.record("a run not started took a call")
            return
        }
        _ = try await store.apply(.start, to: run.id, reason: nil, now: 10)
        #expect(try await store.reserve(run.id, agent: "agt_b", charge: one, now: 11) == .forbidden)
        guard case .reserved(let l1, let chain) = try await store.reserve(run.id, agent: "agt_a", charge: one, now: 11) else {
            Issue.record("not reserved")
            return
        }
        #expect(l1 == RunLedger(calls: 1, searches: 1) && chain == [run.id])
        guard case .reserved = try await store.reserve(run.id, agent: "agt_a", charge: one, now: 12) else {
            Issue.record("second not reserved")
            return
        }
        #expect(try await store.reserve(run.id, agent: "agt_a", charge: one, now: 13) == .exhausted(run: run.id, dimension: .searches))
        // One settles having used nothing (refunded), one as a search: room for one more.
        try await store.settle(chain: chain, reserved: l1, actual: RunLedger())
        try await store.settle(chain: chain, reserved: l1, actual: RunLedger(calls: 1, searches: 1))
        let after = try await store.run(run.id)!
        #expect(after.spent == RunLedger(calls: 1, searches: 1) && after.reserved == RunLedger())
        guard case .reserved = try await store.reserve(run.id, agent: "agt_a", charge: one, now: 14) else {
            Issue.record("refunded room not reusable")
            return
        }
        #expect(try await store.reserve(run.id, agent: "agt_a", charge: one, now: 15) == .exhausted(run: run.id, dimension: .searches))
        // A fetch is granted what is left.
        let fetchRun = created(try await store.create(newRun(budget: RunBudget(maxFetchBytes: 1000)), caller: "agt_a", clientToken: nil, digest: ""))!
        _ = try await store.apply(.start, to: fetchRun.id, reason: nil, now: 10)
        guard case .reserved(let granted, _) = try await store.reserve(
            fetchRun.id, agent: "agt_a", charge: RunCharge(fixed: RunLedger(calls: 1), fetchUpTo: 4096), now: 11)
        else {
            Issue.record("fetch not reserved")
            return
        }
        #expect(granted.fetchBytes == 1000)
        #expect(
            try await store.reserve(fetchRun.id, agent: "agt_a", charge: RunCharge(fixed: RunLedger(calls: 1), fetchUpTo: 4096), now: 12)
                == .exhausted(run: fetchRun.id, dimension: .fetchBytes))
    }

    static func familiesAndDeadlines(_ store: any RunStore) async throws {
        let parent = created(try await store.create(newRun(budget: RunBudget(maxCalls: 2)), caller: "agt_a", clientToken: nil, digest: ""))!
        let child = created(try await store.create(newRun(budget: RunBudget(maxCalls: 10), parent: parent), caller: "agt_a", clientToken: nil, digest: ""))!
        #expect(Run.chain(of: child.id) == [child.id, parent.id])
        _ = try await store.apply(.start, to: parent.id, reason: nil, now: 10)
        _ = try await store.apply(.start, to: child.id, reason: nil, now: 10)
        let one = RunCharge(fixed: RunLedger(calls: 1))
        for _ in 0..<2 {
            guard case .reserved = try await store.reserve(child.id, agent: "agt_a", charge: one, now: 11) else {
                Issue.record("child call refused within the parent's budget")
                return
            }
        }
        #expect(try await store.reserve(child.id, agent: "agt_a", charge: one, now: 12) == .exhausted(run: parent.id, dimension: .calls))
        #expect(try await store.run(parent.id)!.reserved.calls == 2)
        // Cancelling the parent stops the child's calls.
        _ = try await store.apply(.cancel, to: parent.id, reason: nil, now: 13)
        guard case .notRunning(let which, .cancelled, _) = try await store.reserve(child.id, agent: "agt_a", charge: RunCharge(fixed: RunLedger()), now: 14) else {
            Issue.record("a cancelled parent's child still took calls")
            return
        }
        #expect(which == parent.id)
        // max_duration: past it, the run fails at its next call, and the sweep lists it before that.
        let timed = created(try await store.create(newRun(budget: RunBudget(maxDurationSeconds: 5)), caller: "agt_a", clientToken: nil, digest: ""))!
        _ = try await store.apply(.start, to: timed.id, reason: nil, now: 100_000)
        #expect(try await !store.expired(now: 104_000).contains(timed.id))
        #expect(try await store.expired(now: 105_000).contains(timed.id))
        #expect(try await store.reserve(timed.id, agent: "agt_a", charge: one, now: 105_001) == .expired(run: timed.id))
        let failed = try await store.run(timed.id)!
        #expect(failed.status == .failed && failed.reason == "max_duration")
        #expect(try await store.events(timed.id, after: nil, limit: 10).last?.type == "run.failed")
        #expect(try await !store.expired(now: 200_000).contains(timed.id))
    }

    static func trimmingAndClaims(_ store: any RunStore) async throws {
        // A run made without an agent belongs to the first agent that calls in it.
        let open = created(try await store.create(newRun(agent: ""), caller: "admin", clientToken: nil, digest: ""))!
        _ = try await store.apply(.start, to: open.id, reason: nil, now: 1)
        guard case .reserved = try await store.reserve(open.id, agent: "agt_first", charge: RunCharge(fixed: RunLedger(calls: 1)), now: 2) else {
            Issue.record("unowned run not claimed")
            return
        }
        #expect(try await store.run(open.id)!.agent == "agt_first")
        #expect(try await store.reserve(open.id, agent: "agt_second", charge: RunCharge(fixed: RunLedger(calls: 1)), now: 3) == .forbidden)
    }

    static func listing(_ store: any RunStore) async throws {
        var made: [String] = []
        for i in 0..<7 {
            let r = created(try await store.create(newRun(agent: "agt_list", at: 5_000_000 + Int64(i)), caller: "agt_list", clientToken: nil, digest: ""))!
            made.append(r.id)
        }
        var seen: [String] = []
        var cursor: String?
        repeat {
            let page = try await store.list(status: nil, agent: "agt_list", cursor: cursor, limit: 3)
            seen += page.runs.map(\.id)
            cursor = page.next
        } while cursor != nil
        #expect(seen == made.reversed())
        _ = try await store.apply(.cancel, to: made[0], reason: nil, now: 6_000_000)
        #expect(try await store.list(status: .cancelled, agent: "agt_list", cursor: nil, limit: 10).runs.map(\.id) == [made[0]])
        #expect(try await store.activeCount() >= 6)
        #expect(try await store.purge(endedBefore: 6_000_001) >= 1)
        #expect(try await store.run(made[0]) == nil)
    }

    /// Trimming needs a store made with a small `max_events`.
    static func trimming(_ store: any RunStore) async throws {
        let run = created(try await store.create(newRun(), caller: "agt_a", clientToken: nil, digest: ""))!
        for i in 0..<25 { _ = try await store.append(run.id, agent: nil, type: "tool.call", data: ["i": .number(Double(i))], now: Int64(i)) }
        let events = try await store.events(run.id, after: nil, limit: 100)
        #expect(events.count <= 10 + 1)
        #expect(events.contains { $0.type == "run.events_trimmed" })
        #expect(events.last?.data["i"] == .number(24))
        for (a, b) in zip(events, events.dropFirst()) { #expect(RunEvent.isAfter(b.id, a.id)) }
    }
}

@Suite("Run stores")
struct RunStoreTests {
    @Test func embeddedStoreKeepsTheContract() async throws {
        try await RunStoreContract.run(EmbeddedRunStore(path: ":memory:"))
        try await RunStoreContract.trimming(EmbeddedRunStore(path: ":memory:", maxEvents: 10))
    }

    @Test(.enabled(if: RedisServer.available)) func redisStoreKeepsTheContract() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let client = RedisTests.client(server, scripts: RunScripts.all)
        try await server.waitUntilUp(client)
        try await RunStoreContract.run(RedisRunStore(redis: client))
        try await RunStoreContract.trimming(RedisRunStore(redis: client, maxEvents: 10))
    }

    /// Events and ledgers survive a restart, and numbering goes on after the last event written.
    @Test func embeddedRunsSurviveARestart() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("runs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("runs.sqlite").path
        var id = ""
        var lastID = ""
        do {
            let store = try EmbeddedRunStore(path: path)
            let run = RunStoreContract.created(try await store.create(RunStoreContract.newRun(budget: RunBudget(maxCalls: 5)), caller: "a", clientToken: "restart-1", digest: "x"))!
            id = run.id
            _ = try await store.apply(.start, to: id, reason: nil, now: 2)
            guard case .reserved(let l, let chain) = try await store.reserve(id, agent: "agt_a", charge: RunCharge(fixed: RunLedger(calls: 1)), now: 3) else {
                Issue.record("not reserved")
                return
            }
            try await store.settle(chain: chain, reserved: l, actual: l)
            lastID = try await store.append(id, agent: nil, type: "tool.call", data: [:], now: 4)!.id
            try await store.persist()
        }
        let reopened = try EmbeddedRunStore(path: path)
        let run = try await reopened.run(id)
        #expect(run?.status == .running && run?.spent.calls == 1)
        #expect(try await reopened.events(id, after: nil, limit: 10).last?.id == lastID)
        let next = try await reopened.append(id, agent: nil, type: "tool.call", data: [:], now: 5)!
        #expect(RunEvent.isAfter(next.id, lastID))
        guard case .existing(let same) = try await reopened.create(RunStoreContract.newRun(), caller: "a", clientToken: "restart-1", digest: "x") else {
            Issue.record("the idempotency key was lost in the restart")
            return
        }
        #expect(same.id == id)
    }
}

extension RunStoreTests {
    /// Calls of runs are admitted at once only while the events waiting for the disk are few; past
    /// `maxBacklog` the loop path says "not now" and `reserve` waits for the writer — memory holds a
    /// bounded backlog however fast agents call.
    @Test func aLargeEventBacklogMakesCallsWaitForTheWriter() async throws {
        let store = try EmbeddedRunStore(path: ":memory:")
        let run = RunStoreContract.created(try await store.create(RunStoreContract.newRun(), caller: "a", clientToken: nil, digest: "x"))!
        _ = try await store.apply(.start, to: run.id, reason: nil, now: 2)
        let charge = RunCharge(fixed: RunLedger(calls: 1))
        #expect(store.reserveNow(run.id, agent: "agt_a", charge: charge, now: 3) != nil)
        for i in 0..<EmbeddedRunStore.maxBacklog { _ = store.appendNow(run.id, agent: nil, type: "tool.call", json: "{}", now: Int64(4 + i)) }
        #expect(store.reserveNow(run.id, agent: "agt_a", charge: charge, now: 5) == nil)
        guard case .reserved = try await store.reserve(run.id, agent: "agt_a", charge: charge, now: 6) else {
            Issue.record("not reserved after the writer caught up")
            return
        }
        #expect(store.reserveNow(run.id, agent: "agt_a", charge: charge, now: 7) != nil)
    }
}

@Suite("Runs: a finished call keeps nothing alive")
struct RunCallLifetimeTests {
    final class Stage: Sendable {}

    static func call() -> RunCall {
        RunCall(
            run: "run_a", agent: "agt_a", role: "r", requestID: "req", tool: .serpapi, action: "search",
            parameters: .none, fingerprint: CallFingerprint("f"), meter: nil)
    }

    /// Abort closures reach the call's stages, which hold the call: dropped when the call ends, and not
    /// kept when registered after it ended (an answer that was ready before its starter registered).
    @Test func abortsAreDroppedWhenTheCallEndsAndNotKeptAfter() {
        let call = Self.call()
        weak var before: Stage?
        weak var after: Stage?
        do {
            let s1 = Stage()
            before = s1
            call.onAbort { _ = s1 }
        }
        #expect(before != nil)
        call.ended()
        #expect(before == nil)
        do {
            let s2 = Stage()
            after = s2
            call.onAbort { _ = s2 }
        }
        #expect(after == nil)
    }
}

@Suite("Runs: book and call fingerprints")
struct RunBookTests {
    @Test func aCallsFingerprintIgnoresSpellingButNotContent() {
        func call(_ body: String, query: String = "q=a&num=2") -> ToolCall {
            let request = ToolRequest(method: .POST, path: "/v1/chat/completions", query: QueryString(parsing: query), body: .init(string: body))
            return ToolCall(
                tool: .openai, action: "chat", request: request,
                parameters: .openai(.init(model: "m", maxTokens: nil, stream: false, temperature: nil, estimatedInputTokens: 1)))
        }
        #expect(RunCall.fingerprint(call(#"{"a":1,"b":2}"#)) == RunCall.fingerprint(call(#"{ "b": 2, "a": 1 }"#)))
        #expect(RunCall.fingerprint(call(#"{"a":1}"#, query: "num=2&q=a")) == RunCall.fingerprint(call(#"{"a":1}"#)))
        #expect(RunCall.fingerprint(call(#"{"a":1}"#)) != RunCall.fingerprint(call(#"{"a":2}"#)))
    }

    @Test func idsNameTheFamily() {
        let root = Run.newRootID()
        let child = Run.newChildID(parent: root)
        let grandchild = Run.newChildID(parent: child)
        #expect(Run.isValidID(root) && Run.isValidID(child) && Run.isValidID(grandchild))
        #expect(Run.chain(of: grandchild) == [grandchild, child, root])
        #expect(Run.root(of: grandchild) == root)
        for bad in ["", "run_", "run_XYZ", "run_ab..cd", "run_ab.", "../run_ab", "run_ab cd", "run_" + String(repeating: "a", count: 70)] {
            #expect(!Run.isValidID(bad), "\(bad)")
        }
    }

    /// Redis reads the events after a `Last-Event-ID` from the next id a stream can hold: `(id`, the
    /// exclusive start, is Redis 6.2's syntax, refused by the 6.0 that managed services still run.
    @Test(arguments: [
        ("1700000000000-0", "1700000000000-1"), ("5-41", "5-42"), ("0-9999999999999999999", "0-10000000000000000000"),
        ("9999999999999999999-0", "9999999999999999999-1"),
    ])
    func theEventsAfterAnIDStartAtItsSuccessor(_ id: String, _ next: String) {
        #expect(RedisRunStore.successor(of: id) == next)
    }
}
