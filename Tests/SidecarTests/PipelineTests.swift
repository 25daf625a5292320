import NIOCore
import NIOHTTP1
import Synchronization
import Testing
import Upstreams

@testable import Sidecar

/// A transport fake that records what would leave the sidecar and answers from a script.
final class RecordingTransport: UpstreamTransport {
    let sent = Mutex<[UpstreamRequest]>([])
    let answer: @Sendable (UpstreamRequest) throws(UpstreamError) -> UpstreamResponse

    init(answer: @escaping @Sendable (UpstreamRequest) throws(UpstreamError) -> UpstreamResponse) { self.answer = answer }

    func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        sent.withLock { $0.append(request) }
        return try answer(request)
    }

    static func ok(_ body: String, headers: [(String, String)] = [("Content-Type", "application/json")]) -> RecordingTransport {
        RecordingTransport { _ in UpstreamResponse(status: .ok, headers: HTTPHeaders(headers), body: .bytes(ByteBuffer(string: body))) }
    }
}

@Suite("Pipeline with a fake transport")
struct PipelineTests {
    static func pipeline(_ transport: any UpstreamTransport, live: Bool = true, credentials: [Tool: Credential] = [:]) -> Pipeline {
        var config = SidecarConfig()
        for tool in Tool.allCases { config.tools[tool]!.mode = live ? .live : .mock }
        return Pipeline(
            classifier: EntryClassifier(hosts: config.tools.mapValues(\.hosts)), adapters: ToolAdapters(), transport: transport,
            credentials: StaticCredentials(credentials), settings: PipelineSettings(config: config))
    }

