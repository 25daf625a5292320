import Foundation
import Hummingbird
import NIOCore
import Policy
import Upstreams

/// The control API on the admin port: agents, tokens, revocations, credential reloads. Every route here
/// requires the admin token. Bad input: malformed JSON 400, wrong content type 415, schema violations 422
/// with field details, unknown ids 404, bodies over `admin.max_body_bytes` 413.
struct ControlAPI: Sendable {
    let identity: IdentityService
    let credentials: VaultCredentialSource?
    let maxBodyBytes: Int
    let knownScopes: Set<String>
    let policy: PolicyRuntime?
    /// For tokens bound to a run (`run_id`): the run must exist and be the agent's.
    let runs: RunService?

    init(identity: IdentityService, credentials: VaultCredentialSource?, maxBodyBytes: Int, policy: PolicyRuntime? = nil, runs: RunService? = nil) {
        self.runs = runs
        self.identity = identity
        self.credentials = credentials
        self.maxBodyBytes = maxBodyBytes
        self.policy = policy
        var scopes = Set<String>()
        for tool in Tool.allCases {
            scopes.insert("\(tool.rawValue):*")
            for action in tool.actions { scopes.insert("\(tool.rawValue):\(action)") }
        }
        knownScopes = scopes
    }

    func register(on group: RouterGroup<AdminContext>) {
        group.post("agents") { request, _ in await self.guarded { try await self.createAgent(request) } }
        group.post("create-agent") { request, _ in await self.guarded { try await self.createAgent(request) } }
        group.get("agents") { request, _ in await self.guarded { try await self.listAgents(request) } }
        group.get("agents/:id") { _, context in await self.guarded { try await self.getAgent(context.parameters.get("id") ?? "") } }
        group.post("agents/:id/disable") { _, context in
            await self.guarded { try await self.setStatus(context.parameters.get("id") ?? "", .disabled) }
        }
        group.post("agents/:id/enable") { _, context in
            await self.guarded { try await self.setStatus(context.parameters.get("id") ?? "", .active) }
        }
        group.post("agents/:id/tokens") { request, context in
            await self.guarded { try await self.issueToken(request, agentID: context.parameters.get("id") ?? "", compat: false) }
        }
        group.get("agents/:id/tokens") { _, context in await self.guarded { try await self.listTokens(context.parameters.get("id") ?? "") } }
        group.post("generate-token") { request, _ in await self.guarded { try await self.issueToken(request, agentID: nil, compat: true) } }
        group.post("tokens/:id/revoke") { _, context in await self.guarded { try await self.revoke(context.parameters.get("id") ?? "") } }
        group.post("credentials/reload") { _, _ in self.reloadCredentials() }
        group.get("policy") { _, _ in self.policyInfo() }
        group.post("policy/reload") { _, _ in self.reloadPolicy() }
        group.put("policy") { request, _ in try await self.replacePolicy(request) }
    }

    /// A store that cannot be reached (Redis down) is a 503 problem, never a bare 500.
    func guarded(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch {
            var e = GatewayError(.stateUnavailable, "the identity store is unavailable; try again shortly")
            e.headers = [("Retry-After", "1")]
            return AdminProblem.response(e)
        }
    }

    // MARK: Policy

    func policyInfo() -> Response {
        guard let policy else { return AdminProblem.response(Self.unknown("policy")) }
        let p = policy.policy
        return Self.json(
            ["version": .number(Double(p.version)), "hash": .string(p.hash), "roles": .array(p.roleNames.map { .string($0) }),
             "source": .string(policy.file ?? "embedded")], status: .ok)
    }

    func reloadPolicy() -> Response {
        guard let policy else { return AdminProblem.response(Self.unknown("policy")) }
        do {
            try policy.reload(reason: "api")
            return policyInfo()
        } catch {
            return AdminProblem.response(Self.invalidPolicy(error))
        }
    }

    func replacePolicy(_ request: Request) async throws -> Response {
        guard let policy else { return AdminProblem.response(Self.unknown("policy")) }
        let body: ByteBuffer
        switch await AdminBody.collect(request, limit: maxBodyBytes) {
        case .success(let b): body = b
        case .failure(let e): return AdminProblem.response(e)
        }
        do {
            try policy.install(String(buffer: body), reason: "api PUT", persist: true)
            return policyInfo()
        } catch {
            return AdminProblem.response(Self.invalidPolicy(error))
        }
    }

    static func invalidPolicy(_ error: DocumentError) -> GatewayError {
        var e = GatewayError(.validationFailed, "the policy document is invalid; the previous policy stays active")
        e.extensions["errors"] = [["field": .string(error.path), "message": .string(error.message)]]
        return e
    }

    // MARK: Handlers

