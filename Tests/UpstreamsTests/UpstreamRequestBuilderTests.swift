import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

@Suite("Upstream request building and credential injection")
struct UpstreamRequestBuilderTests {
    @Test func serpAPIKeyIsReplacedInTheQuery() throws {
        let adapter = SerpAPIAdapter()
        let call = try adapter.interpret(ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: "q=a+b&api_key=AGENT")))
        var request = UpstreamRequestBuilder.build(
            call: call, endpoint: ToolEndpoint(baseURL: try TargetURL.parse("https://127.0.0.1:8443/prefix/")),
            requestID: "r", deadline: .now() + .seconds(1))
        adapter.authorize(&request, with: Credential("REAL-KEY"))
        #expect(request.url.description == "https://127.0.0.1:8443/prefix/search?q=a%20b&api_key=REAL-KEY")
        #expect(request.headers["host"] == ["127.0.0.1:8443"])
    }

    @Test func openAIBearerReplacesTheAgentsAuthorization() throws {
        let adapter = OpenAIAdapter()
        let call = try adapter.interpret(
            ToolRequest(method: .POST, path: "/v1/embeddings", headers: ["Authorization": "Bearer sk-agent"], body: ByteBuffer(string: #"{"model":"m","input":"x"}"#)))
        var request = UpstreamRequestBuilder.build(
            call: call, endpoint: ToolEndpoint(baseURL: ToolEndpoint.defaultBaseURL(for: .openai)), requestID: "r", deadline: .now())
        #expect(request.headers["authorization"].isEmpty)
        adapter.authorize(&request, with: Credential("sk-real"))
        #expect(request.headers["authorization"] == ["Bearer sk-real"])
        #expect(request.url.description == "https://api.openai.com/v1/embeddings")
    }

    @Test func fetchGoesWhereTheAgentAskedOrUpgradesToHTTPS() throws {
        let adapter = HTTPFetchAdapter()
        let target = try TargetURL.parse("http://example.com/a?b=%20")
        let call = try adapter.interpret(ToolRequest(method: .GET, path: target.path, target: target))
        let plain = UpstreamRequestBuilder.build(call: call, endpoint: ToolEndpoint(baseURL: ToolEndpoint.defaultBaseURL(for: .httpFetch)), requestID: "r", deadline: .now())
        #expect(plain.url.description == "http://example.com/a?b=%20")
        let upgraded = UpstreamRequestBuilder.build(
            call: call, endpoint: ToolEndpoint(baseURL: ToolEndpoint.defaultBaseURL(for: .httpFetch), upgradeFetchToHTTPS: true), requestID: "r", deadline: .now())
        #expect(upgraded.url.description == "https://example.com/a?b=%20")
    }

    @Test func credentialsNeverPrintThemselves() {
        let credential = Credential("sk-live-1234567890", version: 3)
        #expect(!"\(credential)".contains("sk-live"))
        #expect(!String(reflecting: credential).contains("sk-live"))
        var dumped = ""
        dump(credential, to: &dumped)
        #expect(!dumped.contains("sk-live"))
    }

    @Test func queryStringRoundTrips() {
        let q = QueryString(parsing: "q=caf%C3%A9+au+lait&x&y=1%2B1")
        #expect(q.first("q") == "café au lait")
        #expect(q.first("x") == "")
        #expect(q.first("y") == "1+1")
        #expect(QueryString(parsing: q.encoded) == q)
    }

    @Test func anUnchangedQueryIsForwardedAsTheAgentEncodedIt() throws {
        let adapter = SerpAPIAdapter()
        let call = try adapter.interpret(ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: "q=a+b&hl=en%2Dus")))
        var request = UpstreamRequestBuilder.build(
            call: call, endpoint: ToolEndpoint(baseURL: try TargetURL.parse("https://serpapi.com")), requestID: "r", deadline: .now())
        #expect(request.url.query == "q=a+b&hl=en%2Dus")
        adapter.authorize(&request, with: Credential("K&Y=1"))
        #expect(request.url.query == "q=a+b&hl=en%2Dus&api_key=K%26Y%3D1")
        // A key that is still in the upstream query (a base URL's, say) is replaced, never doubled.
        request.url.query = "api_key=OLD&q=x"
        adapter.authorize(&request, with: Credential("NEW"))
        #expect(request.url.query == "q=x&api_key=NEW")
        request.url.query = nil
        adapter.authorize(&request, with: Credential("NEW"))
        #expect(request.url.query == "api_key=NEW")
    }
}
