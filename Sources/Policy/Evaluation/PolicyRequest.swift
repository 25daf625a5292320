/// What policy needs to know about one call. Built by the Sidecar from the adapter's typed parameters,
/// so Policy never sees HTTP or the Upstreams module.
public struct PolicyRequest: Sendable, Hashable {
    public var agentID: String
    public var role: String
    /// The token's own scopes (nil = no narrowing).
    public var tokenScopes: Set<String>?
    public var tool: String
    public var action: String
    public var parameters: CallParameters
    public var bodyBytes: Int

    public init(
        agentID: String, role: String, tokenScopes: Set<String>?, tool: String, action: String, parameters: CallParameters,
        bodyBytes: Int
    ) {
        self.agentID = agentID
        self.role = role
        self.tokenScopes = tokenScopes
        self.tool = tool
        self.action = action
        self.parameters = parameters
        self.bodyBytes = bodyBytes
    }

    public var scope: String { "\(tool):\(action)" }
}

/// The guarded parameters of a call, per tool.
public enum CallParameters: Sendable, Hashable {
    case serpapi(engine: String, num: Int?)
    /// `choices`: how many outputs the call asks for (`n`, `best_of`); `maxTokens` already counts them, and a
    /// call without a cap reserves the default once per choice.
    case openai(model: String?, maxTokens: Int?, stream: Bool, estimatedInputTokens: Int, choices: Int = 1)
    case fetch(scheme: String, host: String, port: Int, method: String)
    case gmail(recipientDomains: [String], recipients: Int, subjectBytes: Int, bodyBytes: Int, headerInjection: Bool)
    case none
}
