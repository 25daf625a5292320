import NIOHTTP1
import Testing

@testable import Upstreams

@Suite("Entry classification")
struct EntryClassifierTests {
    let classifier = EntryClassifier(hosts: EntryClassifier.defaultHosts.merging([.serpapi: ["serpapi.com", "serpapi.test"]]) { $1 })

    struct Case: Sendable, CustomTestStringConvertible {
        let method: HTTPMethod
        let uri: String
        let expected: Result<Classification, ClassificationError>
        var testDescription: String { "\(method) \(uri)" }
    }

    static let cases: [Case] = [
        // Forward proxy: by host; any other host is http_fetch with its target.
        .init(method: .GET, uri: "http://serpapi.com/search?q=x", expected: .success(.tool(entry: .forward, tool: .serpapi, path: "/search", query: "q=x", target: nil))),
        .init(method: .GET, uri: "http://SERPAPI.COM/search.json", expected: .success(.tool(entry: .forward, tool: .serpapi, path: "/search.json", query: nil, target: nil))),
        .init(method: .GET, uri: "http://serpapi.test:8443/search", expected: .success(.tool(entry: .forward, tool: .serpapi, path: "/search", query: nil, target: nil))),
        .init(method: .POST, uri: "http://api.openai.com/v1/chat/completions", expected: .success(.tool(entry: .forward, tool: .openai, path: "/v1/chat/completions", query: nil, target: nil))),
        .init(method: .POST, uri: "http://gmail.googleapis.com/gmail/v1/users/me/messages/send", expected: .success(.tool(entry: .forward, tool: .gmailSend, path: "/gmail/v1/users/me/messages/send", query: nil, target: nil))),
        .init(method: .GET, uri: "http://example.com/a?b=c", expected: .success(.tool(entry: .forward, tool: .httpFetch, path: "/a", query: "b=c", target: TargetURL(scheme: "http", host: "example.com", path: "/a", query: "b=c")))),
        // A look-alike host is not the tool (exact match only).
        .init(method: .GET, uri: "http://serpapi.com.evil.test/search", expected: .success(.tool(entry: .forward, tool: .httpFetch, path: "/search", query: nil, target: TargetURL(scheme: "http", host: "serpapi.com.evil.test", path: "/search")))),
        // Userinfo is refused (RFC 9110 §4.2.4): it makes a URL look like it goes somewhere it does not.
        .init(method: .GET, uri: "http://api.openai.com@example.com/", expected: .failure(.invalidTarget("URL must not carry userinfo (user:password@host); credentials go in a header"))),
        // Reverse routes.
        .init(method: .POST, uri: "/openai/v1/chat/completions", expected: .success(.tool(entry: .reverse, tool: .openai, path: "/v1/chat/completions", query: nil, target: nil))),
        .init(method: .GET, uri: "/serpapi/search?q=a&num=2", expected: .success(.tool(entry: .reverse, tool: .serpapi, path: "/search", query: "q=a&num=2", target: nil))),
        .init(method: .POST, uri: "/gmail/v1/users/me/messages/send", expected: .success(.tool(entry: .reverse, tool: .gmailSend, path: "/gmail/v1/users/me/messages/send", query: nil, target: nil))),
        .init(method: .GET, uri: "/fetch?url=https%3A%2F%2Fexample.org%2Fx%3Fy%3D1", expected: .success(.tool(entry: .reverse, tool: .httpFetch, path: "/x", query: "y=1", target: TargetURL(scheme: "https", host: "example.org", path: "/x", query: "y=1")))),
        // Compatibility API.
        .init(method: .POST, uri: "/api/proxy-request", expected: .success(.compat)),
        .init(method: .GET, uri: "/api/proxy-request", expected: .failure(.methodNotAllowed(allowed: ["POST"]))),
        // CONNECT.
        .init(method: .CONNECT, uri: "api.openai.com:443", expected: .success(.connect(authority: "api.openai.com:443"))),
        // Mistakes.
        .init(method: .GET, uri: "/", expected: .failure(.routeNotFound)),
        .init(method: .GET, uri: "/openai", expected: .failure(.routeNotFound)),
        .init(method: .GET, uri: "/fetch", expected: .failure(.invalidTarget("/fetch needs a url query parameter"))),
        .init(method: .GET, uri: "/fetch?url=ftp%3A%2F%2Fx", expected: .failure(.invalidTarget("scheme must be http or https"))),
        .init(method: .GET, uri: "*", expected: .failure(.invalidTarget("request-target must be origin-form (/path) or absolute-form (http://host/path)"))),
        .init(method: .GET, uri: "http://exa mple.com/", expected: .failure(.invalidTarget("invalid host"))),
        .init(method: .GET, uri: "http://example.com:99999/", expected: .failure(.invalidTarget("invalid port"))),
    ]

    @Test(arguments: cases)
    func classifies(_ c: Case) {
        #expect(classifier.classify(method: c.method, uri: c.uri) == c.expected)
    }
}

@Suite("Target URLs")
struct TargetURLTests {
    @Test(arguments: [
        ("http://Example.COM", "http://example.com/"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:8443/a?b", "https://example.com:8443/a?b"),
        ("http://[::1]:8080/", "http://[::1]:8080/"),
        ("http://example.com/p#frag", "http://example.com/p"),
        ("http://example.com?q=1", "http://example.com/?q=1"),
    ])
    func normalizes(_ input: String, _ expected: String) throws {
        #expect(try TargetURL.parse(input).description == expected)
    }

    @Test(arguments: ["example.com", "gopher://x", "http://", "http://[::1/", "http://a b/", "http://x:0/", "http://x/a b", "http://ex%41mple.com/",
                            "http://user:pw@example.com/x", "http://user@example.com/", "http://@example.com/", "https://a.test@b.test:443/"])
    func rejects(_ input: String) {
        #expect(throws: TargetURLError.self) { try TargetURL.parse(input) }
    }
}