    /// An HTTP/1.1 request as a client sends it: with a `Host` field unless the test names one.
    static func request(_ method: HTTPMethod, _ uri: String, headers: [(String, String)] = [], body: String? = nil) -> InboundRequest {
        let host = headers.contains { $0.0.lowercased() == "host" } ? [] : [("Host", "sidecar.test")]
        return InboundRequest(
            head: HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders(host + headers)),
            body: body.map { ByteBuffer(string: $0) }, requestID: "rid-1")
    }

    static func body(_ r: ProxyResponse) -> String {
        if case .buffer(let b) = r.body { return String(buffer: b) }
        return "<stream>"
    }

    @Test func forwardProxyInjectsTheCredentialAndHidesItFromTheAgent() async throws {
        let transport = RecordingTransport.ok(#"{"organic_results":[]}"#)
        let p = Self.pipeline(transport, credentials: [.serpapi: Credential("SERP-SECRET")])
        var record = RequestRecord(requestID: "rid-1", method: "GET", start: .now)
        let response = await p.handle(
            Self.request(.GET, "http://serpapi.com/search?q=x&api_key=agent", headers: [("Proxy-Authorization", "Basic Zm9vOmJhcg==")]),
            record: &record)
        #expect(response.status == .ok)
        let sent = try #require(transport.sent.withLock { $0.first })
        #expect(sent.url.description == "https://serpapi.com/search?q=x&api_key=SERP-SECRET")
        #expect(sent.headers["proxy-authorization"].isEmpty)
        #expect(sent.headers["x-request-id"] == ["rid-1"])
        #expect(!Self.body(response).contains("SERP-SECRET"))
        #expect(!response.headers.contains { $0.value.contains("SERP-SECRET") })
        #expect(record.tool == .serpapi && record.action == "search" && record.entry == .forward && record.upstreamHost == "serpapi.com")
    }

    @Test func aLiveBrokeredToolWithoutCredentialIsNeverForwarded() async {
        let transport = RecordingTransport.ok("{}")
        let p = Self.pipeline(transport)
        var record = RequestRecord(requestID: "rid-1", method: "POST", start: .now)
        let response = await p.handle(
            Self.request(.POST, "/openai/v1/chat/completions", body: #"{"model":"gpt-4o-mini","messages":[]}"#), record: &record)
        #expect(response.status == .serviceUnavailable)
        #expect(Self.body(response).contains("credential_unavailable"))
        #expect(transport.sent.withLock { $0.isEmpty })
        #expect(record.outcome == "credential_unavailable")
    }

    @Test(arguments: [
        (UpstreamError(.unreachable, beforeSend: true, detail: "refused"), HTTPResponseStatus.badGateway, "upstream_unreachable"),
        (UpstreamError(.timeout, beforeSend: false, detail: "deadline"), .gatewayTimeout, "upstream_timeout"),
    ])
    func upstreamFailuresBecomeProblems(_ error: UpstreamError, _ status: HTTPResponseStatus, _ code: String) async {
        let transport = RecordingTransport { _ throws(UpstreamError) in throw error }
        let p = Self.pipeline(transport)
        var record = RequestRecord(requestID: "rid-1", method: "GET", start: .now)
        let response = await p.handle(Self.request(.GET, "http://example.com/"), record: &record)
        #expect(response.status == status)
        #expect(Self.body(response).contains("\"code\":\"\(code)\""))
        #expect(Self.body(response).contains("rid-1"))
    }

    @Test func oversizedUpstreamResponseIsRefusedBeforeTheHead() async {
        let transport = RecordingTransport { _ in
            UpstreamResponse(status: .ok, headers: ["Content-Length": "999999999"], body: .empty)
        }
        let p = Self.pipeline(transport)
        var record = RequestRecord(requestID: "rid-1", method: "GET", start: .now)
        let response = await p.handle(Self.request(.GET, "/fetch?url=http%3A%2F%2Fexample.com%2F"), record: &record)
        #expect(response.status == .badGateway)
        #expect(Self.body(response).contains("upstream_response_too_large"))
    }

    @Test func compatibilityEnvelope() async throws {
        let p = Self.pipeline(MockTransport(adapters: ToolAdapters()), live: false)
        var record = RequestRecord(requestID: "rid-1", method: "POST", start: .now)
        let response = await p.handle(
            Self.request(
                .POST, "/api/proxy-request", headers: [("Content-Type", "application/json")],
                body: #"{"tool":"serpapi","action":"search","params":{"q":"coffee","num":2}}"#),
            record: &record)
        #expect(response.status == .ok)
        let json = try #require(JSONValue.parse(Array(Self.body(response).utf8)))
        #expect(json["success"] == true)
        #expect(json["data"]?["organic_results"]?.arrayValue?.count == 2)
        #expect(json["metadata"]?["tool"] == "serpapi" && json["metadata"]?["request_id"] == "rid-1")
    }

    /// The envelope carries a JSON answer as the upstream's own bytes: its numbers are never passed
    /// through doubles (a 64-bit id stays that id), its spelling stays as sent.
    @Test func compatibilityAnswerKeepsTheUpstreamsNumbers() async throws {
        let answer = #"{"id": 12345678901234567, "ratio": 0.10000000000000001, "list": [1.0, 2e3]}"#
        let p = Self.pipeline(RecordingTransport.ok(answer))
        var record = RequestRecord(requestID: "rid-1", method: "POST", start: .now)
        let response = await p.handle(
            Self.request(
                .POST, "/api/proxy-request", headers: [("Content-Type", "application/json")],
                body: #"{"tool":"http_fetch","action":"get","params":{"url":"http://example.com/x"}}"#),
            record: &record)
        #expect(response.status == .ok)
        let text = Self.body(response)
        #expect(text.hasPrefix(#"{"data":"# + answer + #","metadata":{"#), "\(text)")
        let json = try #require(JSONValue.parse(Array(text.utf8)))
        #expect(json["success"] == true && json["metadata"]?["tool"] == "http_fetch" && json["metadata"]?["upstream_status"] == 200)
    }

    @Test(arguments: [
        (#"not json"#, "application/json", 400, "invalid_body"),
        (#"{"tool":"serpapi"}"#, "application/json", 400, "invalid_parameter"),
        (#"{"tool":"ftp","action":"get"}"#, "application/json", 400, "unknown_action"),
        (#"{"tool":"serpapi","action":"scrape"}"#, "application/json", 400, "unknown_action"),
        (#"{}"#, "text/plain", 415, "unsupported_media_type"),
        // The params are written out again as the tool's request: a number a double would change is refused.
        (#"{"tool":"openai","action":"chat","params":{"model":"m","seed":12345678901234567}}"#, "application/json", 400, "invalid_body"),
        (#"{"tool":"serpapi","action":"search","params":{"q":"a","start":0.10000000000000001}}"#, "application/json", 400, "invalid_body"),
    ])
    func compatibilityMistakes(_ body: String, _ type: String, _ status: Int, _ code: String) async {
        let p = Self.pipeline(RecordingTransport.ok("{}"), live: false)
        var record = RequestRecord(requestID: "rid-1", method: "POST", start: .now)
        let response = await p.handle(Self.request(.POST, "/api/proxy-request", headers: [("Content-Type", type)], body: body), record: &record)
        #expect(Int(response.status.code) == status)
        #expect(Self.body(response).contains("\"code\":\"\(code)\""))
        #expect(Self.body(response).contains("\"success\":false"))
    }
}
