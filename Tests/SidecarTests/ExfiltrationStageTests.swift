import NIOHTTP1
import Testing
import Upstreams

@testable import Sidecar

/// The exfiltration stage's view of a SerpAPI target: the `api_key` the adapter overwrites is left out
/// of the search, read from the parsed query the adapter reads — a target without it is searched as it
/// came, and must mean what the full parse-and-remove gives.
@Suite struct ExfiltrationStageTests {
    /// The full path: parse, remove, re-encode (what the stage did for every call).
    static func parsed(_ name: String, _ uri: String) -> String {
        guard let q = uri.firstIndex(of: "?") else { return uri }
        var query = QueryString(parsing: String(uri[uri.index(after: q)...]))
        query.removeAll(named: name)
        let rest = query.encoded
        return String(uri[..<q]) + (rest.isEmpty ? "" : "?" + rest)
    }

    @Test(arguments: [
        "/search?q=coffee&num=2",
        "/search?q=coffee&api_key=SECRET",
        "/search?api_key=SECRET&q=x",
        "/search?q=x&api%5Fkey=SECRET",
        "/search?q=x&%61pi_key=SECRET",
        "/search?q=x&api_key",
        "/search?q=api_keyring",
        "/search?q=x&my_api_key=1",
        "/search?q=x+y&API_KEY=1",
        "/search?q=aapi_key",
        "/search?",
        "/search",
        "/search?api_ke",
        "/search?q=é&api_key=1",
    ])
    func theShortcutRemovesWhatTheParseRemoves(_ uri: String) {
        let fast = Pipeline.target(uri, without: "api_key", query: Self.query(uri))
        let full = Self.parsed("api_key", uri)
        // Equal, or (nothing to remove) the target as it came, which the full path re-encodes to the same
        // parameters (only an empty query's `?` differs).
        let sameParameters = Self.query(fast) == Self.query(full)
        #expect(fast == full || (fast == uri && sameParameters), "\(fast) vs \(full)")
        #expect(!fast.contains("SECRET"))
    }

    /// The field that carried the agent's token is removed before the call goes upstream, so the search
    /// skips it — every field of that name, and only that name: a key in any other field is still found
    /// (http_fetch: the agent's own credential fields go to the site).
    @Test(arguments: [
        // (fields, carrier, found)
        ([("Authorization", "Bearer sk-REAL-0123456789abcdef")], TokenCarrier.authorization, false),
        ([("Authorization", "Bearer tok"), ("authorization", "sk-REAL-0123456789abcdef")], .authorization, false),
        ([("Authorization", "Bearer sk-REAL-0123456789abcdef")], nil, true),
        ([("Authorization", "Bearer sk-REAL-0123456789abcdef")], .agentTokenHeader, true),
        ([("X-Agent-Token", "tok"), ("X-Note", "sk-REAL-0123456789abcdef")], .agentTokenHeader, true),
        ([("Proxy-Authorization", "Basic sk-REAL-0123456789abcdef")], .proxyAuthorization, false),
        ([("Proxy-Authorization", "Basic tok"), ("Cookie", "k=sk-REAL-0123456789abcdef")], .proxyAuthorization, true),
    ] as [([(String, String)], TokenCarrier?, Bool)])
    func theTokensCarrierIsNotSearched(fields: [(String, String)], carrier: TokenCarrier?, found: Bool) {
        #expect(Self.found(fields, tool: .httpFetch, carrier: carrier) == found)
    }

    /// The search reads what `HeaderRules.upstreamHeaders` forwards, by the same rule: a field the
    /// upstream never gets (hop-by-hop, the sidecar's own controls, a brokered tool's credential fields,
    /// which the sidecar replaces) cannot carry a key out and is not searched; every other one is —
    /// including `X-Request-Id` and `Via`, whose values the sidecar passes on.
    @Test(arguments: [
        ("Authorization", Tool.serpapi, false), ("X-Api-Key", .openai, false), ("Cookie", .gmailSend, false),
        ("Authorization", .httpFetch, true), ("Cookie", .httpFetch, true),
        ("X-Forwarded-For", .httpFetch, false), ("X-Agent-Id", .serpapi, false), ("Keep-Alive", .openai, false),
        ("X-Note", .serpapi, true), ("X-Request-Id", .serpapi, true), ("Via", .openai, true), ("traceparent", .gmailSend, true),
    ])
    func whatReachesTheUpstreamIsSearched(name: String, tool: Tool, found: Bool) {
        #expect(Self.found([(name, "sk-REAL-0123456789abcdef")], tool: tool, carrier: nil) == found)
        #expect(HeaderRules.reachesUpstream(name, tool: tool) == found)
        // The agent's X-Request-Id is carried as the call's request id (`RequestID.from`), not by this pass.
        guard name != "X-Request-Id" else { return }
        let forwarded = HeaderRules.upstreamHeaders(
            from: HTTPHeaders([(name, "sk-REAL-0123456789abcdef")]), tool: tool, authority: "example.com", requestID: "rid")
        #expect(forwarded.contains { $0.value.contains("sk-REAL") } == found)
    }

    static func found(_ fields: [(String, String)], tool: Tool, carrier: TokenCarrier?) -> Bool {
        let scanner = ExfiltrationScanner([.init(label: "openai", value: "sk-REAL-0123456789abcdef", canary: false)])
        let request = InboundRequest(
            head: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/search?q=x", headers: HTTPHeaders(fields)), body: nil, requestID: "r")
        return Pipeline.find(in: request, tool: tool, query: Self.query("/search?q=x"), carrier: carrier, scanner) != nil
    }

    static func query(_ uri: String) -> QueryString {
        guard let q = uri.firstIndex(of: "?") else { return QueryString(parsing: nil) }
        return QueryString(parsing: String(uri[uri.index(after: q)...]))
    }
}
