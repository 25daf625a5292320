import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

@testable import Upstreams

@Suite("Chaos at the transport seam")
struct ChaosTests {
    final class CountingTransport: UpstreamTransport {
        let calls = Mutex(0)
        func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
            calls.withLock { $0 += 1 }
            return UpstreamResponse(status: .ok, headers: ["Content-Length": "11"], body: .bytes(ByteBuffer(string: "hello world")))
        }
    }

    static func request(_ tool: Tool = .serpapi, deadline: NIODeadline = .now() + .seconds(5)) throws -> UpstreamRequest {
        let call: ToolCall
        switch tool {
        case .gmailSend:
            call = try GmailAdapter().interpret(ToolRequest(method: .GET, path: "/gmail/v1/users/me/profile"))
        default:
            call = try SerpAPIAdapter().interpret(ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: "q=x")))
        }
        return UpstreamRequest(call: call, method: .GET, url: TargetURL(scheme: "https", host: "serpapi.com"), headers: [:], body: nil, deadline: deadline)
    }

    static func settings(_ faults: ChaosFaults, tool: String = "*", seed: UInt64 = 7) -> ChaosSettings {
        var s = ChaosSettings()
        s.enabled = true
        s.tools = [tool: faults]
        s.seed = seed
        return s
    }

    /// Runs n calls and returns the kind of each outcome.
    static func run(_ chaos: ChaosTransport, _ n: Int, tool: Tool = .serpapi) async throws -> [String] {
        var kinds: [String] = []
        for _ in 0..<n {
            do {
                let r = try await chaos.send(try request(tool, deadline: .now() + .milliseconds(5)))
                kinds.append(r.headers.first(name: "x-chaos-injected") ?? "none:\(r.status.code)")
            } catch let error as UpstreamError {
                kinds.append("thrown:\(error.chaos ?? "-")")
            }
        }
        return kinds
    }

    @Test func aSeedMakesTheRunReproducible() async throws {
        var f = ChaosFaults()
        f.errorRate = 0.3
        f.rateLimitRate = 0.1
        f.timeoutRate = 0.05
        f.truncateRate = 0.1
        let a = try await Self.run(ChaosTransport(base: CountingTransport(), settings: Self.settings(f), now: { 0 }), 200)
        let b = try await Self.run(ChaosTransport(base: CountingTransport(), settings: Self.settings(f), now: { 0 }), 200)
        let c = try await Self.run(ChaosTransport(base: CountingTransport(), settings: Self.settings(f, seed: 8), now: { 0 }), 200)
        #expect(a == b)
        #expect(a != c)
        // The mix is close to the configured shares.
        let errors = a.filter { $0 == "error" }.count
        #expect((40...80).contains(errors), "errors: \(errors)")
        #expect(a.contains("rate_limit") && a.contains("truncate") && a.contains("thrown:timeout"))
    }

    @Test func injectedAnswersLookLikeRealFailures() async throws {
        var f = ChaosFaults()
        f.rateLimitRate = 1
        f.retryAfterSeconds = 7
        let injected = Mutex<[String]>([])
        let base = CountingTransport()
        let chaos = ChaosTransport(base: base, settings: Self.settings(f), now: { 0 }, onInject: { tool, kind in injected.withLock { $0.append("\(tool.rawValue):\(kind)") } })
        let r = try await chaos.send(try Self.request())
        #expect(r.status == .tooManyRequests)
        #expect(r.headers.first(name: "retry-after") == "7")
        #expect(r.headers.first(name: "x-chaos-injected") == "rate_limit")
        #expect(base.calls.withLock { $0 } == 0)  // answered without touching the upstream
        #expect(injected.withLock { $0 } == ["serpapi:rate_limit"])
    }

    @Test func truncationBreaksTheBodyMidway() async throws {
        var f = ChaosFaults()
        f.truncateRate = 1
        let chaos = ChaosTransport(base: CountingTransport(), settings: Self.settings(f), now: { 0 })
        let r = try await chaos.send(try Self.request())
        #expect(r.status == .ok)
        await #expect(throws: (any Error).self) { _ = try await r.body.collect(upTo: 1 << 20) }
    }

    @Test func gmailIsExcludedUnlessOptedIn() async throws {
        var f = ChaosFaults()
        f.errorRate = 1
        var s = Self.settings(f)
        let base = CountingTransport()
        let chaos = ChaosTransport(base: base, settings: s, now: { 0 })
        #expect(try await Self.run(chaos, 5, tool: .gmailSend) == Array(repeating: "none:200", count: 5))
        s.gmailOptIn = true
        chaos.update(s)
        #expect(try await Self.run(chaos, 5, tool: .gmailSend) == Array(repeating: "error", count: 5))
        #expect(base.calls.withLock { $0 } == 5)
    }

    @Test func chaosTurnsItselfOffAfterItsEndTime() {
        var f = ChaosFaults()
        f.errorRate = 1
        var s = Self.settings(f, tool: "serpapi")
        s.until = 10_000
        #expect(s.faults(for: .serpapi, now: 9_999) != nil)
        #expect(s.faults(for: .serpapi, now: 10_000) == nil)
        #expect(s.faults(for: .openai, now: 0) == nil)  // only the tools named (or "*")
        s.enabled = false
        #expect(s.faults(for: .serpapi, now: 0) == nil)
    }

    @Test(arguments: [
        #"{"error_rate": 1.5}"#, #"{"error_rate": -0.1}"#, #"{"error_statuses": [404]}"#, #"{"error_statuses": []}"#,
        #"{"latency_min_ms": 50, "latency_max_ms": 10}"#, #"{"timeout_rate": "x"}"#,
    ])
    func invalidFaultsAreRejected(_ json: String) {
        #expect(throws: (any Error).self) { try JSONDecoder().decode(ChaosFaults.self, from: Data(json.utf8)) }
    }

    @Test func splitMixIsDeterministicAndUniform() {
        var a = SplitMix64(seed: 1)
        var b = SplitMix64(seed: 1)
        var buckets = [Int](repeating: 0, count: 10)
        for _ in 0..<10_000 {
            let x = a.nextDouble()
            #expect(x == b.nextDouble())
            #expect(x >= 0 && x < 1)
            buckets[Int(x * 10)] += 1
        }
        #expect(buckets.allSatisfy { (850...1150).contains($0) }, "\(buckets)")
    }
}
