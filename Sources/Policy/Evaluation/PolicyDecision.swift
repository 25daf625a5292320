/// Why policy refused a call. The `kind` is a metric label and maps to a stable problem code; the
/// `detail` names what was wrong (a parameter) without revealing the rest of the policy.
public struct PolicyDenial: Sendable, Hashable, Error {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case scope = "scope_denied"
        case parameter = "param_denied"
        case offHours = "off_hours"
        case concurrency = "concurrency_limited"
        case rate = "rate_limited"
        case quota = "quota_exceeded"
        case budget = "budget_exhausted"
    }

    public var kind: Kind
    public var detail: String
    /// The parameter a guard refused (param_denied).
    public var parameter: String?

    public init(kind: Kind, detail: String, parameter: String? = nil) {
        self.kind = kind
        self.detail = detail
        self.parameter = parameter
    }
}

/// The stateless part of a decision: refused here, or admitted subject to the stateful checks.
public struct PolicyEvaluation: Sendable, Hashable {
    public var denial: PolicyDenial?
    /// Stateful checks in the documented order: concurrency, rate, quota, budget.
    public var checks: [LimitCheck]
    /// Report-mode rules that would have refused (guards, time windows).
    public var wouldDeny: [PolicyDenial]
    /// The rule ids that applied (for logs).
    public var budgetTool: Bool
    /// http_fetch: internal ranges the matching rules grant (`guards.allow_cidrs`).
    public var egressAllow: [String] = []
    /// The call needs a human's approval (the first matching rule that asks for one).
    public var approval: ApprovalRule?

    public init(denial: PolicyDenial? = nil, checks: [LimitCheck] = [], wouldDeny: [PolicyDenial] = [], budgetTool: Bool = false) {
        self.denial = denial
        self.checks = checks
        self.wouldDeny = wouldDeny
        self.budgetTool = budgetTool
    }
}

extension LimitCheck.Kind {
    public var denialKind: PolicyDenial.Kind {
        switch self {
        case .concurrency: return .concurrency
        case .rate: return .rate
        case .quota: return .quota
        case .budget: return .budget
        }
    }
}
