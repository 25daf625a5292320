import Foundation
import Testing

@testable import Policy

@Suite("Runs: status, budget, charge, loop breaker")
struct RunsPolicyTests {
    @Test(arguments: [
        (RunStatus.created, RunStatus.Command.start, "running"), (.running, .start, "running"), (.paused, .start, "paused"),
        (.created, .cancel, "cancelled"), (.running, .cancel, "cancelled"), (.paused, .cancel, "cancelled"),
        (.cancelled, .cancel, "!run_already_cancelled"), (.cancelled, .start, "!run_finished"), (.completed, .cancel, "!run_finished"),
        (.failed, .complete, "!run_finished"), (.running, .complete, "completed"), (.running, .fail, "failed"),
        (.running, .pause, "paused"), (.paused, .resume, "running"), (.running, .resume, "!run_not_paused"),
        (.created, .pause, "created"), (.completed, .resume, "!run_finished"),
    ])
    func statusTransitions(from: RunStatus, command: RunStatus.Command, expected: String) {
        switch from.applying(command) {
        case .success(let s): #expect(s.rawValue == expected)
        case .failure(let r): #expect("!" + r.rawValue == expected)
        }
    }

    static func holding(_ budget: RunBudget, _ held: RunLedger = RunLedger()) -> RunBudget.Holding { .init(budget: budget, held: held) }

    /// A run reserves an uncapped OpenAI call's default once per choice (`n`, `best_of`), pinned, never trapping.
    @Test(arguments: [(1, 1024 + 10), (3, 3 * 1024 + 10), (Int.max, PolicyEvaluator.countBound + 10)])
    func anUncappedCallReservesPerChoice(_ choices: Int, _ tokens: Int) {
        let charge = RunCharge.reservation(
            tool: "openai", action: "chat", parameters: .openai(model: nil, maxTokens: nil, stream: false, estimatedInputTokens: 10, choices: choices),
            prices: RunPrices(), defaultTokens: 1024, maxFetchBytes: 0)
        #expect(charge.fixed.openAITokens == tokens)
    }

    @Test func fixedChargesStopAtTheLimitExactly() {
        let budget = RunBudget(maxCalls: 3, maxSearches: 2)
        var held = RunLedger()
        var results: [String] = []
        for _ in 0..<4 {
            switch RunBudget.reserve(RunCharge(fixed: RunLedger(calls: 1, searches: 1)), chain: [Self.holding(budget, held)]) {
            case .success(let l):
                held = held + l
                results.append("ok")
            case .failure(let e): results.append(e.dimension.rawValue)
            }
        }
        #expect(results == ["ok", "ok", "serpapi_searches", "serpapi_searches"])
        #expect(held.calls == 2 && held.searches == 2)
    }

    @Test func aZeroLimitRefusesOnlyWhatItLimits() {
        let budget = RunBudget(maxEmails: 0)
        #expect((try? RunBudget.reserve(RunCharge(fixed: RunLedger(calls: 1, searches: 1)), chain: [Self.holding(budget)]).get()) != nil)
        if case .failure(let e) = RunBudget.reserve(RunCharge(fixed: RunLedger(calls: 1, emails: 1)), chain: [Self.holding(budget)]) {
            #expect(e.dimension == .emails)
        } else {
            Issue.record("an email past max_emails 0 was reserved")
        }
    }

    @Test func aChildNeverOutspendsItsParent() {
        let child = Self.holding(RunBudget(maxCalls: 100))
        let parent = Self.holding(RunBudget(maxCalls: 5), RunLedger(calls: 5))
        guard case .failure(let e) = RunBudget.reserve(RunCharge(fixed: RunLedger(calls: 1)), chain: [child, parent]) else {
            Issue.record("the child spent past its parent")
            return
        }
        #expect(e.index == 1 && e.dimension == .calls)
    }

