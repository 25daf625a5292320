import NIOHTTP1
import Testing

@testable import Upstreams

@Suite("CONNECT targets and tunnelled requests")
struct ConnectTargetTests {
    @Test(arguments: [
        ("api.openai.com:443", "api.openai.com", 443, false),
        ("API.OpenAI.com.:443", "api.openai.com", 443, false),
        ("127.0.0.1:8443", "127.0.0.1", 8443, true),
        ("[::1]:443", "::1", 443, true),
        ("[2001:db8::1]:443", "2001:db8::1", 443, true),
        ("2130706433:443", "2130706433", 443, true),  // a permissive client's 127.0.0.1: an address, checked as one
        ("under_score.example:443", "under_score.example", 443, false),
    ])
    func accepts(text: String, host: String, port: Int, literal: Bool) throws {
        let t = try ConnectTarget.parse(text)
        #expect(t.host == host && t.port == port && (t.ip != nil) == literal)
    }

    @Test(arguments: [
        "", "api.openai.com", "api.openai.com:", ":443", "[::1", "[::1]", "[::1]443", "a:b:c", "::1:443", "user@host:443",
        "user:pw@host:443", "host:443/path", "host:443?x", "host:0", "host:65536", "host:99999", "host:+443", "host:44 3",
        "ho st:443", "host%2e:443", "-host.example:443", "host..example:443", "1.2.3.4.5:443", "[fe80::1%eth0]:443",
        String(repeating: "a", count: 300) + ":443", "[zz::1]:443",
    ])
    func refuses(text: String) {
        #expect(throws: TargetURLError.self) { try ConnectTarget.parse(text) }
    }

    @Test func serverNameComparison() throws {
        let name = try ConnectTarget.parse("api.openai.com:443")
        #expect(name.matches(serverName: "api.openai.com") && name.matches(serverName: "API.openai.com."))
        #expect(!name.matches(serverName: "openai.com") && !name.matches(serverName: "api.openai.com.evil.test"))
        let ip = try ConnectTarget.parse("127.0.0.1:443")
        #expect(ip.matches(serverName: "127.0.0.1") && !ip.matches(serverName: "localhost"))
    }

    let classifier = EntryClassifier(hosts: EntryClassifier.defaultHosts)

    func tunnelled(_ method: HTTPMethod, _ uri: String, host: String?, tunnel: String) throws -> Result<Classification, ClassificationError> {
        classifier.classifyTunneled(method: method, uri: uri, host: host, tunnel: try ConnectTarget.parse(tunnel))
    }

