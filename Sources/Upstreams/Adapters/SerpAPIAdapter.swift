import NIOCore
import NIOHTTP1

/// SerpAPI: `GET /search` (or `/search.json`). The key travels as the `api_key` query parameter, so an
/// agent-supplied `api_key` is removed here and the real one appended by `authorize`.
public struct SerpAPIAdapter: ToolAdapter {
    public let tool = Tool.serpapi

    public init() {}

    public func interpret(_ request: ToolRequest) throws(ToolRequestError) -> ToolCall {
        var request = request
        guard request.path == "/search" || request.path == "/search.json" else {
            throw .unknownAction("serpapi supports GET /search and /search.json")
        }
        guard request.method == .GET else { throw .unknownAction("serpapi search must be GET") }
        if let why = request.query.ambiguity { throw .ambiguousParameter(why) }
        request.query.removeAll(named: "api_key")
        let engine = request.query.first("engine") ?? "google"
        var num: Int?
        if let raw = request.query.first("num") {
            guard let n = Int(raw), n >= 0 else { throw .invalidParameter("num must be a non-negative integer") }
            num = n
        }
        let params = SerpAPIParameters(query: request.query.first("q"), engine: engine.lowercased(), num: num)
        return ToolCall(tool: tool, action: "search", request: request, parameters: .serpapi(params))
    }

    public func compatRequest(action: String, params: JSONValue) throws(ToolRequestError) -> ToolRequest {
        guard action == "search" else { throw .unknownAction("serpapi action is search") }
        guard case .object(let object) = params else { throw .invalidBody("params must be an object") }
        var query = QueryString()
        for key in object.keys.sorted() {
            switch object[key]! {
            case .string(let s): query.append(key, s)
            case .number: query.append(key, object[key]!.serialized)
            case .bool(let b): query.append(key, b ? "true" : "false")
            default: throw .invalidParameter("\(key) must be a string, number or boolean")
            }
        }
        return ToolRequest(method: .GET, path: "/search.json", query: query)
    }

    public func authorize(_ request: inout UpstreamRequest, with credential: Credential) {
        // `interpret` already removed an agent's key; only a query that still names one is rebuilt.
        var rest = request.url.query ?? ""
        if rest.containsBytes("api_key") {
            var items = QueryString(parsing: rest)
            items.removeAll(named: "api_key")
            rest = items.encoded
        }
        var query = ""
        query.reserveCapacity(rest.utf8.count + 9 + credential.queryEncoded.utf8.count)
        if !rest.isEmpty {
            query += rest
            query += "&"
        }
        query += "api_key="
        query += credential.queryEncoded
        request.url.query = query
    }

    public func traits(of call: ToolCall) -> CallTraits {
        CallTraits(idempotent: true, cacheable: true, sideEffecting: false)
    }

    public func mockResponse(for call: ToolCall) -> UpstreamResponse {
        guard case .serpapi(let p) = call.parameters else { return Mock.json(["error": "mock: not a search"], status: .badRequest) }
        guard let q = p.query, !q.isEmpty else {
            return Mock.json(["error": "Missing query `q` parameter."], status: .badRequest)
        }
        let seed = Mock.hash(call.request.query.encoded.utf8)
        let count = min(max(p.num ?? 3, 1), 10)
        var results: [JSONValue] = []
        for i in 1...count {
            let slug = Mock.hex(seed &+ UInt64(i)).prefix(8)
            results.append([
                "position": .number(Double(i)),
                "title": .string("Result \(i) for \(q)"),
                "link": .string("https://example.com/\(slug)"),
                "displayed_link": .string("example.com › \(slug)"),
                "snippet": .string("Mock snippet \(i) about \(q)."),
            ])
        }
        return Mock.json([
            "search_metadata": [
                "id": .string("mock-\(Mock.hex(seed))"), "status": "Success",
                "json_endpoint": .string("https://serpapi.com/searches/mock/\(Mock.hex(seed)).json"),
                "google_url": .string("https://www.google.com/search?q=\(QueryString.encode(q))"),
                "created_at": "2026-01-01 00:00:00 UTC", "processed_at": "2026-01-01 00:00:00 UTC",
                "total_time_taken": 0.01,
            ],
            "search_parameters": ["engine": .string(p.engine), "q": .string(q), "google_domain": "google.com", "device": "desktop"],
            "search_information": [
                "organic_results_state": "Results for exact spelling", "total_results": .number(Double(count)),
                "time_taken_displayed": 0.01,
            ],
            "organic_results": .array(results),
        ])
    }
}
