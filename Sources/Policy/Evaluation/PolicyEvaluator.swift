import Foundation

/// Evaluates a request against a compiled policy, in the documented order:
///
///     scope → guards → time window → [concurrency → rate → quota → budget]
///
/// The first three are decided here, purely, with the time passed in. The bracketed ones need shared
/// state: they come back as `LimitCheck`s for a `LimitStore` to decide atomically.
public struct PolicyEvaluator: Sendable {
    public let policy: CompiledPolicy
    /// Budget reservation when a request sets no token cap.
    public let defaultReservation: Int

    /// What an OpenAI call without a token cap reserves: the default for each choice it asks for,
    /// pinned below where the sums that follow (input, counters) could overflow.
    public static func uncapped(_ perChoice: Int, choices: Int) -> Int {
        let (total, overflow) = perChoice.multipliedReportingOverflow(by: max(1, choices))
        return overflow ? countBound : min(total, countBound)
    }

    /// The largest count a request carries (the adapters read no integer at or above it: `JSONValue.integerBound`).
    public static let countBound = 9_000_000_000_000_000

    public init(policy: CompiledPolicy, defaultReservation: Int = 1024) {
        self.policy = policy
        self.defaultReservation = defaultReservation
    }

    public func evaluate(_ request: PolicyRequest, at now: Date) -> PolicyEvaluation {
        let role = policy.roles[request.role]
        let overrides = policy.agents[request.agentID]
        let allow = (overrides.map { $0.allow.isEmpty ? nil : $0.allow } ?? nil) ?? role?.allow ?? []
        var evaluation = PolicyEvaluation()

        // 1. Scope: the role (or the agent's own allow list), narrowed by the token's scopes.
        let allowed = allow.contains { $0.matches(tool: request.tool, action: request.action) }
        let tokenAllows = request.tokenScopes.map { $0.contains(request.scope) || $0.contains("\(request.tool):*") } ?? true
        guard allowed, tokenAllows else {
            evaluation.denial = PolicyDenial(kind: .scope, detail: "the agent may not call \(request.scope)")
            return evaluation
        }
        // The matching rules of the role, then of the agent's overrides — collected without joining the
        // two lists first (a `Rule` is a large value: every copy retains each of its fields).
        var rules: [Rule] = []
        func collect(_ list: [Rule]?) {
            guard let list else { return }
            for i in list.indices where list[i].scope.matches(tool: request.tool, action: request.action) { rules.append(list[i]) }
        }
        collect(role?.rules)
        collect(overrides?.rules)

        // The passes below read the rules by index: a `for rule in rules` copies each rule out of the
        // list (every field retained, then released) on each of the five passes.
        // 2. Guards.
        for i in rules.indices {
            if let violation = Self.guardViolation(rules[i].guards, request) {
                if rules[i].guardMode == .enforce {
                    evaluation.denial = violation
                    return evaluation
                }
                evaluation.wouldDeny.append(violation)
            }
        }
        // 3. Time windows.
        for i in rules.indices {
            if let window = rules[i].timeWindow, !window.contains(now) {
                let denial = PolicyDenial(kind: .offHours, detail: "\(request.scope) is not allowed at this time")
                if rules[i].timeWindowMode == .enforce {
                    evaluation.denial = denial
                    return evaluation
                }
                evaluation.wouldDeny.append(denial)
            }
        }
        for i in rules.indices where !rules[i].guards.allowCIDRs.isEmpty { evaluation.egressAllow += rules[i].guards.allowCIDRs }
        evaluation.approval = rules.indices.lazy.compactMap { rules[$0].approval }.first
        // 4. Stateful checks, in order.
        if let max = overrides?.concurrency ?? role?.concurrency {
            evaluation.checks.append(LimitCheck(kind: .concurrency, mode: overrides?.concurrency != nil ? overrides!.concurrencyMode : role!.concurrencyMode, key: "c", limit: max))
        }
        for i in rules.indices {
            guard let r = rules[i].rate else { continue }
            var check = LimitCheck(kind: .rate, mode: r.mode, key: rules[i].rateKey, limit: r.limit)
            check.periodMilliseconds = r.period
            check.burst = r.burst
            evaluation.checks.append(check)
        }
        for i in rules.indices {
            guard let q = rules[i].quota else { continue }
            var check = LimitCheck(kind: .quota, mode: q.mode, key: rules[i].quotaKey, limit: q.limit)
            check.cost = q.cost
            check.window = Self.windows(q.window, now)
            evaluation.checks.append(check)
        }
        for i in rules.indices {
            guard let b = rules[i].budget, case .openai(_, let maxTokens, _, let input, let choices) = request.parameters else { continue }
            var check = LimitCheck(kind: .budget, mode: b.mode, key: rules[i].budgetKey, limit: b.tokens)
            check.cost = (maxTokens ?? Self.uncapped(defaultReservation, choices: choices)).addingSaturated(input)
            check.window = Self.windows(b.window, now)
            evaluation.checks.append(check)
            evaluation.budgetTool = true
        }
        return evaluation
    }