    func createAgent(_ request: Request) async throws -> Response {
        let body: [String: JSONValue]
        switch await jsonObject(request) {
        case .success(let b): body = b
        case .failure(let e): return AdminProblem.response(e)
        }
        var v = Validation()
        let name = v.string(body, "name", pattern: nil, maxLength: 128)
        let role = v.string(body, "role", pattern: "^[a-z0-9_-]{1,64}$", maxLength: 64)
        let createdBy = v.string(body, "created_by", pattern: nil, maxLength: 128)
        if let role, let policy, policy.policy.roles[role] == nil {
            v.fail("role", "is not a role of the active policy")
        }
        if let e = v.error { return AdminProblem.response(e) }
        let agent = try await identity.createAgent(name: name!, role: role!, createdBy: createdBy!)
        return Self.json(Self.agentJSON(agent), status: .created)
    }

    func listAgents(_ request: Request) async throws -> Response {
        let role = request.uri.queryParameters["role"].map(String.init)
        var status: AgentRecord.Status?
        if let s = request.uri.queryParameters["status"] {
            guard let parsed = AgentRecord.Status(rawValue: String(s)) else {
                var e = GatewayError(.validationFailed, "status must be active or disabled")
                e.extensions["errors"] = [["field": "status", "message": "must be active or disabled"]]
                return AdminProblem.response(e)
            }
            status = parsed
        }
        let agents = try await identity.store.agents(role: role, status: status)
        return Self.json(["agents": .array(agents.map(Self.agentJSON))], status: .ok)
    }

    func getAgent(_ id: String) async throws -> Response {
        guard let agent = try await identity.store.agent(id: id) else { return AdminProblem.response(Self.unknown("agent")) }
        return Self.json(Self.agentJSON(agent), status: .ok)
    }

    func setStatus(_ id: String, _ status: AgentRecord.Status) async throws -> Response {
        guard let agent = try await identity.setStatus(agentID: id, status) else { return AdminProblem.response(Self.unknown("agent")) }
        return Self.json(Self.agentJSON(agent), status: .ok)
    }

    func issueToken(_ request: Request, agentID pathID: String?, compat: Bool) async throws -> Response {
        let body: [String: JSONValue]
        switch await jsonObject(request, allowEmpty: !compat) {
        case .success(let b): body = b
        case .failure(let e): return AdminProblem.response(e)
        }
        var v = Validation()
        let agentID = pathID ?? v.string(body, "agent_id", pattern: nil, maxLength: 128)
        var ttl: Duration?
        switch body["ttl"] {
        case nil, .null?: break
        case .string(let s)?:
            if let d = DocumentReader.parseDuration(s), d > .zero { ttl = d } else { v.fail("ttl", "must be a duration like 15m or a number of seconds") }
        // Clamped before the conversion: 1e300 (or 1e400, read as infinity) is "too long", not a trap.
        case .number(let n)? where n > 0: ttl = .seconds(Int64(min(n, 1e15)))
        default: v.fail("ttl", "must be a duration like 15m or a number of seconds")
        }
        if let ttl, ttl > identity.settings.maxTTL {
            v.fail("ttl", "must not exceed the configured maximum of \(identity.settings.maxTTL.components.seconds)s")
        }
        // 4Runr clients call the same list `permissions` or `tools`.
        let scopeKey = ["scopes", "permissions", "tools"].first { body[$0] != nil && body[$0] != .null }
        var scopes: [String]?
        if let scopeKey {
            if let list = body[scopeKey]?.arrayValue, list.allSatisfy({ $0.stringValue != nil }) {
                let values = list.compactMap(\.stringValue)
                let unknown = values.filter { !knownScopes.contains($0) }
                if unknown.isEmpty, !values.isEmpty { scopes = values } else {
                    v.fail(scopeKey, "entries must be tool:action or tool:* for known tools and actions")
                }
            } else {
                v.fail(scopeKey, "must be a list of tool:action strings")
            }
        }
        var run: String?
        switch body["run_id"] {
        case nil, .null?: break
        case .string(let id)? where Run.isValidID(id): run = id
        default: v.fail("run_id", "must be a run id (run_…)")
        }
        if let e = v.error { return AdminProblem.response(e) }
        guard let agentID, let agent = try await identity.store.agent(id: agentID) else {
            return AdminProblem.response(Self.unknown("agent"))
        }
        if let run, let runs {
            guard let found = try await runs.store.run(run), found.agent == agent.id else {
                var e = GatewayError(.validationFailed, "the token's run must be one of the agent's runs")
                e.extensions["errors"] = [["field": "run_id", "message": "no such run of this agent"]]
                return AdminProblem.response(e)
            }
        }
        guard agent.status == .active else {
            var e = GatewayError(.validationFailed, "the agent is disabled")
            e.extensions["errors"] = [["field": "agent_id", "message": "agent is disabled"]]
            return AdminProblem.response(e)
        }
        let issued: IdentityService.IssuedToken
        do {
            issued = try await identity.issueToken(for: agent, ttl: ttl, scopes: scopes, run: run)
        } catch IdentityService.IssueError.mintingDisabled {
            // The operator asked the wrong sidecar (a 4xx: nothing here is broken or will recover by retrying).
            return AdminProblem.response(GatewayError(.mintingDisabled, "this sidecar holds no issuer signing key (authentication is off, or it is not the fleet's issuer); mint tokens with `sidecar token issue` on the issuer host"))
        }
        var json: [String: JSONValue] = [
            "token": .string(issued.token), "token_id": .string(issued.record.jti), "agent_id": .string(agent.id),
            "expires_at": .string(RFC3339.format(issued.record.expiresAt)),
        ]
        if let scopes { json["scopes"] = .array(scopes.map { .string($0) }) }
        if let run { json["run_id"] = .string(run) }
        if compat { json["agent_token"] = .string(issued.token) }
        return Self.json(.object(json), status: .created)
    }

