import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

/// `ToolCall` and `UpstreamRequest` keep their fields in one box (a copy is one retain, not a dozen);
/// they must still behave as the plain structs they were: a change to one copy never shows in another.
@Suite("Boxed values keep value semantics")
struct ValueBoxTests {
    private func call() throws -> ToolCall {
        try SerpAPIAdapter().interpret(ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: "q=a")))
    }

    @Test func toolCallCopiesAreIndependent() throws {
        let original = try call()
        var changed = original
        changed.action = "other"
        changed.request.body = ByteBuffer(string: "x")
        changed.tool = .openai
        #expect(original.action == "search" && original.tool == .serpapi && original.request.body == nil)
        #expect(changed.action == "other" && changed.tool == .openai && changed.request.body == ByteBuffer(string: "x"))
        #expect(changed.request.path == original.request.path)
    }

    @Test func upstreamRequestCopiesAreIndependent() throws {
        let original = UpstreamRequestBuilder.build(
            call: try call(), endpoint: ToolEndpoint(baseURL: try TargetURL.parse("https://127.0.0.1:8443/")), requestID: "r",
            deadline: .uptimeNanoseconds(1))
        var changed = original
        changed.headers.replaceOrAdd(name: "Accept-Encoding", value: "identity")
        changed.url.query = "api_key=K"
        changed.body = ByteBuffer(string: "b")
        changed.deadline = .uptimeNanoseconds(2)
        changed.egressAllow = [try #require(CIDR("10.0.0.0/8"))]
        changed.call.action = "other"
        #expect(original.headers["accept-encoding"].isEmpty && changed.headers["accept-encoding"] == ["identity"])
        #expect(original.url.query != "api_key=K" && changed.url.query == "api_key=K")
        #expect(original.body == nil && original.deadline == .uptimeNanoseconds(1) && original.egressAllow.isEmpty)
        #expect(original.action == "search" && changed.action == "other")
        // A request changed while unshared changes in place and keeps its other fields.
        var alone = changed
        changed = original
        alone.method = .POST
        #expect(alone.method == .POST && alone.headers["accept-encoding"] == ["identity"] && changed.method == .GET)
    }
}