    @Test func originFormGoesToTheTunnelsOrigin() throws {
        #expect(
            try tunnelled(.POST, "/v1/chat/completions", host: "api.openai.com", tunnel: "api.openai.com:443")
                == .success(.tool(entry: .tunnel, tool: .openai, path: "/v1/chat/completions", query: nil, target: nil)))
        #expect(
            try tunnelled(.GET, "/search?q=a&api_key=x", host: "serpapi.com:443", tunnel: "serpapi.com:443")
                == .success(.tool(entry: .tunnel, tool: .serpapi, path: "/search", query: "q=a&api_key=x", target: nil)))
        #expect(
            try tunnelled(.GET, "/a?b=c", host: "example.org:8443", tunnel: "example.org:8443")
                == .success(.tool(entry: .tunnel, tool: .httpFetch, path: "/a", query: "b=c",
                                  target: TargetURL(scheme: "https", host: "example.org", port: 8443, path: "/a", query: "b=c"))))
        // No Host field (HTTP/1.0): the tunnel's host is the origin.
        #expect(try tunnelled(.GET, "/", host: nil, tunnel: "example.org:443").map { _ in true } == .success(true))
        // The tunnel's own origin in absolute form is fine.
        #expect(try tunnelled(.GET, "https://example.org/x", host: "example.org", tunnel: "example.org:443").map { _ in true } == .success(true))
    }

    @Test(arguments: [
        (HTTPMethod.GET, "https://api.openai.com/v1/models", "api.openai.com"),  // another origin
        (.GET, "http://serpapi.com/search", "serpapi.com"),  // the tunnel is https
        (.GET, "https://serpapi.com:8443/search", "serpapi.com"),  // another port
        (.GET, "/search", "api.openai.com"),  // Host names another host (domain fronting)
        (.GET, "/search", "serpapi.com:8443"),
        (.GET, "/search", "user@serpapi.com"),
        (.CONNECT, "api.openai.com:443", "api.openai.com:443"),
    ])
    func misdirected(method: HTTPMethod, uri: String, host: String) throws {
        guard case .failure(.misdirected) = try tunnelled(method, uri, host: host, tunnel: "serpapi.com:443") else {
            Issue.record("\(method) \(uri) with Host \(host) was not refused as misdirected")
            return
        }
    }

    /// The Host field of a tunnelled request, compared byte-wise with the tunnel's origin: a table of
    /// what names it and what does not (host case and a trailing dot ignored, the port defaulting to 443).
    @Test(arguments: [
        ("serpapi.com", "serpapi.com:443", true), ("SerpAPI.COM", "serpapi.com:443", true),
        ("serpapi.com.", "serpapi.com:443", true), ("serpapi.com:443", "serpapi.com:443", true),
        ("serpapi.com.:443", "serpapi.com:443", true), ("serpapi.com:", "serpapi.com:443", true),
        ("serpapi.com:0443", "serpapi.com:443", true), ("example.org:8443", "example.org:8443", true),
        ("[::1]", "[::1]:443", true), ("[::1]:443", "[::1]:443", true), ("127.0.0.1:443", "127.0.0.1:443", true),
        ("example.org", "example.org:8443", false), ("example.org:443", "example.org:8443", false),
        ("serpapi.com:8443", "serpapi.com:443", false), ("serpapi.co", "serpapi.com:443", false),
        ("serpapi.comm", "serpapi.com:443", false), ("xserpapi.com", "serpapi.com:443", false),
        ("serpapi.com..", "serpapi.com:443", false), ("", "serpapi.com:443", false), (":443", "serpapi.com:443", false),
        ("user@serpapi.com", "serpapi.com:443", false), ("serpapi.com/x", "serpapi.com:443", false),
        ("serpapi.com?x", "serpapi.com:443", false), ("serpapi.com#x", "serpapi.com:443", false),
        ("serpapi.com:+443", "serpapi.com:443", false), ("serpapi.com: 443", "serpapi.com:443", false),
        ("serpapi.com:000443", "serpapi.com:443", false), ("serpapi.com:443:443", "serpapi.com:443", false),
        ("::1:443", "[::1]:443", false), ("::1", "[::1]:443", false), ("[::1", "[::1]:443", false),
        ("[::1]443", "[::1]:443", false), ("[::1]:8443", "[::1]:443", false), ("serpapi.com\u{0}", "serpapi.com:443", false),
    ])
    func hostField(field: String, tunnel: String, names: Bool) throws {
        let accepted = try tunnelled(.GET, "/search", host: field, tunnel: tunnel).map { _ in true }
        #expect((accepted == .success(true)) == names, "Host \(field) in a tunnel to \(tunnel)")
    }

    @Test func otherTargetFormsAreInvalid() throws {
        guard case .failure(.invalidTarget) = try tunnelled(.OPTIONS, "*", host: "serpapi.com", tunnel: "serpapi.com:443") else {
            Issue.record("asterisk-form accepted inside a tunnel")
            return
        }
    }
}

@Suite("LRU cache")
struct LRUCacheTests {
    @Test func evictsTheLeastRecentlyUsed() {
        var cache = LRUCache<String, Int>(capacity: 3)
        for (i, k) in ["a", "b", "c"].enumerated() { #expect(cache.set(k, i) == nil) }
        #expect(cache.get("a") == 0)  // a is now the most recent
        let evicted = cache.set("d", 3)
        #expect(evicted?.key == "b" && evicted?.value == 1)
        #expect(cache.keysByRecency == ["d", "a", "c"] && cache.count == 3)
        #expect(cache.get("b") == nil)
        cache.set("c", 30)  // an update moves it to the front and evicts nothing
        #expect(cache.keysByRecency == ["c", "d", "a"] && cache.get("c") == 30)
    }

    /// Removal frees the slot (and drops the value), the least recent goes first, and freed slots are
    /// reused before the array grows; a model dictionary with use stamps agrees over random churn.
    @Test func removalAndLeastRecentAgreeWithAModel() {
        var cache = LRUCache<Int, Int>(capacity: 1_000)
        var model: [Int: (value: Int, used: Int)] = [:]
        var generator = SplitMix64(seed: 11)
        for step in 0..<20_000 {
            let key = Int(generator.next() % 64)
            switch generator.next() % 4 {
            case 0:
                #expect(cache.remove(key) == model.removeValue(forKey: key)?.value)
            case 1:
                let oldest = model.min { $0.value.used < $1.value.used }
                let removed = cache.removeLeastRecent()
                #expect(removed?.key == oldest?.key && removed?.value == oldest?.value.value)
                if let k = oldest?.key { model[k] = nil }
            case 2:
                #expect(cache.get(key) == model[key]?.value)
                if model[key] != nil { model[key]!.used = step }
            default:
                cache.set(key, step)
                model[key] = (step, step)
            }
            #expect(cache.count == model.count)
        }
        #expect(cache.keysByRecency == model.sorted { $0.value.used > $1.value.used }.map(\.key))
    }

    @Test func staysBoundedUnderChurn() {
        var cache = LRUCache<Int, Int>(capacity: 64)
        var generator = SplitMix64(seed: 7)
        for i in 0..<10_000 {
            cache.set(Int(generator.next() % 500), i)
            #expect(cache.count <= 64)
        }
        #expect(Set(cache.keysByRecency).count == cache.count)
    }
}
