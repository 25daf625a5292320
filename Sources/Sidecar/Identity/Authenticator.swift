import Logging
import Policy

/// The authenticate stage: token → agent identity, in the documented order (README "Agent tokens"):
/// cached or verified token (header allowlist, decrypt, signature, iss/aud/nbf/exp) → `jti` not revoked →
/// agent known and active → provenance (`X-Agent-Id`, sidecar binding).
final class Authenticator: Sendable {
    let verifier: TokenVerifier
    let cache: TokenCache
    let state: IdentityState
    let settings: AuthSettings
    let metrics: GatewayMetrics
    let now: @Sendable () -> Int64
    let logger: Logger

    init(
        verifier: TokenVerifier, state: IdentityState, settings: AuthSettings, metrics: GatewayMetrics,
        now: @escaping @Sendable () -> Int64, logger: Logger, cache: TokenCache = TokenCache()
    ) {
        self.verifier = verifier
        self.state = state
        self.settings = settings
        self.metrics = metrics
        self.now = now
        self.logger = logger
        self.cache = cache
    }

    /// `digest`: the token's digest when the caller already has it (`CredentialMemo`).
    func authenticate(token: String?, presentedAgentID: String?, digest known: TokenCache.Digest? = nil) -> Result<AgentIdentity, GatewayError> {
        guard let token, !token.isEmpty else {
            metrics.tokenValidation("token_missing")
            return .failure(GatewayError(.tokenMissing, "present the agent token as the proxy password (HTTP_PROXY=http://agent:TOKEN@host:port), Proxy-Authorization/Authorization: Bearer, or X-Agent-Token"))
        }
        let now = now()
        let digest = known ?? TokenCache.Digest(token)
        let verified: VerifiedToken
        switch cache.lookup(digest, now: now) {
        case .verified(let v)?:
            metrics.tokenValidation("cached")
            verified = v
            if v.claims.exp <= now - verifier.leeway { return failure(.expired) }
        case .failed(let f, _)?:
            return failure(f)
        case nil:
            switch verifier.verify(token, now: now) {
            case .success(let v):
                metrics.tokenValidation("ok")
                verified = v
                cache.store(digest, .verified(v), now: now)
                recordObserved(v.claims)
            case .failure(let f):
                // Expired tokens stay expired; other failures are cached briefly against replay floods.
                cache.store(digest, .failed(f, until: f == .expired ? Int64.max : now + 60), now: now)
                return failure(f)
            }
        }
        let claims = verified.claims
        if state.isRevoked(claims.jti) {
            metrics.tokenValidation("token_revoked")
            metrics.securityEvent("revoked_use")
            logger.warning("revoked token used", metadata: ["agent_id": "\(claims.sub)", "token_id": "\(claims.jti)"])
            return .failure(GatewayError(.tokenRevoked, "this token has been revoked"))
        }
        switch state.status(of: claims.sub) {
        case .disabled?:
            metrics.tokenValidation("agent_disabled")
            return .failure(GatewayError(.agentDisabled, "the agent is disabled"))
        case nil where settings.requireRegisteredAgents:
            metrics.tokenValidation("agent_unknown")
            return .failure(GatewayError(.agentUnknown, "the token's agent is not registered with this sidecar fleet"))
        default: break
        }
        if let presented = presentedAgentID, presented != claims.sub {
            return provenanceMismatch(claims, reason: "X-Agent-Id does not match the token's agent")
        }
        if let bound = claims.sidecars, !bound.contains(settings.sidecarID) {
            return provenanceMismatch(claims, reason: "the token is bound to other sidecars")
        }
        return .success(
            AgentIdentity(
                agentID: claims.sub, role: claims.role, tokenID: claims.jti, scopes: claims.scopes.map(Set.init),
                issuedAt: claims.iat, expiresAt: claims.exp, run: claims.run))
    }

    private func failure(_ f: TokenFailure) -> Result<AgentIdentity, GatewayError> {
        metrics.tokenValidation(f.rawValue)
        switch f {
        case .malformed:
            return .failure(GatewayError(.tokenMalformed, "the token is not a compact JWE"))
        case .invalid:
            metrics.securityEvent("forgery")
            return .failure(GatewayError(.tokenInvalid, "the token was not issued for this fleet or has been tampered with"))
        case .expired:
            metrics.tokenExpired()
            return .failure(GatewayError(.tokenExpired, "the token has expired; request a new one"))
        }
    }

    private func provenanceMismatch(_ claims: TokenClaims, reason: String) -> Result<AgentIdentity, GatewayError> {
        metrics.tokenValidation("provenance_mismatch")
        metrics.securityEvent("provenance_mismatch")
        logger.warning("provenance mismatch", metadata: ["agent_id": "\(claims.sub)", "token_id": "\(claims.jti)", "reason": "\(reason)"])
        return .failure(GatewayError(.provenanceMismatch, reason))
    }

    /// Tokens minted elsewhere (the CLI) become revocable by id once this fleet has seen them.
    private func recordObserved(_ claims: TokenClaims) {
        let store = state.store
        let record = TokenRecord(
            jti: claims.jti, agentId: claims.sub, issuedAt: claims.iat, expiresAt: claims.exp, scopes: claims.scopes,
            source: .observed, revokedAt: nil)
        Task { try? await store.recordToken(record) }
    }

    /// A revocation or a disabled agent takes effect at once: the state answers the per-request checks,
    /// and the cache forgets the affected tokens.
    func evict(jti: String? = nil, agent: String? = nil) {
        cache.evict { claims in claims.jti == jti || claims.sub == agent }
    }
}
