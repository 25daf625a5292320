import NIOCore
import Policy
import NIOHTTP1
import Upstreams

/// A request as the connection hands it to the pipeline: head, buffered body, request id.
///
/// Request bodies are buffered (up to `limits.max_request_body_bytes`) because the parameter guards
/// must read them — an OpenAI model or a Gmail recipient is inside the JSON. Responses stream.
struct InboundRequest: Sendable {
    var head: HTTPRequestHead
    var body: ByteBuffer?
    var requestID: String
}

/// Per-tool settings the pipeline needs, compiled once from the configuration.
struct PipelineSettings: Sendable {
    var endpoints: [Tool: ToolEndpoint]
    var timeouts: [Tool: Duration]
    var mockTools: Set<Tool>
    var maxResponseBodyBytes: Int

    init(config: SidecarConfig) {
        endpoints = config.tools.mapValues { ToolEndpoint(baseURL: $0.baseURL, upgradeFetchToHTTPS: $0.upgradeToHTTPS) }
        timeouts = config.tools.mapValues(\.timeout)
        mockTools = config.mockTools
        maxResponseBodyBytes = config.limits.maxResponseBodyBytes
    }
}

/// The life of a request, in the documented stage order (README "Life of a request"):
///
///     classify ─► interpret (action, parameters) ─► credential ─► upstream ─► respond
///
/// Authentication and policy stages plug in between interpret and credential. Each stage either hands
/// a value to the next or ends the request with a `GatewayError`, which `ResponseMapper` turns into
/// the response in one place.
final class Pipeline: Sendable {
    let classifier: EntryClassifier
    let adapters: ToolAdapters
    let transport: any UpstreamTransport
    let credentials: any CredentialSource
    let settings: PipelineSettings
    /// nil when authentication is turned off (every call runs as the anonymous agent).
    let authenticator: Authenticator?
    let metrics: GatewayMetrics?
    /// nil in tests that exercise only the data plane.
    let policy: PolicyRuntime?
    let limits: (any LimitStore)?
    /// Cache, breakers, bulkheads and retries around the transport; nil = the bare transport (tests).
    let resilience: ResilientCaller?
    /// SSRF defence for http_fetch: IP-literal destinations are checked here (names by the transport).
    let egress: EgressGuard?

    init(
        classifier: EntryClassifier, adapters: ToolAdapters, transport: any UpstreamTransport,
        credentials: any CredentialSource, settings: PipelineSettings, authenticator: Authenticator? = nil,
        metrics: GatewayMetrics? = nil, policy: PolicyRuntime? = nil, limits: (any LimitStore)? = nil,
        resilience: ResilientCaller? = nil, egress: EgressGuard? = nil
    ) {
        self.policy = policy
        self.limits = limits
        self.resilience = resilience
        self.egress = egress
        self.classifier = classifier
        self.adapters = adapters
        self.transport = transport
        self.credentials = credentials
        self.settings = settings
        self.authenticator = authenticator
        self.metrics = metrics
    }

    func handle(_ request: InboundRequest, record: inout RequestRecord) async -> ProxyResponse {
        var response: ProxyResponse
        do {
            response = try await run(request, record: &record)
        } catch {
            record.outcome = error.codeString
            response = ResponseMapper.problem(error.forEntry(record.entry), requestID: request.requestID, entry: record.entry)
        }
        if let expiresAt = record.tokenExpiresAt {
            response.headers.add(name: "X-Token-Rotation-Recommended", value: "true")
            response.headers.add(name: "X-Token-Expires-At", value: RFC3339.format(expiresAt))
        }
        return response
    }

    /// The authenticate stage. Returns the identity, or `.anonymous` when authentication is off.
    func authenticate(token: (String, TokenCarrier)?, headers: HTTPHeaders, record: inout RequestRecord) throws(GatewayError) -> AgentIdentity {
        guard let authenticator else { return .anonymous }
        switch authenticator.authenticate(token: token?.0, presentedAgentID: headers.first(name: "x-agent-id")) {
        case .success(let identity):
            record.agentID = identity.agentID
            record.tokenID = identity.tokenID
            if identity.rotationRecommended(now: authenticator.now()) { record.tokenExpiresAt = identity.expiresAt }
            return identity
        case .failure(let error):
            throw error
        }
    }

