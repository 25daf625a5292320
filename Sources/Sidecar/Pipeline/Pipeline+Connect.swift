import Foundation
import NIOHTTP1
import Policy
import Upstreams

/// A `CONNECT` the sidecar accepted (README "HTTPS through the proxy"): where it goes, on whose behalf,
/// and how its bytes are served.
struct TunnelPlan: Sendable {
    var target: ConnectTarget
    /// The tool its requests belong to: by host (the tools' `hosts` lists; any other host is http_fetch).
    var tool: Tool
    /// The token the tunnel was opened with: every request read inside is authenticated with it again,
    /// so a revocation or an expiry applies to the next request, not the next tunnel. nil with
    /// authentication off.
    var token: TunnelToken?
    var passthrough: Bool
    /// Ranges the agent's policy grants http_fetch (the destination check honours them).
    var egressAllow: [CIDR]
    /// Addresses checked for a name http_fetch would reach (filled in before the `200`).
    var addresses: [IPAddress] = []
}

/// An agent token held for the life of a tunnel. It never prints.
struct TunnelToken: Sendable, CustomStringConvertible {
    let value: String
    var description: String { "TunnelToken(<redacted>)" }
}

extension Pipeline {
    /// The checks a `CONNECT` passes before anything else happens, in this order: interception on →
    /// authority-form target → agent token (407 without a valid one) → port allowed → the tool by host
    /// and the agent's policy for it (some action of the tool must pass scope and guards; http_fetch's
    /// host, scheme and port guards see `https://host:port`) → the egress guard for an IP literal. A name
    /// that will be connected to is resolved next (`checkTunnelDestination`), still before the `200`.
    func planTunnel(_ head: HTTPRequestHead, record: inout RequestRecord) throws(GatewayError) -> TunnelPlan {
        record.entry = .tunnel
        guard let interception else { throw GatewayError.connectRefused() }
        let target: ConnectTarget
        do { target = try ConnectTarget.parse(head.uri) } catch { throw GatewayError.invalidTarget(error.reason) }
        if let problem = SingleValuedFields.problem(in: head.headers, entry: .tunnel) ?? HostField.problem(in: head) { throw problem }
        let token = TokenExtractor.token(in: head.headers, forwardProxy: true)
        let identity = try authenticate(token: token, headers: head.headers, record: &record)
        guard interception.settings.allowedPorts.contains(target.port) else {
            let ports = interception.settings.allowedPorts.sorted().map(String.init).joined(separator: ", ")
            throw GatewayError(.connectPortDenied, "tunnels may be opened to port \(ports) only")
        }
        let tool = classifier.tool(forHost: target.host)
        record.tool = tool
        let passthrough = interception.isPassthrough(target.host)
        let egressAllow = try checkTunnelPolicy(tool: tool, target: target, identity: identity)
        if tool == .httpFetch || passthrough, let ip = target.ip, let egress,
            let why = egress.refusal(ip, port: target.port, granted: egressAllow)
        {
            throw GatewayError(.egressDenied, "the tunnel's destination is not allowed (\(why))")
        }
        return TunnelPlan(
            target: target, tool: tool, token: token.map { TunnelToken(value: $0.0) }, passthrough: passthrough, egressAllow: egressAllow,
            addresses: target.ip.map { [$0] } ?? [])
    }

    /// Some action of `tool` must be allowed: the token's own scopes, then (with a policy) the role's
    /// allow list and the guards that can be judged from the destination alone. Returns the internal
    /// ranges the policy grants http_fetch calls there.
    func checkTunnelPolicy(tool: Tool, target: ConnectTarget, identity: AgentIdentity) throws(GatewayError) -> [CIDR] {
        guard tool.actions.contains(where: { identity.tokenAllows("\(tool.rawValue):\($0)") }) else {
            metrics?.securityEvent("scope_violation")
            throw GatewayError(.scopeDenied, "the token does not allow \(tool.rawValue)")
        }
        guard let policy, limits != nil else { return [] }
        var first: PolicyDenial?
        for action in tool.actions {
            let parameters: CallParameters =
                tool == .httpFetch ? .fetch(scheme: "https", host: target.host, port: target.port, method: action.uppercased()) : .none
            let request = PolicyRequest(
                agentID: identity.agentID, role: identity.role, tokenScopes: identity.scopes, tool: tool.rawValue, action: action,
                parameters: parameters, bodyBytes: 0)
            let evaluation = policy.evaluator.evaluate(request, at: Date())
            guard let denial = evaluation.denial else { return evaluation.egressAllow.compactMap(CIDR.init) }
            if first == nil { first = denial }
        }
        metrics?.policyDenied(first!.kind.rawValue)
        throw Self.error(for: first!)
    }

    /// Whether the destination must be resolved and every address checked before the tunnel opens: a
    /// name that a live http_fetch or a pass-through relay will connect to. A tool's host is never
    /// connected to (its calls go to the tool's `base_url`), and a mocked http_fetch connects nowhere —
    /// as on the forward proxy, where a mocked fetch of a name is answered without a lookup.
    func needsResolution(_ plan: TunnelPlan) -> Bool {
        plan.target.ip == nil && (plan.passthrough || (plan.tool == .httpFetch && !settings.mockTools.contains(.httpFetch)))
    }

    /// Resolves a tunnel's host and checks every address it has (the check http_fetch makes before each
    /// connection), so a name that leads inside — `localhost`, a metadata alias — is refused before the
    /// `200`, not at the first request.
    func checkTunnelDestination(_ plan: TunnelPlan) async -> Result<TunnelPlan, GatewayError> {
        guard needsResolution(plan), let interception else { return .success(plan) }
        let url = TargetURL(scheme: "https", host: plan.target.host, port: plan.target.port)
        do {
            var checked = plan
            checked.addresses = try await interception.destinations.checkedAddresses(for: url, granted: plan.egressAllow)
            return .success(checked)
        } catch {
            return .failure(GatewayError(error))
        }
    }
}
