import Foundation
import Hummingbird
import Upstreams

/// The approvals API on the admin port (README "Approval holds"):
///
///     GET  /api/approvals?status=pending        pending approvals (an approver sees those it may decide)
///     GET  /api/approvals/{id}
///     POST /api/approvals/{id}/approve|deny     {"reason": "..."} optional
///
/// Decided with the admin token (recorded as `admin`) or an approver's own agent token — an agent id
/// or `role:<name>` the rule lists — and never by the agent whose call it is.
struct ApprovalsAPI: Sendable {
    let approvals: ApprovalService
    let adminToken: AdminToken
    let authenticator: Authenticator?
    let maxBodyBytes: Int

    func register(on router: Router<AdminContext>) {
        let group = router.group("api/approvals")
        group.get { request, _ in await respond { try await self.list(request, caller: try self.caller(request)) } }
        group.get(":id") { request, context in
            await respond {
                let caller = try self.caller(request)
                let a = try await self.find(context)
                try Self.mayDecide(caller, a)
                return AdminRoutes.json(a.json, status: .ok)
            }
        }
        for approve in [true, false] {
            group.post(":id/\(approve ? "approve" : "deny")") { request, context in
                await respond { try await self.decide(request, context: context, approve: approve) }
            }
        }
    }

    private func caller(_ request: Request) throws(GatewayError) -> AdminOrAgent {
        try AdminOrAgent.identify(request, adminToken: adminToken, authenticator: authenticator, metrics: approvals.metrics)
    }

    private func respond(_ body: () async throws -> Response) async -> Response {
        await AdminProblem.respond(otherwise: GatewayError(.stateUnavailable, "the approval store is unavailable; try again shortly", headers: [("Retry-After", "1")]), body)
    }

    private func find(_ context: AdminContext) async throws -> Approval {
        let id = context.parameters.get("id") ?? ""
        guard Approval.isValidID(id), let a = try await approvals.store.approval(id: id) else {
            throw GatewayError(.approvalNotFound, "no approval \(id.prefix(64))")
        }
        return a
    }

    /// The admin, or an approver the rule names who is not the calling agent.
    static func mayDecide(_ caller: AdminOrAgent, _ a: Approval) throws(GatewayError) {
        guard case .agent(let identity) = caller else { return }
        guard identity.agentID != a.agent else {
            throw GatewayError(.approvalForbidden, "an agent never approves its own call")
        }
        guard a.approvers.contains(identity.agentID) || a.approvers.contains("role:" + identity.role) else {
            throw GatewayError(.approvalForbidden, "this agent is not an approver of \(a.tool):\(a.action)")
        }
    }

    private func list(_ request: Request, caller: AdminOrAgent) async throws -> Response {
        let status = request.uri.queryParameters["status"].map(String.init) ?? "pending"
        guard status == "pending" else {
            var e = GatewayError(.validationFailed, "status must be pending (decided approvals are read by id)")
            e.extensions["errors"] = [["field": "status", "message": "must be pending"]]
            throw e
        }
        let all = try await approvals.store.pending(limit: 500, now: approvals.now())
        let visible = all.filter { (try? Self.mayDecide(caller, $0)) != nil }
        return AdminRoutes.json(["approvals": .array(visible.map(\.json))], status: .ok)
    }

    private func decide(_ request: Request, context: AdminContext, approve: Bool) async throws -> Response {
        let caller = try caller(request)
        let body: [String: JSONValue]
        switch await AdminBody.object(request, limit: maxBodyBytes, allowEmpty: true) {
        case .success(let o): body = o
        case .failure(let e): throw e
        }
        let reason = body["reason"]?.stringValue
        if let reason, reason.utf8.count > 1000 {
            var e = GatewayError(.validationFailed, "reason is at most 1000 bytes")
            e.extensions["errors"] = [["field": "reason", "message": "at most 1000 bytes"]]
            throw e
        }
        let a = try await find(context)
        try Self.mayDecide(caller, a)
        let by: String
        switch caller {
        case .admin: by = "admin"
        case .agent(let identity): by = identity.agentID
        }
        guard let result = try await approvals.decide(id: a.id, approve: approve, by: by, reason: reason) else {
            throw GatewayError(.approvalNotFound, "no approval \(a.id)")
        }
        return AdminRoutes.json(try result.get().json, status: .ok)
    }
}
