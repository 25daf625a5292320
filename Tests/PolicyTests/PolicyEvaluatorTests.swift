import Foundation
import Testing

@testable import Policy

enum YAMLish {
    /// Builds a document tree from nested Swift values (the tests do not depend on a YAML parser).
    static func node(_ v: Any) -> DocumentNode {
        switch v {
        case let s as String: return .scalar(s, quoted: false)
        case let i as Int: return .scalar(String(i), quoted: false)
        case let b as Bool: return .scalar(b ? "true" : "false", quoted: false)
        case let a as [Any]: return .sequence(a.map(node))
        case let d as KeyValuePairs<String, Any>: return .mapping(d.map { .init(key: $0.key, value: node($0.value)) })
        default: fatalError("unsupported \(v)")
        }
    }
}

@Suite("Host patterns")
struct HostPatternTests {
    @Test(arguments: [
        ("example.com", "example.com", true), ("example.com", "EXAMPLE.com.", true), ("example.com", "evilexample.com", false),
        ("example.com", "www.example.com", false), ("example.com", "example.com.evil.test", false),
        ("*.example.com", "api.example.com", true), ("*.example.com", "a.b.example.com", true), ("*.example.com", "example.com", false),
        ("*.example.com", "evilexample.com", false), ("*.example.com", "api.example.com.evil.test", false),
        ("*.example.com", "xexample.com", false), ("10.0.0.1", "10.0.0.1", true), ("10.0.0.1", "10.0.0.10", false),
    ])
    func matches(_ pattern: String, _ host: String, _ expected: Bool) {
        #expect(HostPattern(pattern)!.matches(host) == expected)
    }

    @Test(arguments: ["*example.com", "ex*.com", "*.com", "*", "a..b", "-a.com", "*.*.example.com", ""])
    func rejectsTrickyPatterns(_ p: String) {
        #expect(HostPattern(p) == nil)
    }
}

