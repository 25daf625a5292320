import NIOHTTP1
import Testing

@testable import Upstreams

@Suite("Header rules (RFC 9110 §7.6.1)")
struct HeaderRulesTests {
    @Test func stripsHopByHopIncludingFieldsNamedInConnection() {
        let headers = HTTPHeaders([
            ("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic abc"), ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
            ("Trailer", "x"), ("Upgrade", "h2c"), ("Transfer-Encoding", "chunked"), ("Accept", "*/*"),
        ])
        // Of the message's own fields only Accept crosses (then the proxy's Via and request id).
        let out = HeaderRules.agentHeaders(from: headers, requestID: "r")
        #expect(out.map(\.name) == ["Accept", "Via", "X-Request-Id"])
    }

    @Test func upstreamHeadersForABrokeredTool() {
        let agent = HTTPHeaders([
            ("Host", "127.0.0.1:8080"), ("Authorization", "Bearer agent-key"), ("X-Forwarded-For", "10.0.0.1"),
            ("Forwarded", "for=10.0.0.1"), ("X-Real-IP", "10.0.0.1"), ("X-Agent-Token", "tok"), ("Via", "1.0 corp"),
            ("X-Request-Id", "agent-chosen"), ("Content-Length", "5"), ("Expect", "100-continue"),
            ("Content-Type", "application/json"), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("OpenAI-Organization", "org-placeholder"), ("openai-project", "proj_agents_choice"),
        ])
        let target = TargetURL(scheme: "https", host: "api.openai.com")
        let out = HeaderRules.upstreamHeaders(from: agent, tool: .openai, target: target, requestID: "rid-1")
        #expect(out["authorization"].isEmpty)
        // What the sidecar's key is billed to is the operator's choice (`tools.openai.organization`).
        #expect(out["openai-organization"].isEmpty && out["openai-project"].isEmpty)
        #expect(out["x-forwarded-for"].isEmpty && out["forwarded"].isEmpty && out["x-real-ip"].isEmpty)
        #expect(out["x-agent-token"].isEmpty && out["content-length"].isEmpty && out["expect"].isEmpty)
        #expect(out["host"] == ["api.openai.com"])
        #expect(out["via"] == ["1.0 corp, 1.1 agent-sidecar (\(HeaderRules.loopMark))"])
        #expect(HeaderRules.isLoop(out) && !HeaderRules.isLoop(["Via": "1.0 corp, 1.1 agent-sidecar"]))
        #expect(out["x-request-id"] == ["rid-1"])
        #expect(out["content-type"] == ["application/json"])
        #expect(out["traceparent"].count == 1)
    }

    @Test func fetchKeepsTheAgentsOwnAuthorization() {
        let agent = HTTPHeaders([("Authorization", "Bearer site-token"), ("Cookie", "a=b"), ("OpenAI-Project", "proj_x")])
        let target = TargetURL(scheme: "http", host: "example.com", port: 8080)
        let out = HeaderRules.upstreamHeaders(from: agent, tool: .httpFetch, target: target, requestID: "r")
        #expect(out["authorization"] == ["Bearer site-token"] && out["openai-project"] == ["proj_x"])
        #expect(out["host"] == ["example.com:8080"])
    }

    @Test func agentHeadersDropUpstreamConnectionFieldsAndAddVia() {
        let upstream = HTTPHeaders([
            ("Connection", "close"), ("Transfer-Encoding", "chunked"), ("Content-Type", "text/event-stream"),
            ("X-Request-Id", "upstream-id"),
        ])
        let out = HeaderRules.agentHeaders(from: upstream, requestID: "rid")
        #expect(out["connection"].isEmpty && out["transfer-encoding"].isEmpty)
        #expect(out["x-request-id"] == ["rid"])
        #expect(out["x-upstream-request-id"] == ["upstream-id"])
        #expect(out["via"] == ["1.1 agent-sidecar"])
        #expect(out["content-type"] == ["text/event-stream"])
        // Named in Connection (the second pass), repeated: the first is kept as the upstream's id.
        let named = HTTPHeaders([("Connection", "x-foo"), ("x-foo", "1"), ("x-request-id", "a"), ("X-Request-Id", "b")])
        let again = HeaderRules.agentHeaders(from: named, requestID: "rid")
        #expect(again["x-upstream-request-id"] == ["a"] && again["x-request-id"] == ["rid"] && again["x-foo"].isEmpty)
        #expect(HeaderRules.agentHeaders(from: HTTPHeaders(), requestID: "rid")["x-upstream-request-id"].isEmpty)
    }

    /// What the access log takes of the upstream's request id: an id, or nothing.
    @Test(arguments: [
        ("req_7f3a9c0b1d2e4f56", "req_7f3a9c0b1d2e4f56"), ("a.b:c-d_E9", "a.b:c-d_E9"), ("", nil), ("[REDACTED]", nil),
        ("id with space", nil), ("id\"quote", nil), (String(repeating: "a", count: 128), String(repeating: "a", count: 128)),
        (String(repeating: "a", count: 129), nil), ("é", nil),
    ] as [(String, String?)])
    func upstreamRequestIDForTheLog(_ value: String, _ expected: String?) {
        #expect(HeaderRules.upstreamRequestID(HTTPHeaders([("X-Request-Id", value)])) == expected)
    }

