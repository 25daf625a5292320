import NIOCore
import NIOHTTP1
import Upstreams

/// The 4Runr compatibility API: `POST /api/proxy-request {tool, action, params}` answered with
/// `{success, data, metadata}`. The call goes through exactly the same stages as the native routes;
/// only the envelope differs. The upstream body is buffered (bounded) to be wrapped.
extension Pipeline {
    func compat(_ request: InboundRequest, record: inout RequestRecord) async throws(GatewayError) -> ProxyResponse {
        if let type = request.head.headers.first(name: "content-type"), !HeaderName.isMediaType(type, "application/json") {
            throw GatewayError(ToolRequestError.unsupportedMediaType("send application/json"))
        }
        let expected = "expected a JSON object {tool, action, params}"
        guard let body = request.body else { throw GatewayError(ToolRequestError.invalidBody(expected)) }
        let json: JSONValue
        // Exact: the params are written out again as the tool's request, so a number a double would
        // change is refused rather than sent as another number.
        do { json = try JSONValue.parseStrictExact(body.readableBytesView) } catch { throw GatewayError(ToolRequestError.body(error, expected: expected)) }
        guard case .object = json else { throw GatewayError(ToolRequestError.invalidBody(expected)) }
        // The 4Runr SDKs send the token in the body; headers work too.
        let token = json["agent_token"]?.stringValue.map { ($0, TokenCarrier.compatBody) }
            ?? TokenExtractor.token(in: request.head.headers, forwardProxy: false)
        let identity = try authenticate(token: token, headers: request.head.headers, record: &record)
        let run = try runID(headers: request.head.headers, identity: identity, record: &record)
        guard let toolName = json["tool"]?.stringValue else { throw GatewayError(ToolRequestError.invalidParameter("tool is required")) }
        guard let tool = Tool(rawValue: toolName) else {
            throw GatewayError(ToolRequestError.unknownAction("unknown tool '\(toolName.prefix(40))'; tools: serpapi, openai, http_fetch, gmail_send"))
        }
        record.tool = tool
        guard let action = json["action"]?.stringValue else { throw GatewayError(ToolRequestError.invalidParameter("action is required")) }
        let params = json["params"] ?? .object([:])
        let adapter = adapters.adapter(for: tool)
        var toolRequest: ToolRequest
        do { toolRequest = try adapter.compatRequest(action: action, params: params) } catch { throw GatewayError(error) }
        // The agent's own tracing headers travel with the call; nothing else from the envelope does.
        for name in ["traceparent", "tracestate"] {
            if let v = request.head.headers.first(name: name) { toolRequest.headers.replaceOrAdd(name: name, value: v) }
        }
        let call: ToolCall
        do { call = try adapter.interpret(toolRequest) } catch { throw GatewayError(error) }
        record.action = call.action
        try checkScope(call, identity: identity)
        let bodyBytes = toolRequest.body?.readableBytes ?? 0
        let prepared = Prepared(
            call: call, identity: identity, evaluated: try evaluate(call, identity: identity, bodyBytes: bodyBytes), bodyBytes: bodyBytes,
            requestID: request.requestID, run: run)
        // The native stages; the answer's body is read here (metered for budgets) and wrapped, and its
        // completion (slot, settlement) runs once it has been read.
        let runCall = makeRunCall(prepared)
        record.runCall = runCall
        let response = try await killable(runCall, record: &record) { (r: inout RequestRecord) throws(GatewayError) in
            try await self.call(prepared, record: &r, runCall: runCall)
        }
        let data: ByteBuffer
        do {
            switch response.body {
            case .buffer(let b): data = b
            case .stream(let s, let limit): data = try await s.collect(upTo: limit)
            }
        } catch {
            await response.completion.run()
            throw GatewayError(HTTPClientTransport.classify(error))
        }
        await response.completion.run()
        record.upstreamDuration = record.upstreamStart.map { MonotonicInstant.now - $0 }
        if runCall?.killed == true { throw GatewayError(.runCancelled, "run \(run ?? "") was cancelled while this call was in flight") }
        let ok = (200..<300).contains(response.status.code)
        let metadata: JSONValue = [
            "tool": .string(tool.rawValue), "action": .string(call.action), "request_id": .string(request.requestID),
            "upstream_status": .number(Double(response.status.code)), "mock": .bool(record.mock),
            "duration_ms": .number(Double((MonotonicInstant.now - record.start).milliseconds)),
        ]
        return ResponseMapper.envelope(success: ok, data: data, metadata: metadata, status: ok ? .ok : response.status, requestID: request.requestID)
    }
}

extension Pipeline {
    /// Runs `body` in a task the run's kill switch can cancel (`runCall`), and cancels it too when this
    /// one is cancelled. Without a run, just runs it.
    func killable(
        _ runCall: RunCall?, record: inout RequestRecord,
        _ body: @escaping @Sendable (inout RequestRecord) async throws(GatewayError) -> ProxyResponse
    ) async throws(GatewayError) -> ProxyResponse {
        guard let runCall else { return try await body(&record) }
        let start = record
        let child = Task { () async -> (Result<ProxyResponse, GatewayError>, RequestRecord) in
            var r = start
            do throws(GatewayError) { return (.success(try await body(&r)), r) } catch { return (.failure(error), r) }
        }
        runCall.onAbort { child.cancel() }
        let (result, after) = await withTaskCancellationHandler { await child.value } onCancel: { child.cancel() }
        record = after
        return try result.get()
    }
}