    /// The token's own scopes narrow what the agent may call.
    func checkScope(_ call: ToolCall, identity: AgentIdentity) throws(GatewayError) {
        guard identity.tokenAllows(call.scope) else {
            metrics?.securityEvent("scope_violation")
            throw GatewayError(.scopeDenied, "the token does not allow \(call.scope)")
        }
    }

    /// Removes whatever carried the token, so it never goes upstream.
    static func removingCarrier(_ carrier: TokenCarrier?, from headers: HTTPHeaders) -> HTTPHeaders {
        var headers = headers
        switch carrier {
        case .authorization?: headers.remove(name: "authorization")
        case .proxyAuthorization?: headers.remove(name: "proxy-authorization")
        case .agentTokenHeader?: headers.remove(name: "x-agent-token")
        case .compatBody?, nil: break
        }
        return headers
    }

    private func run(_ request: InboundRequest, record: inout RequestRecord) async throws(GatewayError) -> ProxyResponse {
        let classification: Classification
        switch classifier.classify(method: request.head.method, uri: request.head.uri) {
        case .success(let c): classification = c
        case .failure(let e): throw GatewayError(e)
        }
        switch classification {
        case .connect:
            throw GatewayError.connectRefused()
        case .compat:
            record.entry = .compat
            return try await compat(request, record: &record)
        case .tool(let entry, let tool, let path, let query, let target):
            record.entry = entry
            record.tool = tool
            let token = TokenExtractor.token(in: request.head.headers, forwardProxy: entry == .forward)
            let identity = try authenticate(token: token, headers: request.head.headers, record: &record)
            let toolRequest = ToolRequest(
                method: request.head.method, path: path, query: QueryString(parsing: query),
                headers: Self.removingCarrier(token?.1, from: request.head.headers), body: request.body, target: target)
            var call = try interpret(toolRequest, tool: tool, record: &record)
            try checkScope(call, identity: identity)
            let (admitted, egressAllow) = try await admit(
                call, identity: identity, bodyBytes: request.body?.readableBytes ?? 0, requestID: request.requestID, record: &record)
            if admitted?.meter != nil { call = Self.requestingUsage(call) }
            var response: UpstreamResponse
            let release: @Sendable () -> Void
            do {
                (response, release) = try await forward(call, requestID: request.requestID, egressAllow: egressAllow, record: &record)
            } catch {
                await settle(admitted, refund: error.nothingSent, upstreamStatus: nil)
                throw error
            }
            if let meter = admitted?.meter {
                response.body = response.body.observed(by: { meter.observe($0) }, finished: { meter.finish() })
            }
            let status = Int(response.status.code)
            let body: ProxyResponse.Body
            if let buffered = response.body.bufferedBytes {
                body = .buffer(buffered)
            } else {
                body = .stream(response.body, limit: settings.maxResponseBodyBytes)
            }
            let completion: @Sendable () async -> Void = {
                release()
                await self.settle(admitted, refund: false, upstreamStatus: status)
            }
            return ProxyResponse(
                status: response.status, headers: HeaderRules.agentHeaders(from: response.headers, requestID: request.requestID),
                body: body, completion: completion)
        }
    }

    private func interpret(_ request: ToolRequest, tool: Tool, record: inout RequestRecord) throws(GatewayError) -> ToolCall {
        do {
            let call = try adapters.adapter(for: tool).interpret(request)
            record.action = call.action
            return call
        } catch {
            throw GatewayError(error)
        }
    }