    @Test func fetchBytesAreGrantedUpToWhatEveryRunOfTheChainHasLeft() {
        let charge = RunCharge(fixed: RunLedger(calls: 1), fetchUpTo: 10_000, microsPerMB: 0)
        let chain = [Self.holding(RunBudget(maxFetchBytes: 8_000), RunLedger(fetchBytes: 1_000)), Self.holding(RunBudget(maxFetchBytes: 5_000))]
        #expect((try? RunBudget.reserve(charge, chain: chain).get())?.fetchBytes == 5_000)
        let full = [Self.holding(RunBudget(maxFetchBytes: 8_000), RunLedger(fetchBytes: 8_000))]
        if case .failure(let e) = RunBudget.reserve(charge, chain: full) { #expect(e.dimension == .fetchBytes) } else { Issue.record("granted past the limit") }
        // Without a limit: the whole answer size.
        #expect((try? RunBudget.reserve(charge, chain: [Self.holding(RunBudget())]).get())?.fetchBytes == 10_000)
    }

    @Test func fetchBytesAreBoundByWhatIsLeftOfTheCostBudget() {
        // $1 per MB; $0.50 left: half a MB, and its cost fits exactly.
        let charge = RunCharge(fixed: RunLedger(calls: 1), fetchUpTo: 4 * 1_048_576, microsPerMB: 1_000_000)
        let granted = try? RunBudget.reserve(charge, chain: [Self.holding(RunBudget(maxCostMicros: 1_500_000), RunLedger(costMicros: 1_000_000))]).get()
        #expect(granted?.fetchBytes == 524_288)
        #expect(granted?.costMicros == 500_000)
        let none = RunBudget.reserve(charge, chain: [Self.holding(RunBudget(maxCostMicros: 1_000_000), RunLedger(costMicros: 1_000_000))])
        if case .failure(let e) = none { #expect(e.dimension == .cost) } else { Issue.record("granted with no money left") }
    }

    @Test func chargesFromThePriceTable() {
        var prices = RunPrices()
        prices.perSearchMicros = 10_000
        prices.perEmailMicros = 1_000
        prices.openAI = ["gpt-4o-mini": (input: 150, output: 600), "*": (input: 1_000, output: 2_000)]
        let search = RunCharge.reservation(
            tool: "serpapi", action: "search", parameters: .serpapi(engine: "google", num: nil), prices: prices, defaultTokens: 1024, maxFetchBytes: 0)
        #expect(search.fixed == RunLedger(calls: 1, searches: 1, costMicros: 10_000))
        let chat = RunCharge.reservation(
            tool: "openai", action: "chat", parameters: .openai(model: "gpt-4o-mini", maxTokens: 1000, stream: false, estimatedInputTokens: 200),
            prices: prices, defaultTokens: 1024, maxFetchBytes: 0)
        #expect(chat.fixed.openAITokens == 1200)
        #expect(chat.fixed.costMicros == 30 + 600)
        // Settled from the answer's usage, priced by model; an error answer used nothing.
        let used = RunCharge.actual(
            reserved: chat.fixed, parameters: .openai(model: "gpt-4o-mini", maxTokens: 1000, stream: false, estimatedInputTokens: 200),
            prices: prices, sent: true, upstreamStatus: 200, usage: (input: 10, output: 20, total: 30), fetchedBytes: 0)
        #expect(used == RunLedger(calls: 1, openAITokens: 30, costMicros: 2 + 12))
        let failed = RunCharge.actual(
            reserved: chat.fixed, parameters: .openai(model: "x", maxTokens: 1000, stream: false, estimatedInputTokens: 200), prices: prices,
            sent: true, upstreamStatus: 500, usage: nil, fetchedBytes: 0)
        #expect(failed == RunLedger(calls: 1))
        // Nothing sent: nothing spent. A search the upstream refused is not a search.
        #expect(RunCharge.actual(reserved: search.fixed, parameters: .serpapi(engine: "g", num: nil), prices: prices, sent: false, upstreamStatus: nil, usage: nil, fetchedBytes: 0) == RunLedger())
        #expect(RunCharge.actual(reserved: search.fixed, parameters: .serpapi(engine: "g", num: nil), prices: prices, sent: true, upstreamStatus: 429, usage: nil, fetchedBytes: 0) == RunLedger(calls: 1))
    }

    @Test func aBudgetIsALedgerNotARate() {
        // However much time passes, what was spent stays spent.
        let budget = RunBudget(maxCalls: 2)
        let held = RunLedger(calls: 2)
        for _ in 0..<3 {
            if case .success = RunBudget.reserve(RunCharge(fixed: RunLedger(calls: 1)), chain: [Self.holding(budget, held)]) {
                Issue.record("the budget reset")
            }
        }
    }

    // MARK: Loop breaker

    @Test func theSameCallMoreThanMaxRepeatsTimesInTheWindowTrips() {
        var d = LoopDetector()
        var verdicts: [LoopDetector.Verdict?] = []
        for i in 0..<6 { verdicts.append(d.record(CallFingerprint("serpapi|search|a"), now: Int64(i) * 1000)) }
        #expect(verdicts.prefix(5).allSatisfy { $0 == nil })
        #expect(verdicts[5] == .repeated(count: 6))
    }

    @Test func repeatsSpreadBeyondTheWindowDoNotTrip() {
        var d = LoopDetector()
        for i in 0..<20 { #expect(d.record(CallFingerprint("serpapi|search|a"), now: Int64(i) * 15_000) == nil) }
    }

    @Test func repeatsCountOnlyWithinTheWindow() {
        var d = LoopDetector()
        let a = CallFingerprint("serpapi|search|a")
        for t in [0, 1000, 2000, 70_000, 71_000, 72_000, 73_000, 74_000] as [Int64] { #expect(d.record(a, now: t) == nil, "\(t)") }
        #expect(d.record(a, now: 75_000) == .repeated(count: 6))
        #expect(d.record(a, now: 76_000) == .repeated(count: 6), "kept to maxRepeats + 1")
        #expect(d.record(CallFingerprint("serpapi|search|b"), now: 76_500) == nil)
    }

    @Test func aShortCycleTrips() {
        var d = LoopDetector()
        var tripped: LoopDetector.Verdict?
        for i in 0..<8 where tripped == nil { tripped = d.record(CallFingerprint(i % 2 == 0 ? "A" : "B"), now: Int64(i)) }
        #expect(tripped == .cycle(length: 2, times: 3))
        var three = LoopDetector()
        tripped = nil
        for i in 0..<12 where tripped == nil { tripped = three.record(CallFingerprint(["A", "B", "C"][i % 3]), now: Int64(i)) }
        #expect(tripped == .cycle(length: 3, times: 3))
    }

    @Test func variedCallsNeverTrip() {
        var d = LoopDetector()
        var rng = GCRATests.SplitMix(state: 42)
        for i in 0..<2000 {
            // Many tools and parameters, with some repetition, as a working agent makes them.
            let call = "t\(rng.next() % 4)|q\(rng.next() % 10_000)"
            #expect(d.record(CallFingerprint(call), now: Int64(i) * 50) == nil, "call \(i)")
        }
    }

    /// The breaker's memory: bounded by count (the least recently seen fingerprint goes first, so a
    /// call repeated all along keeps its count) and by the window (everything older is forgotten).
    @Test func theMemoryForgetsTheLeastRecentAndWhatLeftTheWindow() {
        var d = LoopDetector()
        let busy = CallFingerprint("serpapi|search|again")
        var verdicts: [LoopDetector.Verdict?] = []
        for i in 0..<50_000 {
            // A distinct call each millisecond, and `busy` every 10 000 of them (five times in 50 s).
            let now = Int64(i)
            if i % 10_000 == 0 { verdicts.append(d.record(busy, now: now)) }
            #expect(d.record(CallFingerprint(high: UInt64(i), low: 7), now: now) == nil)
            #expect(d.remembered <= LoopDetector.maxFingerprints)
        }
        #expect(verdicts.count == 5 && verdicts.allSatisfy { $0 == nil })
        // Forgotten by count (seen 10 000 distinct calls ago): its sixth sighting counts from one.
        #expect(d.record(busy, now: 50_000) == nil)
        var kept = LoopDetector()
        for i in 0..<5 {
            // Seen again within every 1 000 distinct calls: never the least recent, so never forgotten.
            #expect(kept.record(busy, now: Int64(i) * 1000) == nil)
            for j in 0..<999 { _ = kept.record(CallFingerprint(high: UInt64(i * 1000 + j), low: 9), now: Int64(i) * 1000 + 1) }
        }
        #expect(kept.record(busy, now: 5000) == .repeated(count: 6))
        // The window: a minute later only the new call is remembered.
        _ = kept.record(CallFingerprint("later"), now: 200_000)
        #expect(kept.remembered == 1)
    }

    @Test func aStormOfRefusalsTrips() {
        var d = LoopDetector()
        for i in 0..<10 { #expect(d.recordRefusal(now: Int64(i) * 100) == nil) }
        #expect(d.recordRefusal(now: 1000) == .refusals(count: 11))
        var slow = LoopDetector()
        for i in 0..<30 { #expect(slow.recordRefusal(now: Int64(i) * 10_000) == nil) }
    }

    @Test func pricesAndLoopSettingsCompileFromThePolicy() throws {
        typealias M = KeyValuePairs<String, Any>
        let doc = YAMLish.node([
            "version": 1,
            "prices": [
                "serpapi": ["per_search": "0.01"] as M, "gmail_send": ["per_email": "0.001"] as M, "http_fetch": ["per_mb": "0.0001"] as M,
                "openai": ["gpt-4o-mini": ["input_per_1k": "0.00015", "output_per_1k": "0.0006"] as M] as M,
            ] as M,
            "roles": [
                "scraper": [
                    "allow": ["serpapi:search"],
                    "loop": ["max_repeats": 3, "window": "10s", "max_cycles": 4, "max_refusals": 5, "action": "cancel"] as M,
                ] as M,
                "other": ["allow": ["*"]] as M,
            ] as M,
        ] as M)
        let p = try PolicyCompiler.compile(doc, source: "t")
        #expect(p.prices.perSearchMicros == 10_000 && p.prices.perEmailMicros == 1_000 && p.prices.perMBFetchedMicros == 100)
        #expect(p.prices.openAI["gpt-4o-mini"]?.input == 150)
        let loop = p.loopSettings(agent: "a", role: "scraper")
        #expect(loop.maxRepeats == 3 && loop.windowMilliseconds == 10_000 && loop.maxCycles == 4 && loop.maxRefusals == 5 && loop.action == .cancel)
        #expect(p.loopSettings(agent: "a", role: "other") == LoopDetector.Settings())
        let badAction = YAMLish.node(["version": 1, "roles": ["r": ["allow": ["*"], "loop": ["action": "explode"] as M] as M] as M] as M)
        #expect(throws: DocumentError.self) { try PolicyCompiler.compile(badAction, source: "") }
        let badPrice = YAMLish.node(["version": 1, "prices": ["serpapi": ["per_search": "-1"] as M] as M, "roles": ["r": ["allow": ["*"]] as M] as M] as M)
        #expect(throws: DocumentError.self) { try PolicyCompiler.compile(badPrice, source: "") }
    }
}
