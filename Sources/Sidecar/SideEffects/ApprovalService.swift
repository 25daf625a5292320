import Logging
import Policy
import Upstreams

/// Approval holds as the pipeline uses them: a call a rule marks `approval:` passes only with an unused
/// grant bound to exactly this call; otherwise a pending approval is created (or found), shown on the
/// run's stream and in `GET /api/approvals`, and the call is held up to the rule's `hold` for a
/// decision. Approved in time → it proceeds (the grant spent); else 403 `approval_pending` and the
/// agent repeats the identical call once it is approved. The agent holds no credential, so there is no
/// way around the hold.
final class ApprovalService: Sendable {
    let store: any ApprovalStore
    let runs: RunService?
    let metrics: GatewayMetrics?
    let logger: Logger
    let now: @Sendable () -> Int64
    /// How often a held call looks for the decision (with Redis: one read per look).
    let poll: Duration
    /// Live pending approvals one agent may wait on (`approvals.max_pending_per_agent`): each distinct
    /// call asks anew, and an agent varying one byte per call would otherwise fill the store.
    let maxPendingPerAgent: Int

    init(
        store: any ApprovalStore, runs: RunService?, metrics: GatewayMetrics?, logger: Logger, now: @escaping @Sendable () -> Int64,
        poll: Duration = .milliseconds(100), maxPendingPerAgent: Int = 100
    ) {
        self.maxPendingPerAgent = maxPendingPerAgent
        self.store = store
        self.runs = runs
        self.metrics = metrics
        self.logger = logger
        self.now = now
        self.poll = poll
    }

    /// Returns the grant spent on this call, or throws `approval_pending` / `approval_denied` /
    /// `approval_expired` (or 503 when the store cannot be reached: fail closed).
    func authorize(_ call: ToolCall, agent: String, run: String?, rule: ApprovalRule, policy: String) async throws(GatewayError) -> Approval {
        let digest = RunCall.exactDigest(call)
        let key = Approval.key(agent: agent, run: run, tool: call.tool.rawValue, action: call.action, digest: digest, policy: policy)
        let at = now()
        let fresh = Approval(
            id: Approval.newID(key: key), key: key, agent: agent, run: run, tool: call.tool.rawValue, action: call.action, digest: digest,
            policy: policy, status: .pending, createdAt: at, expiresAt: at + rule.expiresMilliseconds, approvers: rule.approvers,
            summary: Self.summary(call))
        let deadline = at + rule.holdMilliseconds
        var (claim, approval) = try await claimed(fresh)
        if claim == .created { await announce(approval, type: "approval.requested") }
        while claim == .pending || claim == .created, now() < deadline, !Task.isCancelled {
            try? await Task.sleep(for: poll)
            (claim, approval) = try await claimed(fresh)
        }
        metrics?.approval(claim)
        var e: GatewayError
        switch claim {
        case .granted:
            return approval
        case .pending, .created:
            let wait = max(1, min(60, (approval.expiresAt - now()) / 1000))
            e = GatewayError(
                .approvalPending,
                "\(call.scope) needs approval \(approval.id); repeat this exact call once it is approved (before \(RFC3339.format(approval.expiresAt / 1000)))",
                headers: [("Retry-After", String(min(wait, 5)))])
        case .denied:
            e = GatewayError(.approvalDenied, "approval \(approval.id) was denied\(approval.reason.map { ": \($0)" } ?? "")")
        case .expired:
            e = GatewayError(.approvalExpired, "approval \(approval.id) expired before it was used; the next identical call asks again")
        case .tooManyPending:
            throw GatewayError(
                .tooManyPendingApprovals,
                "agent \(agent) already waits on \(maxPendingPerAgent) pending approvals (approvals.max_pending_per_agent); repeat a call already asked for, or wait until some are decided or expire",
                headers: [("Retry-After", "60")])
        }
        e.extensions["approval_id"] = .string(approval.id)
        throw e
    }

    /// A grant given back: the call it was spent on was refused before anything was sent.
    func restore(_ approval: Approval) async {
        do { try await store.restore(id: approval.id, now: now()) } catch {
            logger.warning("approvals: a grant could not be given back", metadata: ["approval": "\(approval.id)", "error": "\(error)"])
        }
    }

    private func claimed(_ fresh: Approval) async throws(GatewayError) -> (ApprovalClaim, Approval) {
        do { return try await store.claim(fresh, now: now(), maxPending: maxPendingPerAgent) } catch {
            logger.warning("approvals: the store is unavailable; the call is refused", metadata: ["error": "\(error)"])
            var e = GatewayError(.stateUnavailable, "the approval store is unavailable; the call was not sent")
            e.headers = [("Retry-After", "1")]
            throw e
        }
    }

    /// A decision from the API: who decided is recorded; the run's stream hears of it.
    func decide(id: String, approve: Bool, by: String, reason: String?) async throws -> Result<Approval, GatewayError>? {
        let result = try await store.decide(id: id, approve: approve, by: by, reason: reason, now: now())
        if case .success(let a)? = result { await announce(a, type: approve ? "approval.approved" : "approval.denied") }
        return result
    }

    private func announce(_ a: Approval, type: String) async {
        logger.notice(
            "approval", metadata: ["event": "\(type)", "approval": "\(a.id)", "agent_id": "\(a.agent)", "scope": "\(a.tool):\(a.action)", "by": "\(a.decidedBy ?? "-")"])
        guard let run = a.run, let runs else { return }
        await runs.note(run, agent: a.agent, type: type, data: a.json)
    }

    /// What a human needs to decide, from the parameters the adapter read (never a body).
    static func summary(_ call: ToolCall) -> [String: String] {
        switch call.parameters {
        case .gmail(let g):
            return ["recipients": g.recipients.joined(separator: ", "), "subject_bytes": String(g.subjectBytes), "body_bytes": String(g.bodyBytes)]
        case .httpFetch(let f): return ["url": f.url.description, "method": f.method]
        case .openai(let o): return ["model": o.model ?? "", "max_tokens": o.maxTokens.map(String.init) ?? ""]
        case .serpapi(let s): return ["query": s.query ?? "", "engine": s.engine]
        }
    }
}