    /// The upstream's `Content-Length` is relayed as it is unless the body was rewritten (scrubbed), and
    /// never forwarded upstream from the agent (the encoder frames the body it sends).
    @Test func contentLengthIsKeptDownstreamUnlessTheBodyChangesAndNeverForwardedUp() {
        let upstream = HTTPHeaders([("Content-Length", "42"), ("Content-Type", "application/json")])
        #expect(HeaderRules.agentHeaders(from: upstream, requestID: "r")["content-length"] == ["42"])
        #expect(HeaderRules.agentHeaders(from: upstream, requestID: "r", dropLength: true)["content-length"].isEmpty)
        let target = TargetURL(scheme: "https", host: "serpapi.com")
        let up = HeaderRules.upstreamHeaders(from: upstream, tool: .serpapi, target: target, requestID: "r")
        #expect(up["content-length"].isEmpty && up["content-type"] == ["application/json"])
    }

    @Test(arguments: [
        ("Connection", true), ("CONNECTION", true), ("connection", true), ("Keep-Alive", true), ("te", true), ("TE", true),
        ("Transfer-Encoding", true), ("Proxy-Authorization", true), ("proxy-authenticate", true), ("Upgrade", true),
        ("Content-Type", false), ("Conection", false), ("X-Connection", false), ("Teapot", false), ("", false), ("T", false),
    ])
    func hopByHopNamesMatchInAnyCase(name: String, hop: Bool) {
        #expect(HeaderName.classify(name).isHopByHop == hop)
    }

    @Test func namesListedInConnectionAreDroppedInAnyCaseAndSeveralViasMerge() {
        let headers = HTTPHeaders([
            ("connection", "X-Hop-One"), ("Proxy-Connection", " x-hop-two ,"), ("x-hop-one", "1"), ("X-HOP-TWO", "2"),
            ("Via", "1.0 a"), ("VIA", "1.1 b"), ("Accept", "*/*"),
        ])
        let target = TargetURL(scheme: "https", host: "serpapi.com")
        let up = HeaderRules.upstreamHeaders(from: headers, tool: .serpapi, target: target, requestID: "r")
        #expect(up.map(\.name) == ["Accept", "Host", "Via", "X-Request-Id"])
        #expect(up["via"] == ["1.0 a, 1.1 b, 1.1 agent-sidecar (\(HeaderRules.loopMark))"])
        let down = HeaderRules.agentHeaders(from: headers, requestID: "r")
        #expect(down.map(\.name) == ["Accept", "Via", "X-Request-Id"])
        #expect(down["via"] == ["1.0 a, 1.1 b, 1.1 agent-sidecar"])
    }

    /// The `String` overload decides as the generic one: ASCII case folded, nothing else (a non-ASCII
    /// byte, or a letter whose fold is not ASCII, is compared as it is), lengths in bytes.
    @Test(arguments: [
        ("x-run-id", "X-Run-Id"), ("x-run-id", "x-run-ie"), ("host", "HOST"), ("", ""), ("a", ""), ("é", "É"), ("straße", "STRASSE"),
        ("K", "\u{212A}"), ("[", "{"), ("@", "`"), ("x-very-long-field-name-beyond-fifteen-bytes", "X-Very-Long-Field-Name-Beyond-Fifteen-Bytes"),
        ("x-very-long-field-name-beyond-fifteen-bytes", "X-Very-Long-Field-Name-Beyond-Fifteen-Byteš"),
    ])
    func stringComparisonDecidesAsTheGenericOne(_ a: String, _ b: String) {
        let generic = HeaderName.equalsIgnoringCase(Substring(a), Substring(b))
        #expect(HeaderName.equalsIgnoringCase(a, b) == generic)
        #expect(HeaderName.equalsIgnoringCase(b, a) == generic)
        #expect(HeaderName.equalsIgnoringCase(a, a))
    }

    /// A media type is the value before its parameters, compared without case — not a prefix: the
    /// compatibility API took `application/jsonl` for JSON and the stream meter `text/event-stream-x`
    /// for Server-Sent Events.
    @Test(arguments: [
        ("application/json", "application/json", true),
        ("Application/JSON; charset=utf-8", "application/json", true),
        ("  application/json\t;charset=utf-8", "application/json", true),
        ("application/json;", "application/json", true),
        ("application/jsonl", "application/json", false),
        ("application/json-seq", "application/json", false),
        ("application/json+x; a=b", "application/json", false),
        ("application/", "application/json", false),
        ("", "application/json", false),
        ("text/event-stream", "text/event-stream", true),
        ("text/event-stream-x", "text/event-stream", false),
        ("text/html; x=text/event-stream", "text/event-stream", false),
        ("message/rfc822", "message/rfc822", true),
        ("message/rfc822x", "message/rfc822", false),
    ])
    func mediaTypeIsTheWholeTypeBeforeItsParameters(_ value: String, _ type: String, _ expected: Bool) {
        #expect(HeaderName.isMediaType(value, type) == expected)
        #expect(HeaderName.isMediaType(Substring(value), type) == expected)
    }
}
