import NIOCore
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

    init(
        classifier: EntryClassifier, adapters: ToolAdapters, transport: any UpstreamTransport,
        credentials: any CredentialSource, settings: PipelineSettings
    ) {
        self.classifier = classifier
        self.adapters = adapters
        self.transport = transport
        self.credentials = credentials
        self.settings = settings
    }

    func handle(_ request: InboundRequest, record: inout RequestRecord) async -> ProxyResponse {
        do {
            return try await run(request, record: &record)
        } catch {
            record.outcome = error.codeString
            return ResponseMapper.problem(error, requestID: request.requestID, entry: record.entry)
        }
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
            let toolRequest = ToolRequest(
                method: request.head.method, path: path, query: QueryString(parsing: query),
                headers: request.head.headers, body: request.body, target: target)
            let call = try interpret(toolRequest, tool: tool, record: &record)
            let response = try await forward(call, requestID: request.requestID, record: &record)
            return ProxyResponse(
                status: response.status,
                headers: HeaderRules.agentHeaders(from: response.headers, requestID: request.requestID),
                body: response.body.bufferedBytes.map { .buffer($0) }
                    ?? .stream(response.body, limit: settings.maxResponseBodyBytes))
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

    /// Credential, then upstream. Returns the upstream response with its body still streaming.
    func forward(_ call: ToolCall, requestID: String, record: inout RequestRecord) async throws(GatewayError) -> UpstreamResponse {
        let tool = call.tool
        let endpoint = settings.endpoints[tool] ?? ToolEndpoint(baseURL: ToolEndpoint.defaultBaseURL(for: tool))
        let timeout = settings.timeouts[tool] ?? .seconds(30)
        var upstream = UpstreamRequestBuilder.build(
            call: call, endpoint: endpoint, requestID: requestID, deadline: .now() + TimeAmount(timeout))
        let mock = settings.mockTools.contains(tool)
        record.mock = mock
        record.upstreamHost = mock ? nil : upstream.url.host
        if tool.isBrokered {
            let credential = try? await credentials.credential(for: tool)
            if let credential, !credential.isEmpty {
                adapters.adapter(for: tool).authorize(&upstream, with: credential)
            } else if !mock {
                // Never forward a brokered call unauthenticated.
                throw GatewayError.credentialUnavailable(tool.rawValue)
            }
        }
        record.upstreamStart = .now
        let response: UpstreamResponse
        do {
            response = try await transport.send(upstream)
        } catch {
            record.upstreamDuration = ContinuousClock.now - record.upstreamStart!
            throw GatewayError(error)
        }
        record.upstreamStatus = Int(response.status.code)
        if let length = response.headers.first(name: "content-length").flatMap(Int.init), length > settings.maxResponseBodyBytes {
            throw GatewayError(UpstreamError(.responseTooLarge, beforeSend: false, detail: "content-length \(length)"))
        }
        return response
    }
}