@Suite("Policy compilation and evaluation")
struct PolicyEvaluatorTests {
    static let document = YAMLish.node([
        "version": 1,
        "roles": [
            "scraper": [
                "allow": ["serpapi:search", "http_fetch:*"],
                "concurrency": 3,
                "rules": [
                    ["scope": "http_fetch:*", "guards": ["allow_hosts": ["*.example.com", "example.org"], "block_hosts": ["bad.example.com"], "schemes": ["https"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
                    ["scope": "serpapi:search", "guards": ["engines": ["google"], "max_num": 20] as KeyValuePairs<String, Any>,
                     "rate": ["limit": 10, "per": "1s", "burst": 5] as KeyValuePairs<String, Any>,
                     "quota": ["limit": 1000, "window": "day", "timezone": "America/New_York"] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
                ] as [Any],
            ] as KeyValuePairs<String, Any>,
            "enricher": [
                "allow": ["openai:chat"],
                "rules": [
                    ["scope": "openai:chat", "guards": ["models": ["gpt-4o-mini"], "max_tokens": 1024, "allow_stream": false] as KeyValuePairs<String, Any>,
                     "budget": ["tokens": 5000, "window": "day"] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
                ] as [Any],
            ] as KeyValuePairs<String, Any>,
            "engager": [
                "allow": ["gmail_send:send"],
                "rules": [
                    ["scope": "gmail_send:send", "mode": "report",
                     "guards": ["allowed_domains": ["example.com"], "max_recipients": 2] as KeyValuePairs<String, Any>,
                     "time_window": ["timezone": "UTC", "days": ["mon"], "hours": ["09:00-10:00"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
                ] as [Any],
            ] as KeyValuePairs<String, Any>,
        ] as KeyValuePairs<String, Any>,
        "agents": ["agt_vip": ["concurrency": 10] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
    ] as KeyValuePairs<String, Any>)

    static let evaluator = PolicyEvaluator(policy: try! PolicyCompiler.compile(document, source: "test"))
    static let now = ISO8601DateFormatter().date(from: "2026-11-22T12:00:00Z")!  // a Sunday

    static func request(_ role: String, _ tool: String, _ action: String, _ p: CallParameters, agent: String = "agt_1", scopes: Set<String>? = nil) -> PolicyRequest {
        PolicyRequest(agentID: agent, role: role, tokenScopes: scopes, tool: tool, action: action, parameters: p, bodyBytes: 10)
    }

    static func fetch(_ url: (String, String, Int)) -> CallParameters { .fetch(scheme: url.0, host: url.1, port: url.2, method: "GET") }

    @Test(arguments: [
        (("https", "api.example.com", 443), nil as String?), (("https", "example.org", 443), nil),
        (("https", "example.com", 443), "host"), (("https", "evilexample.com", 443), "host"),
        (("https", "bad.example.com", 443), "host"), (("http", "api.example.com", 80), "scheme"),
        (("https", "api.example.com.evil.test", 443), "host"),
    ])
    func fetchGuards(_ url: (String, String, Int), _ refusedParameter: String?) {
        let e = Self.evaluator.evaluate(Self.request("scraper", "http_fetch", "get", Self.fetch(url)), at: Self.now)
        #expect(e.denial?.parameter == refusedParameter)
        if refusedParameter != nil { #expect(e.denial?.kind == .parameter && !(e.denial?.detail.contains("example.org") ?? true)) }
    }

    @Test func fetchRulesCanGrantInternalRangesOnlyToTheirOwnCalls() throws {
        let doc = YAMLish.node([
            "version": 1,
            "roles": [
                "internal": [
                    "allow": ["http_fetch:*", "serpapi:search"],
                    "rules": [["scope": "http_fetch:get", "guards": ["allow_cidrs": ["10.20.0.0/16", "fd00:1::/64"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>],
                ] as KeyValuePairs<String, Any>,
                "other": ["allow": ["http_fetch:*"]] as KeyValuePairs<String, Any>,
            ] as KeyValuePairs<String, Any>,
        ] as KeyValuePairs<String, Any>)
        let evaluator = PolicyEvaluator(policy: try PolicyCompiler.compile(doc, source: "t", isCIDR: { $0.contains("/") }))
        let get = evaluator.evaluate(Self.request("internal", "http_fetch", "get", Self.fetch(("http", "10.20.1.2", 80))), at: Self.now)
        #expect(get.denial == nil && get.egressAllow == ["10.20.0.0/16", "fd00:1::/64"])
        let head = evaluator.evaluate(Self.request("internal", "http_fetch", "head", Self.fetch(("http", "10.20.1.2", 80))), at: Self.now)
        #expect(head.egressAllow.isEmpty, "the grant belongs to the rule's scope only")
        #expect(evaluator.evaluate(Self.request("other", "http_fetch", "get", Self.fetch(("http", "10.20.1.2", 80))), at: Self.now).egressAllow.isEmpty)
        // Invalid ranges are refused with their path; without a validator no range is accepted.
        let bad = YAMLish.node([
            "version": 1,
            "roles": ["r": ["allow": ["http_fetch:*"], "rules": [["scope": "http_fetch:get", "guards": ["allow_cidrs": ["10.0.0.0/8", "nonsense"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
        ] as KeyValuePairs<String, Any>)
        #expect(throws: DocumentError.self) { try PolicyCompiler.compile(bad, source: "t", isCIDR: { $0.contains("/") }) }
        do {
            _ = try PolicyCompiler.compile(bad, source: "t", isCIDR: { $0.contains("/") })
        } catch {
            #expect(error.path == "roles.r.rules[0].guards.allow_cidrs[1]")
        }
    }

    @Test func scopeIsCheckedFirstAndTokenScopesNarrow() {
        #expect(Self.evaluator.evaluate(Self.request("scraper", "openai", "chat", .none), at: Self.now).denial?.kind == .scope)
        #expect(Self.evaluator.evaluate(Self.request("nobody", "serpapi", "search", .serpapi(engine: "google", num: 1)), at: Self.now).denial?.kind == .scope)
        let narrowed = Self.request("scraper", "serpapi", "search", .serpapi(engine: "bing", num: 1), scopes: ["http_fetch:get"])
        #expect(Self.evaluator.evaluate(narrowed, at: Self.now).denial?.kind == .scope, "scope before the engine guard")
    }

    @Test func limitsComeOutInOrderWithWindows() {
        let e = Self.evaluator.evaluate(Self.request("scraper", "serpapi", "search", .serpapi(engine: "google", num: 10)), at: Self.now)
        #expect(e.denial == nil)
        #expect(e.checks.map(\.kind) == [.concurrency, .rate, .quota])
        #expect(e.checks[0].limit == 3 && e.checks[1].burst == 5 && e.checks[2].window?.currentID == "d2026-11-22")
        let vip = Self.evaluator.evaluate(Self.request("scraper", "serpapi", "search", .serpapi(engine: "google", num: 1), agent: "agt_vip"), at: Self.now)
        #expect(vip.checks[0].limit == 10, "per-agent override")
        #expect(Self.evaluator.evaluate(Self.request("scraper", "serpapi", "search", .serpapi(engine: "google", num: 50)), at: Self.now).denial?.parameter == "num")
    }

    @Test func openAIGuardsAndBudgetReservation() {
        let ok = Self.evaluator.evaluate(Self.request("enricher", "openai", "chat", .openai(model: "gpt-4o-mini", maxTokens: 500, stream: false, estimatedInputTokens: 40)), at: Self.now)
        #expect(ok.denial == nil && ok.checks.first?.kind == .budget && ok.checks.first?.cost == 540)
        for (p, param) in [
            (CallParameters.openai(model: "gpt-4o", maxTokens: 10, stream: false, estimatedInputTokens: 1), "model"),
            (.openai(model: "gpt-4o-mini", maxTokens: 5000, stream: false, estimatedInputTokens: 1), "max_tokens"),
            (.openai(model: "gpt-4o-mini", maxTokens: nil, stream: false, estimatedInputTokens: 1), "max_tokens"),
            (.openai(model: "gpt-4o-mini", maxTokens: 10, stream: true, estimatedInputTokens: 1), "stream"),
        ] {
            #expect(Self.evaluator.evaluate(Self.request("enricher", "openai", "chat", p), at: Self.now).denial?.parameter == param)
        }
    }

    /// A call without a cap reserves the default once per choice it asks for; every reservation is pinned
    /// below where adding the input (and counters) could overflow — `max_tokens` near the bound once trapped.
    @Test(arguments: [
        (nil, 1, 40, 1024 + 40),
        (nil, 4, 40, 4 * 1024 + 40),
        (nil, 9_000_000_000_000_000, 40, PolicyEvaluator.countBound + 40),
        (500, 4, 40, 540),
        (PolicyEvaluator.countBound, 1, 1 << 28, PolicyEvaluator.countBound + (1 << 28)),
        (Int.max, 1, 40, Int.max),
    ] as [(Int?, Int, Int, Int)])
    func budgetReservationCountsChoicesAndNeverOverflows(_ maxTokens: Int?, _ choices: Int, _ input: Int, _ cost: Int) {
        let doc = YAMLish.node([
            "version": 1,
            "roles": ["r": ["allow": ["openai:*"], "rules": [["scope": "openai:*", "budget": ["tokens": 5000, "window": "day"] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
        ] as KeyValuePairs<String, Any>)
        let evaluator = PolicyEvaluator(policy: try! PolicyCompiler.compile(doc, source: "test"))
        let e = evaluator.evaluate(
            Self.request("r", "openai", "chat", .openai(model: "m", maxTokens: maxTokens, stream: false, estimatedInputTokens: input, choices: choices)), at: Self.now)
        #expect(e.checks.first?.kind == .budget && e.checks.first?.cost == cost)
    }

    @Test func reportModeRulesAllowButRecordWouldDeny() {
        let mail = CallParameters.gmail(recipientDomains: ["evil.test", "example.com", "example.com"], recipients: 3, subjectBytes: 5, bodyBytes: 5, headerInjection: false)
        let e = Self.evaluator.evaluate(Self.request("engager", "gmail_send", "send", mail), at: Self.now)
        #expect(e.denial == nil)
        #expect(e.wouldDeny.map(\.kind) == [.parameter, .offHours])
    }

    nonisolated(unsafe) static let rawErrorCases: [(KeyValuePairs<String, Any>, String)] = [
        (["roles": [:] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>, "roles"),
        (["roles": ["r": ["allow": ["ftp:get"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.allow[0]"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "serpapi:search", "rate": ["limit": 0, "per": "1s"] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].rate.limit"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "*", "quota": ["limit": 5, "window": "fortnight"] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].quota.window"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "*", "time_window": ["timezone": "Mars/Olympus"] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].time_window.timezone"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "*", "guards": ["allow_hosts": ["*evil.com"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].guards.allow_hosts[0]"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "serpapi:search", "budget": ["tokens": 5, "window": "day"] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].budget"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "*", "mode": "maybe"] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].mode"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "openai:models", "budget": ["tokens": 5, "window": "day"] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].budget"),
        // A guard the scope's tool never carries would restrict nothing.
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "serpapi:search", "guards": ["models": ["gpt-4o"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].guards.models"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "openai:*", "guards": ["allowed_domains": ["example.com"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].guards.allowed_domains"),
        (["roles": ["r": ["allow": ["*"], "rules": [["scope": "http_fetch:get", "guards": ["max_num": 5] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>], "roles.r.rules[0].guards.max_num"),
    ]

    /// Under `*` every guard applies to the calls that carry its parameter; under a tool's scope, its own.
    @Test func guardsThatFitTheScopeCompile() throws {
        let doc = YAMLish.node(["roles": ["r": ["allow": ["*"], "rules": [
            ["scope": "*", "guards": ["models": ["gpt-4o"], "engines": ["google"]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
            ["scope": "openai:*", "guards": ["models": ["gpt-4o"], "max_tokens": 10, "max_body_bytes": 1000] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
            ["scope": "gmail_send:send", "guards": ["reject_crlf": true, "max_body_bytes": 1000] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>,
        ] as [Any]] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>] as KeyValuePairs<String, Any>)
        _ = try PolicyCompiler.compile(doc, source: "t")
    }
    static let errorCases: [(DocumentNode, String)] = rawErrorCases.map { (YAMLish.node($0.0), $0.1) }

    @Test(arguments: errorCases)
    func compileErrorsNameThePath(_ doc: DocumentNode, _ path: String) {
        do {
            _ = try PolicyCompiler.compile(doc, source: "")
            Issue.record("accepted")
        } catch {
            #expect(error.path == path, "\(error)")
        }
    }
}