    func listTokens(_ agentID: String) async throws -> Response {
        guard try await identity.store.agent(id: agentID) != nil else { return AdminProblem.response(Self.unknown("agent")) }
        let tokens = try await identity.store.tokens(agentId: agentID)
        return Self.json(["tokens": .array(tokens.map(Self.tokenJSON))], status: .ok)
    }

    func revoke(_ tokenID: String) async throws -> Response {
        guard let record = try await identity.revoke(tokenID: tokenID) else { return AdminProblem.response(Self.unknown("token")) }
        return Self.json(Self.tokenJSON(record), status: .ok)
    }

    func reloadCredentials() -> Response {
        guard let credentials else { return Self.json(["reloaded": false, "versions": [:]], status: .ok) }
        do {
            let versions = try credentials.reload()
            return Self.json(
                ["reloaded": true, "versions": .object(Dictionary(uniqueKeysWithValues: versions.map { ($0.key.rawValue, JSONValue.number(Double($0.value))) }))],
                status: .ok)
        } catch {
            var e = GatewayError(.validationFailed, "the vault could not be reloaded; the previous credentials stay active")
            e.extensions["errors"] = [["field": "vault", "message": .string("\(error)")]]
            return AdminProblem.response(e)
        }
    }

    // MARK: Helpers

    /// The request body as a JSON object, or the right problem: 415, 413, 400.
    func jsonObject(_ request: Request, allowEmpty: Bool = false) async -> Result<[String: JSONValue], GatewayError> {
        await AdminBody.object(request, limit: maxBodyBytes, allowEmpty: allowEmpty)
    }

    static func unknown(_ what: String) -> GatewayError { GatewayError(.notFound, "no such \(what)") }

    static func agentJSON(_ a: AgentRecord) -> JSONValue {
        [
            "agent_id": .string(a.id), "name": .string(a.name), "role": .string(a.role), "status": .string(a.status.rawValue),
            "created_by": .string(a.createdBy), "created_at": .string(RFC3339.format(a.createdAt)),
        ]
    }

    static func tokenJSON(_ t: TokenRecord) -> JSONValue {
        var o: [String: JSONValue] = [
            "token_id": .string(t.jti), "agent_id": .string(t.agentId), "issued_at": .string(RFC3339.format(t.issuedAt)),
            "expires_at": .string(RFC3339.format(t.expiresAt)), "source": .string(t.source.rawValue),
            "revoked": .bool(t.revokedAt != nil),
        ]
        if let s = t.scopes { o["scopes"] = .array(s.map { .string($0) }) }
        if let r = t.revokedAt { o["revoked_at"] = .string(RFC3339.format(r)) }
        return .object(o)
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status) -> Response {
        AdminRoutes.json(value, status: status)
    }
}

/// Collects field errors of a request body into one 422 problem.
struct Validation {
    private var errors: [JSONValue] = []

    mutating func fail(_ field: String, _ message: String) {
        errors.append(["field": .string(field), "message": .string(message)])
    }

    /// A required string field, optionally matching a pattern.
    mutating func string(_ body: [String: JSONValue], _ field: String, pattern: String?, maxLength: Int) -> String? {
        guard let value = body[field] else {
            fail(field, "is required")
            return nil
        }
        guard let s = value.stringValue, !s.trimmingCharacters(in: .whitespaces).isEmpty else {
            fail(field, "must be a non-empty string")
            return nil
        }
        guard s.count <= maxLength else {
            fail(field, "must be at most \(maxLength) characters")
            return nil
        }
        if let pattern, s.range(of: pattern, options: .regularExpression) == nil {
            fail(field, "must match \(pattern)")
            return nil
        }
        return s
    }

    var error: GatewayError? {
        guard !errors.isEmpty else { return nil }
        var e = GatewayError(.validationFailed, "the request is not valid; see errors")
        e.extensions["errors"] = .array(errors)
        return e
    }
}
