import Foundation
import Policy
import Upstreams

/// A human's decision on one call: bound to the agent, the run, the tool and action, the digest of the
/// call's canonical parameters and the policy that asked for it, so a grant never fits a call that
/// differs in any byte, another agent, another run, or a changed policy. Single-use.
struct Approval: Sendable, Hashable, Codable {
    enum Status: String, Sendable, Hashable, Codable {
        case pending, approved, denied, expired, used
    }

    var id: String
    /// SHA-256 of what the approval binds (`Approval.key`).
    var key: String
    var agent: String
    var run: String?
    var tool: String
    var action: String
    var digest: String
    var policy: String
    var status: Status
    var createdAt: Int64
    var expiresAt: Int64
    var approvers: [String]
    /// What a human needs to decide (recipients, URL, model, query): never a body.
    var summary: [String: String]
    var decidedBy: String?
    var reason: String?
    var decidedAt: Int64?
    var usedAt: Int64?

    static func key(agent: String, run: String?, tool: String, action: String, digest: String, policy: String) -> String {
        Digest.sha256Hex(["approval", agent, run ?? "", tool, action, digest, policy])
    }

    /// `apr_` + the first 16 hex digits of the key (approvals of one call read alike in logs) + 64 random bits.
    static func newID(key: String) -> String { "apr_" + key.prefix(16) + RequestID.generate().prefix(16) }

    static func isValidID(_ id: String) -> Bool {
        id.utf8.count == 36 && id.hasPrefix("apr_") && id.utf8.dropFirst(4).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }


    var json: JSONValue {
        var o: [String: JSONValue] = [
            "id": .string(id), "agent_id": .string(agent), "tool": .string(tool), "action": .string(action), "parameters_sha256": .string(digest),
            "policy": .string(policy), "status": .string(status.rawValue), "created_at": .string(RFC3339.format(createdAt / 1000)),
            "expires_at": .string(RFC3339.format(expiresAt / 1000)), "approvers": .array(approvers.map { .string($0) }),
            "summary": .object(summary.mapValues { .string($0) }),
        ]
        if let run { o["run_id"] = .string(run) }
        if let decidedBy { o["decided_by"] = .string(decidedBy) }
        if let reason { o["reason"] = .string(reason) }
        if let decidedAt { o["decided_at"] = .string(RFC3339.format(decidedAt / 1000)) }
        if let usedAt { o["used_at"] = .string(RFC3339.format(usedAt / 1000)) }
        return .object(o)
    }
}

/// What a call that needs approval meets, given the latest approval for the same binding (pure).
enum ApprovalClaim: Sendable, Hashable {
    /// An unused, unexpired grant: spent on this call.
    case granted
    /// Nothing usable: a new pending approval was created.
    case created
    case pending
    case denied
    /// The pending approval or the grant ran out before it was used.
    case expired
    /// Nothing usable, and the agent already waits on as many live pending approvals as it may
    /// (`approvals.max_pending_per_agent`): none was created.
    case tooManyPending

    /// The rule, and the approval as it is after the claim (`created`: `fresh`).
    static func claim(latest: Approval?, fresh: Approval, now: Int64) -> (Self, Approval) {
        guard var a = latest else { return (.created, fresh) }
        switch a.status {
        case .approved where now < a.expiresAt:
            a.status = .used
            a.usedAt = now
            return (.granted, a)
        case .pending where now < a.expiresAt:
            return (.pending, a)
        case .denied where now < a.expiresAt:
            return (.denied, a)
        case .approved, .pending:
            a.status = .expired
            return (.expired, a)
        case .denied, .expired, .used:
            return (.created, fresh)
        }
    }

    /// A decision by an approver on approval `a` (pure): the approval after it, or why not.
    static func decide(_ a: Approval, approve: Bool, by: String, reason: String?, now: Int64) -> Result<Approval, GatewayError> {
        guard a.status == .pending else {
            return .failure(GatewayError(.approvalNotPending, "approval \(a.id) is \(a.status.rawValue), not pending"))
        }
        guard now < a.expiresAt else { return .failure(GatewayError(.approvalExpired, "approval \(a.id) expired before it was decided")) }
        var d = a
        d.status = approve ? .approved : .denied
        d.decidedBy = by
        d.reason = reason
        d.decidedAt = now
        return .success(d)
    }

    /// A grant taken back (the call was refused afterwards, before anything was sent): usable again.
    static func restore(_ a: Approval) -> Approval? {
        guard a.status == .used else { return nil }
        var r = a
        r.status = .approved
        r.usedAt = nil
        return r
    }
}

/// Where approvals live: in memory on one host, in Redis for a fleet (approve on one sidecar, the call
/// passes on another). Each method is one atomic step.
protocol ApprovalStore: Sendable {
    /// Applies `ApprovalClaim.claim` to the latest approval for `fresh.key` and stores the result; a claim
    /// that would create one while `fresh.agent` has `maxPending` live pending approvals is
    /// `.tooManyPending` and stores nothing (counted before the write: two at once may pass one past it).
    func claim(_ fresh: Approval, now: Int64, maxPending: Int) async throws -> (ApprovalClaim, Approval)
    func approval(id: String) async throws -> Approval?
    /// Applies `ApprovalClaim.decide`; nil when there is no such approval.
    func decide(id: String, approve: Bool, by: String, reason: String?, now: Int64) async throws -> Result<Approval, GatewayError>?
    func restore(id: String, now: Int64) async throws
    /// Pending approvals not yet expired at `now`, oldest first.
    func pending(limit: Int, now: Int64) async throws -> [Approval]
}