    /// Credential, then upstream (through cache, breaker, bulkhead and retries). Returns the response with
    /// its body still streaming, and the release to call once it has been consumed.
    func forward(_ call: ToolCall, requestID: String, egressAllow: [CIDR] = [], record: inout RequestRecord) async throws(GatewayError)
        -> (UpstreamResponse, @Sendable () -> Void)
    {
        let tool = call.tool
        let endpoint = settings.endpoints[tool] ?? ToolEndpoint(baseURL: ToolEndpoint.defaultBaseURL(for: tool))
        var timeout = settings.timeouts[tool] ?? .seconds(30)
        // The agent may narrow (never widen) the deadline: X-Request-Timeout: 2.5 or 500ms.
        if let raw = call.request.headers.first(name: "x-request-timeout"),
            let asked = Double(raw).map({ Duration.milliseconds(Int64($0 * 1000)) }) ?? DocumentReader.parseDuration(raw), asked > .zero
        {
            timeout = min(timeout, asked)
        }
        var upstream = UpstreamRequestBuilder.build(
            call: call, endpoint: endpoint, requestID: requestID, deadline: .now() + TimeAmount(timeout))
        upstream.egressAllow = egressAllow
        let mock = settings.mockTools.contains(tool)
        record.mock = mock
        record.upstreamHost = mock ? nil : upstream.url.host
        if tool == .httpFetch, let egress, let ip = IPAddress.parse(upstream.url.host), let why = egress.refusal(ip, port: upstream.url.port, granted: egressAllow) {
            var e = GatewayError(.egressDenied, "the destination is not allowed for http_fetch (\(why))")
            e.nothingSent = true
            throw e
        }
        var scrubber = SecretScrubber([])
        if tool.isBrokered {
            // Compressed bodies could hide an echoed credential from the scrubber.
            upstream.headers.replaceOrAdd(name: "Accept-Encoding", value: "identity")
            let credential: Credential?
            do { credential = try await credentials.credential(for: tool) } catch {
                if !mock {
                    var e = GatewayError(.credentialUnavailable, "the \(tool.rawValue) credential could not be obtained")
                    e.nothingSent = true
                    throw e
                }
                credential = nil
            }
            if let credential, !credential.isEmpty {
                adapters.adapter(for: tool).authorize(&upstream, with: credential)
                scrubber = SecretScrubber(credentials: [credential])
            } else if !mock {
                // Never forward a brokered call unauthenticated.
                throw GatewayError.credentialUnavailable(tool.rawValue)
            }
        }
        record.upstreamStart = .now
        var response: UpstreamResponse
        var release: @Sendable () -> Void = {}
        if let resilience {
            let traits = adapters.adapter(for: tool).traits(of: call)
            do {
                let result = try await resilience.call(upstream, traits: traits, cacheKey: cacheKey(call, upstream), record: &record)
                response = result.response
                release = result.release
            } catch {
                record.upstreamDuration = ContinuousClock.now - record.upstreamStart!
                throw error
            }
        } else {
            do {
                response = try await transport.send(upstream)
            } catch {
                record.upstreamDuration = ContinuousClock.now - record.upstreamStart!
                throw GatewayError(error)
            }
        }
        record.upstreamStatus = Int(response.status.code)
        record.chaos = response.headers.first(name: "x-chaos-injected")
        if let length = response.headers.first(name: "content-length").flatMap(Int.init), length > settings.maxResponseBodyBytes {
            response.body.cancel()
            release()
            throw GatewayError(UpstreamError(.responseTooLarge, beforeSend: false, detail: "content-length \(length)"))
        }
        if !scrubber.isEmpty {
            response.headers = scrubber.scrub(response.headers)
            response.body = response.body.scrubbed(by: scrubber)
            // Replacing a secret changes the length; the framing is recomputed for what is sent.
            response.headers.remove(name: "content-length")
        }
        return (response, release)
    }

    /// The cache key of a cacheable call, or nil (DESIGN.md §8: serpapi searches; http_fetch GET without
    /// the agent's own credentials; openai only when enabled, non-streaming, temperature 0; never Gmail).
    func cacheKey(_ call: ToolCall, _ upstream: UpstreamRequest) -> String? {
        guard let resilience, resilience.settings.tools[call.tool]!.cacheTTL > .zero else { return nil }
        let agentDirectives = call.request.headers["cache-control"].joined(separator: ",").lowercased()
        if agentDirectives.contains("no-cache") || agentDirectives.contains("no-store") { return nil }
        switch call.parameters {
        case .serpapi:
            return ResponseCache.serpAPIKey(call)
        case .httpFetch(let p):
            guard call.action == "get", !call.request.headers.contains(name: "authorization"), !call.request.headers.contains(name: "cookie") else {
                return nil
            }
            return ResponseCache.key(["http_fetch", p.url.description])
        case .openai(let p):
            guard resilience.settings.openAICache, !p.stream, p.temperature == 0, let body = call.request.body,
                let json = JSONValue.parse(body.readableBytesView)
            else { return nil }
            return ResponseCache.key(["openai", call.request.path, json.serialized])
        case .gmail:
            return nil
        }
    }
}
