import Foundation
import NIOCore
import Policy
import Upstreams

/// The policy and admission stages: evaluate (scope, guards, time window), then admit the stateful
/// limits (concurrency, rate, quota, budget) in one atomic step, then settle after the call.
extension Pipeline {
    /// An admitted call: what to settle afterwards.
    struct Admitted: Sendable {
        var agent: String
        var checks: [LimitCheck]
        var admission: Admission
        var meter: OpenAIUsageMeter?
        /// The concurrency slot the call holds, renewed while it runs.
        var lease: HeldLease? = nil
    }

    /// What the policy decided for a call that it allows: the stateful checks still to admit, and the
    /// internal ranges it grants an http_fetch call.
    struct Evaluated: Sendable {
        var checks: [LimitCheck] = []
        var egressAllow: [CIDR] = []
        /// An OpenAI call under a token budget: reads the answer's usage, to settle the budget (and the
        /// call's run, which shares it) to what was used.
        var meter: OpenAIUsageMeter? = nil
        /// http_fetch with a policy: the same evaluation for each redirect hop the transport would follow.
        var hopCheck: (@Sendable (TargetURL) -> String?)? = nil
        /// The call needs a human's approval, bound to the hash of the policy that asked for it.
        var approval: ApprovalRule? = nil
        var policyHash = ""
    }

    /// Evaluates the policy (scope, guards, time window): synchronous, no state touched. Throws the
    /// refusal. `evaluator`: the policy snapshot the caller already holds (its hash went into the call's
    /// receipt), so one policy decides, binds an approval and is named; nil reads the current one.
    func evaluate(_ call: ToolCall, identity: AgentIdentity, bodyBytes: Int, evaluator: PolicyEvaluator? = nil) throws(GatewayError) -> Evaluated {
        guard let policy, limits != nil else { return Evaluated() }
        let request = PolicyRequest(
            agentID: identity.agentID, role: identity.role, tokenScopes: identity.scopes, tool: call.tool.rawValue,
            action: call.action, parameters: Self.policyParameters(call), bodyBytes: bodyBytes)
        let evaluator = evaluator ?? policy.evaluator
        let evaluation = evaluator.evaluate(request, at: Date())
        for w in evaluation.wouldDeny { metrics?.policyWouldDeny(w.kind.rawValue) }
        if let denial = evaluation.denial {
            metrics?.policyDenied(denial.kind.rawValue)
            throw Self.error(for: denial)
        }
        // Validated when the policy compiled.
        var evaluated = Evaluated(
            checks: evaluation.checks, egressAllow: evaluation.egressAllow.compactMap(CIDR.init),
            meter: evaluation.budgetTool ? OpenAIUsageMeter() : nil)
        if let approval = evaluation.approval {
            evaluated.approval = approval
            evaluated.policyHash = evaluator.policy.hash
        }
        if case .httpFetch(let fetch) = call.parameters {
            evaluated.hopCheck = { url in
                var hop = request
                hop.parameters = .fetch(scheme: url.scheme, host: url.host, port: url.port, method: fetch.method)
                return evaluator.evaluate(hop, at: Date()).denial?.detail
            }
        }
        return evaluated
    }

    /// Admits the call against its stateful limits (concurrency, rate, quota, budget) in one atomic
    /// step. nil when no such limit applies.
    func admitLimits(_ evaluated: Evaluated, identity: AgentIdentity, requestID: String) async throws(GatewayError) -> Admitted? {
        guard !evaluated.checks.isEmpty, let limits else { return nil }
        let admission: Admission
        do {
            admission = try await limits.admit(agent: identity.agentID, checks: evaluated.checks, leaseID: requestID)
        } catch {
            throw Self.stateError(error)
        }
        return try admitted(admission, evaluated, identity: identity)
    }

