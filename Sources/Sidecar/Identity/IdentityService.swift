import Foundation
import Policy
import Upstreams

/// The control-plane operations on agents and tokens, shared by the admin API and its 4Runr aliases.
/// Every change goes to the store first, then to the in-memory state (and the token cache), so it applies
/// to the very next request.
final class IdentityService: Sendable {
    let state: IdentityState
    let minter: TokenMinter?
    let settings: AuthSettings
    let metrics: GatewayMetrics
    let authenticator: Authenticator?
    let now: @Sendable () -> Int64

    init(
        state: IdentityState, minter: TokenMinter?, settings: AuthSettings, metrics: GatewayMetrics,
        authenticator: Authenticator?, now: @escaping @Sendable () -> Int64
    ) {
        self.state = state
        self.minter = minter
        self.settings = settings
        self.metrics = metrics
        self.authenticator = authenticator
        self.now = now
    }

    var store: any IdentityStore { state.store }

    func createAgent(name: String, role: String, createdBy: String) async throws -> AgentRecord {
        let agent = AgentRecord(
            id: "agt_" + RequestID.generate().prefix(20), name: name, role: role, status: .active, createdBy: createdBy,
            createdAt: now())
        try await store.createAgent(agent)
        state.apply { s in
            s.agents[agent.id] = .active
            s.agentRecords.append(agent)
        }
        metrics.agentCreations.increment()
        return agent
    }

    func setStatus(agentID: String, _ status: AgentRecord.Status) async throws -> AgentRecord? {
        guard try await store.setAgentStatus(id: agentID, status: status) else { return nil }
        state.apply { s in
            s.agents[agentID] = status
            if let i = s.agentRecords.firstIndex(where: { $0.id == agentID }) { s.agentRecords[i].status = status }
        }
        if status == .disabled { authenticator?.evict(agent: agentID) }
        return try await store.agent(id: agentID)
    }

    struct IssuedToken: Sendable {
        var token: String
        var record: TokenRecord
    }

    enum IssueError: Error {
        case mintingDisabled
        case ttlTooLong(max: Duration)
    }

    /// Mints a token for a registered agent and records its metadata (never the token).
    func issueToken(for agent: AgentRecord, ttl: Duration?, scopes: [String]?, run: String? = nil) async throws -> IssuedToken {
        guard let minter else { throw IssueError.mintingDisabled }
        let ttl = ttl ?? settings.defaultTTL
        guard ttl <= settings.maxTTL else { throw IssueError.ttlTooLong(max: settings.maxTTL) }
        let issuedAt = now()
        let claims = TokenClaims(
            iss: settings.issuer, sub: agent.id, aud: [settings.audience], iat: issuedAt, nbf: issuedAt,
            exp: issuedAt + ttl.components.seconds, jti: "tok_" + RequestID.generate().prefix(24), role: agent.role,
            scopes: scopes, run: run)
        let token = try minter.mint(claims)
        let record = TokenRecord(
            jti: claims.jti, agentId: agent.id, issuedAt: issuedAt, expiresAt: claims.exp, scopes: scopes, source: .api,
            revokedAt: nil)
        try await store.recordToken(record)
        metrics.tokenGenerations.increment()
        return IssuedToken(token: token, record: record)
    }

    func revoke(tokenID: String) async throws -> TokenRecord? {
        let at = now()
        guard try await store.revokeToken(jti: tokenID, at: at) else { return nil }
        state.apply { $0.revoked.insert(tokenID) }
        authenticator?.evict(jti: tokenID)
        return try await store.token(jti: tokenID)
    }
}
