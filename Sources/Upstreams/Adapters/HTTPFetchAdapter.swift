import NIOCore
import NIOHTTP1

/// Generic fetch of a web page: `GET` or `HEAD` to any destination policy allows. No credential is
/// brokered, so the agent's own headers (minus hop-by-hop and sidecar-internal ones) pass through.
public struct HTTPFetchAdapter: ToolAdapter {
    public let tool = Tool.httpFetch

    public init() {}

    public func interpret(_ request: ToolRequest) throws(ToolRequestError) -> ToolCall {
        guard let target = request.target else { throw .invalidParameter("http_fetch needs a destination URL") }
        let action: String
        switch request.method {
        case .GET: action = "get"
        case .HEAD: action = "head"
        default: throw .unknownAction("http_fetch supports GET and HEAD")
        }
        return ToolCall(
            tool: tool, action: action, request: request,
            parameters: .httpFetch(HTTPFetchParameters(url: target, method: request.method.rawValue)))
    }

    public func compatRequest(action: String, params: JSONValue) throws(ToolRequestError) -> ToolRequest {
        guard action == "get" || action == "head" else { throw .unknownAction("http_fetch actions are get, head") }
        guard let raw = params["url"]?.stringValue else { throw .invalidParameter("params.url is required") }
        let target: TargetURL
        do { target = try TargetURL.parse(raw) } catch { throw .invalidParameter("params.url: \(error.reason)") }
        var headers = HTTPHeaders()
        if let extra = params["headers"]?.objectValue {
            for (name, value) in extra.sorted(by: { $0.key < $1.key }) {
                // Checked as the encoder will (FieldSyntax): an unsendable field is the agent's mistake, a 400.
                guard let v = value.stringValue, FieldSyntax.isToken(name), FieldSyntax.isValue(v) else {
                    throw .invalidParameter("params.headers: names must be tokens, values strings without control characters")
                }
                headers.add(name: name, value: v)
            }
        }
        return ToolRequest(
            method: action == "get" ? .GET : .HEAD, path: target.path, query: QueryString(parsing: target.query),
            headers: headers, target: target)
    }

    public func authorize(_ request: inout UpstreamRequest, with credential: Credential) {}

    public func traits(of call: ToolCall) -> CallTraits {
        CallTraits(idempotent: true, cacheable: call.action == "get", sideEffecting: false)
    }

    public func mockResponse(for call: ToolCall) -> UpstreamResponse {
        guard case .httpFetch(let p) = call.parameters else { return Mock.json(["error": "mock"], status: .badRequest) }
        let html = """
            <!doctype html>
            <html><head><meta charset="utf-8"><title>Mock page for \(p.url.host)</title></head>
            <body><h1>Mock page</h1><p>The agent sidecar answered this fetch in mock mode.</p>
            <p>Page id \(Mock.hex(Mock.hash(p.url.description.utf8)).prefix(8)).</p></body></html>

            """
        let headers = HTTPHeaders([
            ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", String(html.utf8.count)),
            ("Cache-Control", "max-age=60"),
        ])
        let body: UpstreamBody = call.action == "head" ? .empty : .bytes(ByteBuffer(string: html))
        return UpstreamResponse(status: .ok, headers: headers, body: body)
    }
}
