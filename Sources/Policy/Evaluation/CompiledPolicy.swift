import Crypto
import Foundation

/// A `tool:action`, `tool:*` or `*` pattern.
public struct ScopePattern: Sendable, Hashable, CustomStringConvertible {
    public let tool: String?
    public let action: String?

    public init?(_ text: String, known: [String: [String]]) {
        if text == "*" {
            tool = nil
            action = nil
            return
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, let actions = known[parts[0]] else { return nil }
        guard parts[1] == "*" || actions.contains(parts[1]) else { return nil }
        tool = parts[0]
        action = parts[1] == "*" ? nil : parts[1]
    }

    public func matches(tool t: String, action a: String) -> Bool {
        (tool == nil || tool == t) && (action == nil || action == a)
    }

    public var description: String { tool.map { "\($0):\(action ?? "*")" } ?? "*" }
}

/// Parameter guards of a rule, per tool.
public struct Guards: Sendable, Hashable {
    public var allowHosts: [HostPattern]?
    public var blockHosts: [HostPattern] = []
    public var schemes: Set<String>?
    public var ports: Set<Int>?
    public var methods: Set<String>?
    public var models: Set<String>?
    public var maxTokens: Int?
    public var allowStream: Bool?
    public var allowedDomains: [HostPattern]?
    public var maxRecipients: Int?
    public var maxSubjectBytes: Int?
    public var maxEmailBodyBytes: Int?
    public var rejectCRLF = true
    public var engines: Set<String>?
    public var maxNum: Int?
    public var maxBodyBytes: Int?
    /// http_fetch: internal address ranges this rule lets the agent reach (a grant, not a refusal; the
    /// egress guard still refuses everything else and the sidecar's own listeners).
    public var allowCIDRs: [String] = []

    public init() {}
}

/// One rule: which calls it applies to, its mode, guards, time window and limits.
/// `approval: {required: true, approvers: [...], expires: 15m, hold: 30s}` on a rule.
public struct ApprovalRule: Sendable, Hashable {
    /// Who may decide besides the admin token: agent ids (`agt_…`) or roles (`role:reviewer`) whose
    /// tokens are accepted by the approvals API. Never the calling agent itself.
    public var approvers: [String] = []
    /// How long a pending approval (and an unused grant) stays valid, in milliseconds.
    public var expiresMilliseconds: Int64 = 15 * 60_000
    /// How long the call is held waiting for a decision before the agent is answered `approval_pending`.
    public var holdMilliseconds: Int64 = 30_000
    public init() {}
}

public struct Rule: Sendable, Hashable {
    public var scope: ScopePattern
    public var mode: LimitCheck.Mode = .enforce
    public var guards = Guards()
    public var guardMode: LimitCheck.Mode = .enforce
    public var timeWindow: TimeWindow?
    public var timeWindowMode: LimitCheck.Mode = .enforce
    public var rate: (limit: Int, period: Double, burst: Int, mode: LimitCheck.Mode)? {
        didSet { rateKey = rate.map { "r:\(scope):\($0.limit)/\(Int($0.period))ms:\($0.burst)" } ?? "" }
    }
    public var quota: (limit: Int, window: CalendarWindow, cost: Int, mode: LimitCheck.Mode)? {
        didSet { quotaKey = quota.map { "q:\(scope):\($0.window.period.rawValue)" } ?? "" }
    }
    public var budget: (tokens: Int, window: CalendarWindow, mode: LimitCheck.Mode)? {
        didSet { budgetKey = budget.map { "b:\(scope):\($0.window.period.rawValue)" } ?? "" }
    }
    /// A human must approve each call this rule matches (`approval:`).
    public var approval: ApprovalRule?
    /// The counters' keys, made once when the limit is set (not formatted again for every request).
    public private(set) var rateKey = ""
    public private(set) var quotaKey = ""
    public private(set) var budgetKey = ""
    /// Position in the document (`roles.scraper.rules[1]`), to key its counters and name it in logs.
    public var id: String

    public static func == (l: Rule, r: Rule) -> Bool { l.id == r.id }
    public func hash(into h: inout Hasher) { h.combine(id) }
}

/// A role (or an agent's overrides): what it may call, its rules, its concurrency.
public struct RolePolicy: Sendable, Hashable {
    public var allow: [ScopePattern]
    public var rules: [Rule]
    public var concurrency: Int?
    public var concurrencyMode: LimitCheck.Mode = .enforce
    /// The runaway-loop breaker's settings for runs of this role (nil: the defaults, or the role's for an
    /// agent override).
    public var loop: LoopDetector.Settings? = nil
}

/// An immutable, validated policy: compiled once, swapped whole on reload.
public struct CompiledPolicy: Sendable {
    public let version: Int
    /// SHA-256 of the source text: what `GET /api/policy` reports and logs name.
    public let hash: String
    public let roles: [String: RolePolicy]
    public let agents: [String: RolePolicy]
    public let source: String
    /// What a call costs a run's ledger (`prices:`).
    public var prices = RunPrices()

    init(version: Int, hash: String, roles: [String: RolePolicy], agents: [String: RolePolicy], source: String, prices: RunPrices = RunPrices()) {
        self.version = version
        self.hash = hash
        self.roles = roles
        self.agents = agents
        self.source = source
        self.prices = prices
    }

    /// The loop breaker's settings for a run of `agent` in `role`: the agent's override, else the role's,
    /// else the defaults.
    public func loopSettings(agent: String, role: String) -> LoopDetector.Settings {
        agents[agent]?.loop ?? roles[role]?.loop ?? LoopDetector.Settings()
    }

    public var roleNames: [String] { roles.keys.sorted() }

    static func digest(_ text: String) -> String {
        SHA256.hash(data: Array(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