    /// The store's decision as the call's admission, or its refusal (metered either way).
    func admitted(_ admission: Admission, _ evaluated: Evaluated, identity: AgentIdentity) throws(GatewayError) -> Admitted {
        let checks = evaluated.checks
        for (check, result) in zip(checks, admission.results) {
            if check.kind == .rate {
                metrics?.rateLimitDecision(result.allowed ? "allowed" : (check.mode == .enforce ? "limited" : "would_limit"))
            }
            if !result.allowed, check.mode == .report { metrics?.policyWouldDeny(check.kind.denialKind.rawValue) }
            // A quota or budget with under a tenth left: the alert that comes before the refusals.
            if result.allowed, check.kind == .quota || check.kind == .budget, result.remaining * 10 < check.limit {
                metrics?.lowHeadroom(check.kind == .quota ? "quota" : "budget")
            }
        }
        guard admission.admitted else {
            let index = checks.indices.first { !admission.results[$0].allowed && checks[$0].mode == .enforce }!
            let check = checks[index]
            metrics?.policyDenied(check.kind.denialKind.rawValue)
            throw Self.limitError(check, admission.results[index])
        }
        var admitted = Admitted(agent: identity.agentID, checks: checks, admission: admission, meter: evaluated.meter)
        if let leases, checks.contains(where: { $0.kind == .concurrency }) {
            admitted.lease = leases.hold(agent: identity.agentID, leaseID: admission.leaseID)
        }
        return admitted
    }

    /// A limit store that could not decide: 503 `state_unavailable` (fail closed for that class).
    static func stateError(_ error: any Error) -> GatewayError {
        if let e = error as? StateUnavailable {
            return GatewayError(.stateUnavailable, "the shared \(e.kind.rawValue) state is unavailable; try again shortly", headers: [("Retry-After", "1")])
        }
        return GatewayError(.stateUnavailable, "the limit state is unavailable; try again shortly", headers: [("Retry-After", "1")])
    }

    /// Releases the concurrency slot and settles budgets; refunds quota when nothing was sent.
    func settle(_ admitted: Admitted?, refund: Bool, upstreamStatus: Int?) async {
        guard let admitted, let limits else { return }
        if let lease = admitted.lease { leases?.release(lease) }
        try? await limits.settle(agent: admitted.agent, Self.settlement(admitted, refund: refund, upstreamStatus: upstreamStatus))
    }

    /// `settle` without waiting for the store: from the loop when the store can (`LoopLimitStore`),
    /// else in a task.
    func settleSoon(_ admitted: Admitted?, refund: Bool, upstreamStatus: Int?, on loop: any EventLoop) {
        guard let admitted else { return }
        if let lease = admitted.lease { leases?.release(lease) }
        guard let store = loopLimits else {
            Task { await self.settle(admitted, refund: refund, upstreamStatus: upstreamStatus) }
            return
        }
        store.settleSoon(agent: admitted.agent, Self.settlement(admitted, refund: refund, upstreamStatus: upstreamStatus), on: loop)
    }

    static func settlement(_ admitted: Admitted, refund: Bool, upstreamStatus: Int?) -> Settlement {
        let outcome: Settlement.Outcome
        if refund {
            outcome = .refunded
        } else if let usage = admitted.meter?.totalTokens {
            outcome = .completed(usage: usage)
        } else if let status = upstreamStatus, status >= 400 {
            // An error answer consumed no tokens.
            outcome = .completed(usage: admitted.meter == nil ? nil : 0)
        } else {
            outcome = .completed(usage: nil)
        }
        return Settlement(checks: admitted.checks, admission: admitted.admission, outcome: outcome)
    }

