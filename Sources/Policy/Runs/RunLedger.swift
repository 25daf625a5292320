/// What a run has spent across all its tools — one ledger for the run's whole life: not a window, never
/// reset (README "Agent runs"). Integers only, so a ledger adds up exactly: cost is in millionths of a
/// dollar.
public struct RunLedger: Sendable, Hashable, Codable {
    public var calls = 0
    public var openAITokens = 0
    public var searches = 0
    public var emails = 0
    public var fetchBytes = 0
    public var costMicros = 0

    public init(calls: Int = 0, openAITokens: Int = 0, searches: Int = 0, emails: Int = 0, fetchBytes: Int = 0, costMicros: Int = 0) {
        self.calls = calls
        self.openAITokens = openAITokens
        self.searches = searches
        self.emails = emails
        self.fetchBytes = fetchBytes
        self.costMicros = costMicros
    }

    public static func + (l: RunLedger, r: RunLedger) -> RunLedger {
        RunLedger(
            calls: l.calls.addingSaturated(r.calls), openAITokens: l.openAITokens.addingSaturated(r.openAITokens),
            searches: l.searches.addingSaturated(r.searches), emails: l.emails.addingSaturated(r.emails),
            fetchBytes: l.fetchBytes.addingSaturated(r.fetchBytes), costMicros: l.costMicros.addingSaturated(r.costMicros))
    }

    public static func - (l: RunLedger, r: RunLedger) -> RunLedger {
        RunLedger(
            calls: l.calls - r.calls, openAITokens: l.openAITokens - r.openAITokens, searches: l.searches - r.searches,
            emails: l.emails - r.emails, fetchBytes: l.fetchBytes - r.fetchBytes, costMicros: l.costMicros - r.costMicros)
    }

    /// Each dimension at least zero (what is left of a reservation after a settlement).
    public var atLeastZero: RunLedger {
        RunLedger(
            calls: max(0, calls), openAITokens: max(0, openAITokens), searches: max(0, searches), emails: max(0, emails),
            fetchBytes: max(0, fetchBytes), costMicros: max(0, costMicros))
    }

    /// The dimensions in a fixed order: how stores keep them side by side.
    public var values: [Int] { [calls, openAITokens, searches, emails, fetchBytes, costMicros] }

    public init(values: [Int]) {
        let v = values + Array(repeating: 0, count: max(0, 6 - values.count))
        self.init(calls: v[0], openAITokens: v[1], searches: v[2], emails: v[3], fetchBytes: v[4], costMicros: v[5])
    }

    /// Cost as dollars, for the API (the ledger itself counts micros).
    public var costUSD: Double { Double(costMicros) / 1_000_000 }
}

/// A run's limits: each optional, each a ceiling for the run's whole life.
public struct RunBudget: Sendable, Hashable, Codable {
    public var maxCalls: Int?
    public var maxOpenAITokens: Int?
    public var maxSearches: Int?
    public var maxEmails: Int?
    public var maxFetchBytes: Int?
    public var maxCostMicros: Int?
    /// From the start; past it the run fails and its calls are refused.
    public var maxDurationSeconds: Int?

    public init(
        maxCalls: Int? = nil, maxOpenAITokens: Int? = nil, maxSearches: Int? = nil, maxEmails: Int? = nil, maxFetchBytes: Int? = nil,
        maxCostMicros: Int? = nil, maxDurationSeconds: Int? = nil
    ) {
        self.maxCalls = maxCalls
        self.maxOpenAITokens = maxOpenAITokens
        self.maxSearches = maxSearches
        self.maxEmails = maxEmails
        self.maxFetchBytes = maxFetchBytes
        self.maxCostMicros = maxCostMicros
        self.maxDurationSeconds = maxDurationSeconds
    }

    /// A dimension of the ledger, as refusals and metrics name it.
    public enum Dimension: String, Sendable, CaseIterable {
        case calls
        case openAITokens = "openai_tokens"
        case searches = "serpapi_searches"
        case emails
        case fetchBytes = "fetch_bytes"
        case cost = "cost_usd"
    }

