import Upstreams

/// Stored OpenAI responses (`ResponseOwners`): the ids a `POST /v1/responses` answer hands an agent are
/// recorded as that agent's, and a call that names a stored response — retrieving, cancelling or
/// deleting it, reading its input items, or continuing from it (`previous_response_id`) — goes upstream
/// only if its agent was handed that id. Any other is answered 404 `response_not_found`, as OpenAI
/// answers an id it does not know: whether another agent's response exists is not told either.
extension Pipeline {
    /// The stored response a call names, if any.
    static func storedResponse(_ call: ToolCall) -> String? {
        guard case .openai(let p) = call.parameters else { return nil }
        return p.storedResponse
    }

    /// The check before the call is admitted (from `call`, which every call naming a response goes
    /// through: `isGuarded`).
    func checkStoredResponse(_ prepared: Prepared) async throws(GatewayError) {
        guard let id = Self.storedResponse(prepared.call) else { return }
        let owned: Bool
        do { owned = try await owners?.owns(id, agent: prepared.identity.agentID) ?? false } catch {
            throw GatewayError(.stateUnavailable, "the owners of stored responses could not be read; try again")
        }
        guard owned else {
            metrics?.securityEvent("response_not_owned")
            var e = GatewayError(.responseNotFound, "no stored response \(id) was created by this agent through the sidecar")
            e.extensions["response_id"] = .string(id)
            throw e
        }
    }

    /// A successful answer to `POST /v1/responses`: the id it carries is recorded as the agent's before
    /// the agent reads it (`ResponseIDReader`).
    func claimResponseID(_ response: inout UpstreamResponse, call: ToolCall, record: RequestRecord) {
        guard let owners, call.tool == .openai, call.action == "responses", (200..<300).contains(response.status.code) else { return }
        let agent = record.agentID ?? AgentIdentity.anonymous.agentID
        let reader = ResponseIDReader { id in owners.claim(id, agent: agent) }
        response.body = response.body.observed(by: { reader.observe($0) }, finished: { reader.finish() })
    }
}