    /// What the policy reads of a call. The model list, moderations and trace uploads spend no tokens
    /// (OpenAI bills none of them, and their answers carry no usage): no guard, budget or reservation
    /// reads them (the tool's scope and limits on calls still do).
    static func policyParameters(_ call: ToolCall) -> CallParameters {
        if call.tool == .openai, OpenAIAdapter.spendsNoTokens(call.action) { return .none }
        switch call.parameters {
        case .serpapi(let s): return .serpapi(engine: s.engine, num: s.num)
        case .openai(let o):
            return .openai(model: o.model, maxTokens: o.maxTokens, stream: o.stream, estimatedInputTokens: o.estimatedInputTokens, choices: o.choices)
        case .httpFetch(let f): return .fetch(scheme: f.url.scheme, host: f.url.host, port: f.url.port, method: f.method)
        case .gmail(let g):
            return .gmail(
                recipientDomains: g.recipientDomains, recipients: g.recipients.count, subjectBytes: g.subjectBytes,
                bodyBytes: g.bodyBytes, headerInjection: g.headerInjection)
        }
    }

    static func error(for denial: PolicyDenial) -> GatewayError {
        switch denial.kind {
        case .scope: return GatewayError(.scopeDenied, denial.detail)
        case .parameter:
            var e = GatewayError(.paramDenied, denial.detail)
            if let p = denial.parameter { e.extensions["parameter"] = .string(p) }
            return e
        case .offHours: return GatewayError(.offHours, denial.detail)
        case .concurrency: return GatewayError(.concurrencyLimited, denial.detail)
        case .rate: return GatewayError(.rateLimited, denial.detail)
        case .quota: return GatewayError(.quotaExceeded, denial.detail)
        case .budget: return GatewayError(.budgetExhausted, denial.detail)
        }
    }

    /// A 429 with `Retry-After`, the IETF `RateLimit-Policy` / `RateLimit` fields and the widespread
    /// `X-RateLimit-*` ones.
    static func limitError(_ check: LimitCheck, _ result: LimitResult) -> GatewayError {
        let retry = max(1, Int((Double(result.resetMilliseconds) / 1000).rounded(.up)))
        let name = check.kind.rawValue
        let window: Int
        switch check.kind {
        case .rate: window = max(1, Int((check.periodMilliseconds / 1000).rounded(.up)))
        case .quota, .budget: window = Int((check.window?.length ?? 1000) / 1000)
        case .concurrency: window = 1
        }
        let detail: String
        let code: GatewayError.Code
        switch check.kind {
        case .rate:
            code = .rateLimited
            detail = "rate limit reached; retry in \(retry) s"
        case .quota:
            code = .quotaExceeded
            detail = "quota for this window used up; it resets in \(retry) s"
        case .budget:
            code = .budgetExhausted
            detail = "token budget for this window is exhausted (this call reserves \(check.cost) tokens); it resets in \(retry) s"
        case .concurrency:
            code = .concurrencyLimited
            detail = "too many calls of this agent in flight"
        }
        return GatewayError(
            code, detail,
            headers: [
                ("Retry-After", String(retry)),
                ("RateLimit-Policy", "\"\(name)\";q=\(check.limit);w=\(window)"),
                ("RateLimit", "\"\(name)\";r=\(result.remaining);t=\(retry)"),
                ("X-RateLimit-Limit", String(check.limit)),
                ("X-RateLimit-Remaining", String(result.remaining)),
                ("X-RateLimit-Reset", String(retry)),
            ])
    }

    /// Asks OpenAI to include usage in a streamed answer, so the budget settles from the real count.
    /// The agent is not shown the chunk it did not ask for (`OpenAIAddedUsageRemover`).
    static func requestingUsage(_ call: ToolCall) -> ToolCall {
        guard call.action == "chat" || call.action == "completions", case .openai(var p) = call.parameters, p.stream, let body = call.request.body,
            let asking = OpenAIAdapter.includingUsage(body)
        else { return call }
        var out = call
        out.request.body = asking
        p.usageAddedBySidecar = true
        out.parameters = .openai(p)
        return out
    }

    /// Whether the call's streamed answer carries a usage chunk the sidecar asked for, not the agent.
    static func addedUsage(_ call: ToolCall) -> Bool {
        if case .openai(let p) = call.parameters { return p.usageAddedBySidecar }
        return false
    }
}