    /// The limits in the ledger's order (`Int.max` where none is set).
    public var limits: [Int] {
        [maxCalls, maxOpenAITokens, maxSearches, maxEmails, maxFetchBytes, maxCostMicros].map { $0 ?? Int.max }
    }

    public var isEmpty: Bool { limits.allSatisfy { $0 == Int.max } && maxDurationSeconds == nil }

    /// The first dimension that `held` (spent and reserved) plus `charge` would take past its limit.
    public func exceeded(holding held: RunLedger, charging charge: RunLedger) -> Dimension? {
        for (i, limit) in limits.enumerated() where charge.values[i] > 0 {
            if held.values[i].addingSaturated(charge.values[i]) > limit { return Dimension.allCases[i] }
        }
        return nil
    }

    /// What is left of each dimension once `held` is taken off (`Int.max` where unlimited).
    public func remaining(after held: RunLedger) -> RunLedger {
        RunLedger(values: zip(limits, held.values).map { limit, used in limit == Int.max ? Int.max : max(0, limit - used) })
    }
}

extension Int {
    /// `self + other`, pinned at `Int.max` instead of trapping: a counter (or ledger) that full reads as
    /// exhausted, never wraps around.
    func addingSaturated(_ other: Int) -> Int {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? (other > 0 ? .max : .min) : sum
    }
}

/// Prices per tool, from the policy document's `prices:` (README "Agent runs"): what a call costs the
/// run's ledger. Dollars in the document, millionths of a dollar here.
public struct RunPrices: Sendable, Hashable {
    public var perSearchMicros = 0
    public var perEmailMicros = 0
    public var perMBFetchedMicros = 0
    /// Per model (`*` for any other): millionths of a dollar per 1 000 input and output tokens.
    public var openAI: [String: (input: Int, output: Int)] = [:]

    public init() {}

    public static func == (l: Self, r: Self) -> Bool {
        l.perSearchMicros == r.perSearchMicros && l.perEmailMicros == r.perEmailMicros && l.perMBFetchedMicros == r.perMBFetchedMicros
            && l.openAI.keys.sorted() == r.openAI.keys.sorted()
            && l.openAI.allSatisfy { k, v in r.openAI[k].map { $0.input == v.input && $0.output == v.output } ?? false }
    }

    public func hash(into h: inout Hasher) {
        h.combine(perSearchMicros)
        h.combine(perEmailMicros)
        h.combine(perMBFetchedMicros)
        for k in openAI.keys.sorted() {
            h.combine(k)
            h.combine(openAI[k]!.input)
            h.combine(openAI[k]!.output)
        }
    }

    func price(of name: String?) -> (input: Int, output: Int) { name.flatMap { openAI[$0] } ?? openAI["*"] ?? (0, 0) }

    /// Millionths of a dollar for `input` and `output` tokens of `model`, rounded up (a ledger never
    /// under-counts).
    public func openAICost(model: String?, input: Int, output: Int) -> Int {
        let p = price(of: model)
        return Self.perThousand(p.input, input).addingSaturated(Self.perThousand(p.output, output))
    }

    public func fetchCost(bytes: Int) -> Int { Self.fetchCost(microsPerMB: perMBFetchedMicros, bytes: bytes) }

    /// Rounded up, like every price here.
    public static func fetchCost(microsPerMB: Int, bytes: Int) -> Int {
        guard microsPerMB > 0, bytes > 0 else { return 0 }
        let (product, overflow) = microsPerMB.multipliedReportingOverflow(by: bytes)
        return overflow ? .max : (product + 1_048_575) / 1_048_576
    }

    static func perThousand(_ price: Int, _ count: Int) -> Int {
        guard price > 0, count > 0 else { return 0 }
        let (product, overflow) = price.multipliedReportingOverflow(by: count)
        return overflow ? .max : (product + 999) / 1000
    }
}
