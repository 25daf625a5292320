/// What one tool call asks of its run's ledger, before it is sent (README "Agent runs"): reserved at
/// admission, settled afterwards from what the call really used.
///
/// Everything is known up front except an http_fetch answer's size, so fetch bytes are reserved "up to":
/// the store grants as many bytes as the run (and every ancestor) has room for — in bytes and, at the
/// per-MB price, in dollars — and the answer is cut at the grant. That is what keeps the ledger from ever
/// overshooting, even for a download whose size nobody announced.
public struct RunCharge: Sendable, Hashable {
    /// The fixed part (calls, tokens, searches, emails, their cost).
    public var fixed: RunLedger
    /// An http_fetch answer: the most bytes it may use (0 for other tools).
    public var fetchUpTo: Int
    public var microsPerMB: Int

    public init(fixed: RunLedger, fetchUpTo: Int = 0, microsPerMB: Int = 0) {
        self.fixed = fixed
        self.fetchUpTo = fetchUpTo
        self.microsPerMB = microsPerMB
    }

    /// The reservation of a call: one call; a SerpAPI search; a Gmail send; OpenAI tokens as the budget
    /// reserves them (`max_tokens`, else `defaultTokens`, plus the estimated input); fetch bytes up to
    /// `maxFetchBytes` (the response size limit).
    public static func reservation(
        tool: String, action: String, parameters: CallParameters, prices: RunPrices, defaultTokens: Int, maxFetchBytes: Int
    ) -> RunCharge {
        var l = RunLedger(calls: 1)
        switch parameters {
        case .serpapi where action == "search":
            l.searches = 1
            l.costMicros = prices.perSearchMicros
        case .gmail where action == "send":
            l.emails = 1
            l.costMicros = prices.perEmailMicros
        case .openai(let model, let maxTokens, _, let input, let choices):
            let output = maxTokens ?? PolicyEvaluator.uncapped(defaultTokens, choices: choices)
            l.openAITokens = output.addingSaturated(input)
            l.costMicros = prices.openAICost(model: model, input: input, output: output)
        case .fetch:
            return RunCharge(fixed: l, fetchUpTo: max(1, maxFetchBytes), microsPerMB: prices.perMBFetchedMicros)
        default:
            break
        }
        _ = tool
        return RunCharge(fixed: l)
    }

    /// What a call really used, from its outcome: nothing when nothing was sent; otherwise one call, the
    /// search or email when the upstream accepted it (2xx), OpenAI tokens from the answer's `usage` (none
    /// for an error answer; the reservation when an answer carried no usage), fetch bytes as streamed.
    public static func actual(
        reserved: RunLedger, parameters: CallParameters, prices: RunPrices, sent: Bool, upstreamStatus: Int?,
        usage: (input: Int, output: Int, total: Int)?, fetchedBytes: Int
    ) -> RunLedger {
        guard sent else { return RunLedger() }
        var l = RunLedger(calls: 1)
        let accepted = (upstreamStatus ?? 0) / 100 == 2
        switch parameters {
        case .serpapi:
            if accepted, reserved.searches > 0 {
                l.searches = reserved.searches
                l.costMicros = prices.perSearchMicros
            }
        case .gmail:
            if accepted, reserved.emails > 0 {
                l.emails = reserved.emails
                l.costMicros = prices.perEmailMicros
            }
        case .openai(let model, _, _, _, _):
            if let usage {
                l.openAITokens = usage.total
                l.costMicros = prices.openAICost(model: model, input: usage.input, output: usage.output)
            } else if (upstreamStatus ?? 0) >= 400 {
                l.openAITokens = 0
            } else {
                // No usage in the answer: what was reserved stays spent (a ledger never under-counts).
                l.openAITokens = reserved.openAITokens
                l.costMicros = reserved.costMicros
            }
        case .fetch:
            l.fetchBytes = fetchedBytes
            l.costMicros = prices.fetchCost(bytes: fetchedBytes)
        case .none:
            break
        }
        return l
    }
}

extension RunBudget {
    /// A run (or ancestor) as the reservation sees it: its limits and what it holds (spent + reserved).
    public struct Holding: Sendable, Hashable {
        public var budget: RunBudget
        public var held: RunLedger

        public init(budget: RunBudget, held: RunLedger) {
            self.budget = budget
            self.held = held
        }
    }

    /// Decides a charge against a run and its ancestors at once: the ledger to reserve on every one of
    /// them (the fixed part plus the fetch bytes granted, with their cost), or the first run (index into
    /// `chain`) and dimension that would be exceeded. The same rule as the Redis store's script.
    public static func reserve(_ charge: RunCharge, chain: [Holding]) -> Result<RunLedger, Exhausted> {
        var grant = charge.fetchUpTo
        for (i, run) in chain.enumerated() {
            if let dimension = run.budget.exceeded(holding: run.held, charging: charge.fixed) {
                return .failure(Exhausted(index: i, dimension: dimension))
            }
            guard charge.fetchUpTo > 0 else { continue }
            if let limit = run.budget.maxFetchBytes {
                let room = limit - run.held.fetchBytes
                guard room >= 1 else { return .failure(Exhausted(index: i, dimension: .fetchBytes)) }
                grant = min(grant, room)
            }
            if let limit = run.budget.maxCostMicros, charge.microsPerMB > 0 {
                let room = limit - run.held.costMicros - charge.fixed.costMicros
                let (scaled, overflow) = room.multipliedReportingOverflow(by: 1_048_576)
                let bytes = overflow ? Int.max : scaled / charge.microsPerMB
                guard bytes >= 1 else { return .failure(Exhausted(index: i, dimension: .cost)) }
                grant = min(grant, bytes)
            }
        }
        var ledger = charge.fixed
        if charge.fetchUpTo > 0 {
            ledger.fetchBytes = grant
            ledger.costMicros = ledger.costMicros.addingSaturated(RunPrices.fetchCost(microsPerMB: charge.microsPerMB, bytes: grant))
        }
        return .success(ledger)
    }

    public struct Exhausted: Error, Sendable, Hashable {
        public var index: Int
        public var dimension: Dimension
    }
}