    static func windows(_ w: CalendarWindow, _ now: Date) -> LimitCheck.WindowPair {
        let (current, next) = w.windows(around: now)
        return LimitCheck.WindowPair(currentID: current.id, currentEnd: current.end, nextID: next.id, nextEnd: next.end)
    }

    /// The first guard a request breaks, naming the parameter but never the allowed values.
    static func guardViolation(_ g: Guards, _ r: PolicyRequest) -> PolicyDenial? {
        func deny(_ parameter: String, _ why: String) -> PolicyDenial {
            PolicyDenial(kind: .parameter, detail: "parameter \(parameter) \(why)", parameter: parameter)
        }
        if let max = g.maxBodyBytes, r.bodyBytes > max { return deny("body", "is too large") }
        switch r.parameters {
        case .fetch(let scheme, let host, let port, let method):
            if let schemes = g.schemes, !schemes.contains(scheme) { return deny("scheme", "is not allowed") }
            if g.blockHosts.contains(where: { $0.matches(host) }) { return deny("host", "is not allowed") }
            if let allow = g.allowHosts, !allow.contains(where: { $0.matches(host) }) { return deny("host", "is not allowed") }
            if let ports = g.ports, !ports.contains(port) { return deny("port", "is not allowed") }
            if let methods = g.methods, !methods.contains(method.uppercased()) { return deny("method", "is not allowed") }
        case .openai(let model, let maxTokens, let stream, _, _):
            if let models = g.models, !(model.map(models.contains) ?? false) { return deny("model", "is not allowed") }
            if let cap = g.maxTokens {
                guard let requested = maxTokens else { return deny("max_tokens", "is required") }
                if requested > cap { return deny("max_tokens", "exceeds the allowed maximum") }
            }
            if g.allowStream == false, stream { return deny("stream", "is not allowed") }
        case .gmail(let domains, let recipients, let subjectBytes, let bodyBytes, let injection):
            if g.rejectCRLF, injection { return deny("headers", "contain a CR or LF") }
            if let allowed = g.allowedDomains, !domains.allSatisfy({ d in allowed.contains { $0.matches(d) } }) {
                return deny("recipients", "include a domain that is not allowed")
            }
            if let max = g.maxRecipients, recipients > max { return deny("recipients", "are too many") }
            if let max = g.maxSubjectBytes, subjectBytes > max { return deny("subject", "is too long") }
            if let max = g.maxEmailBodyBytes, bodyBytes > max { return deny("body", "is too long") }
        case .serpapi(let engine, let num):
            if let engines = g.engines, !engines.contains(engine) { return deny("engine", "is not allowed") }
            if let max = g.maxNum, let n = num, n > max { return deny("num", "exceeds the allowed maximum") }
        case .none:
            break
        }
        return nil
    }
}
