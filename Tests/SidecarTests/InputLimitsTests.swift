import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import Testing
import Upstreams

@testable import Sidecar

@Suite("Request input limits and single-valued fields")
struct InputLimitsTests {
    @Test func aChunkExtensionFloodIsRefusedOnceOverTheAllowance() {
        var g = RequestInputGuard()
        #expect(g.input(ByteBuffer(string: "POST /openai/v1/chat/completions HTTP/1.1\r\n"), betweenRequests: true) == .startHeadDeadline)
        let hasBody = g.head(contentLength: nil, chunked: true)
        #expect(hasBody)
        // 2 bytes of data behind ever more extension bytes.
        var refused = false
        for _ in 0..<64 {
            g.body(2)
            if g.input(ByteBuffer(repeating: UInt8(ascii: "a"), count: 4096), betweenRequests: false) == .refuseFraming {
                refused = true
                break
            }
        }
        #expect(refused && g.overhead <= RequestInputGuard.overheadAllowance + 2 * 4096 + 128)
    }

    @Test func ordinaryChunkingIsNeverRefused() {
        var g = RequestInputGuard()
        _ = g.input(ByteBuffer(string: "POST / HTTP/1.1\r\n"), betweenRequests: true)
        _ = g.head(contentLength: nil, chunked: true)
        // 1 MiB in 100-byte chunks: "64\r\n" + 100 bytes + "\r\n" per chunk.
        for _ in 0..<10_486 {
            #expect(g.input(ByteBuffer(repeating: 0x61, count: 106), betweenRequests: false) == .none)
            g.body(100)
        }
        g.end()
        #expect(g.input(ByteBuffer(repeating: 0x61, count: 1 << 20), betweenRequests: false) == .none)
    }

    @Test func theHeadDeadlineStartsWithARequestsFirstByteOnly() {
        var g = RequestInputGuard()
        #expect(g.input(ByteBuffer(string: "\r\n"), betweenRequests: true) == .none)  // stray CRLF between requests
        #expect(g.input(ByteBuffer(string: "G"), betweenRequests: true) == .startHeadDeadline)
        #expect(g.input(ByteBuffer(string: "E"), betweenRequests: true) == .none)  // already running
        let noBody = g.head(contentLength: nil, chunked: false)
        #expect(!noBody)  // no body, no body deadline
        let body = g.head(contentLength: 10, chunked: false)
        #expect(body)
        #expect(g.input(ByteBuffer(string: "P"), betweenRequests: false) == .none)  // while a request is being read
        #expect(g.input(ByteBuffer(string: "P"), betweenRequests: true) == .startHeadDeadline)
    }

    static func headers(_ fields: [(String, String)]) -> HTTPHeaders { HTTPHeaders(fields) }

    @Test(arguments: [
        ([("X-Agent-Id", "agt_a"), ("X-Agent-Id", "agt_b")], Entry.forward, true),
        ([("x-agent-id", "agt_b"), ("X-AGENT-ID", "agt_a")], .reverse, true),
        ([("X-Agent-Id", "agt_a, agt_b")], .forward, true),
        ([("X-Run-Id", "r1,r2")], .forward, true),
        ([("X-Request-Timeout", "1"), ("X-Request-Timeout", "100")], .reverse, true),
        ([("X-Request-Id", "a"), ("X-Request-Id", "b")], .reverse, true),
        ([("Proxy-Authorization", "Basic a"), ("Proxy-Authorization", "Basic b")], .forward, true),
        ([("Host", "a"), ("Host", "b")], .reverse, true),
        ([("Authorization", "Bearer a"), ("Authorization", "Bearer b")], .reverse, true),
        ([("Authorization", "Bearer a"), ("Authorization", "Bearer b")], .forward, false),  // the destination's business
        ([("Content-Type", "application/json"), ("Content-Type", "text/plain")], .compat, true),
        ([("Content-Type", "application/json"), ("Content-Type", "text/plain")], .reverse, false),
        ([("X-Agent-Id", "agt_a"), ("Accept", "a, b"), ("Accept", "c")], .reverse, false),
        ([("X-Request-Id", "a,b")], .reverse, false),  // a request id may hold a comma (it is replaced if unsafe)
    ])
    func repeatedSingleValuedFields(_ fields: [(String, String)], _ entry: Entry, _ refused: Bool) {
        let problem = SingleValuedFields.problem(in: Self.headers(fields), entry: entry)
        #expect((problem != nil) == refused)
        if let problem { #expect(problem.codeString == "ambiguous_header" && problem.status == .badRequest) }
    }

    /// Fields are remembered as bits up to 64 names and in a set past them: a repeat is found on either
    /// side of the cut, and distinct fields on both sides are no repeat.
    @Test func repeatsAreFoundPastSixtyFourNames() {
        let others = (0..<80).map { "x-other-\($0)" }
        for k in [0, 50, 52, 53, 54, 79] {
            let repeated = [(others[k], "a"), (others[k], "b")]
            #expect(SingleValuedFields.problem(in: repeated, authorization: false, contentType: false, others: others) != nil, "\(k)")
        }
        let distinct = others.map { ($0, "v") } + [("X-Agent-Id", "agt_a"), ("Authorization", "Bearer a")]
        #expect(SingleValuedFields.problem(in: distinct, authorization: true, contentType: true, others: others) == nil)
    }

    /// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with one that is not `host[:port]`, is 400;
    /// HTTP/1.0 may leave it out, and so may `CONNECT` (its target is in the request line).
    @Test(arguments: [
        (HTTPMethod.GET, HTTPVersion.http1_1, "serpapi.com", true),
        (.GET, .http1_1, "127.0.0.1:8080", true),
        (.GET, .http1_1, "[::1]:8080", true),
        (.GET, .http1_1, "[2001:db8::1]", true),
        (.GET, .http1_1, "my_host.internal", true),
        (.GET, .http1_1, "", true),
        (.GET, .http1_1, nil, false),
        (.POST, .http1_1, nil, false),
        (.GET, .http1_0, nil, true),
        (.CONNECT, .http1_1, nil, true),
        (.CONNECT, .http1_1, "api.openai.com:443", true),
        (.CONNECT, .http1_1, "api.openai.com:443 x", false),
        (.GET, .http1_1, "a b", false),
        (.GET, .http1_1, "user@evil.test", false),
        (.GET, .http1_1, "evil.test/path", false),
        (.GET, .http1_1, "evil.test?x", false),
        (.GET, .http1_1, "evil.test#x", false),
        (.GET, .http1_1, "host:port", false),
        (.GET, .http1_1, "host:123456", false),
        (.GET, .http1_1, "host:80:80", false),
        (.GET, .http1_1, "[::1", false),
        (.GET, .http1_1, "[]", false),
        (.GET, .http1_1, "[::1]x", false),
        (.GET, .http1_1, "é.test", false),
        (.GET, .http1_1, "a\tb", false),
    ] as [(HTTPMethod, HTTPVersion, String?, Bool)])
    func theHostField(_ method: HTTPMethod, _ version: HTTPVersion, _ host: String?, _ accepted: Bool) {
        var head = HTTPRequestHead(version: version, method: method, uri: method == .CONNECT ? "api.openai.com:443" : "/serpapi/search")
        if let host { head.headers.add(name: "Host", value: host) }
        let problem = HostField.problem(in: head)
        #expect((problem == nil) == accepted, "\(host ?? "nil")")
        if let problem { #expect(problem.codeString == "malformed_request" && problem.status == .badRequest) }
    }
}

/// An identity store that can lose its data, as Redis without persistence does.
final class ForgetfulStore: IdentityStore, @unchecked Sendable {
    let state = Mutex<(agents: [String: AgentRecord], revoked: Set<String>, epoch: String?)>(([:], [], nil))

    func wipe() { state.withLock { $0 = ([:], [], nil) } }

    func createAgent(_ agent: AgentRecord) async throws { state.withLock { $0.agents[agent.id] = agent } }
    func agent(id: String) async throws -> AgentRecord? { state.withLock { $0.agents[id] } }
    func agents(role: String?, status: AgentRecord.Status?) async throws -> [AgentRecord] { state.withLock { Array($0.agents.values) } }
    func setAgentStatus(id: String, status: AgentRecord.Status) async throws -> Bool {
        state.withLock { s in
            guard s.agents[id] != nil else { return false }
            s.agents[id]!.status = status
            return true
        }
    }
    func recordToken(_ token: TokenRecord) async throws {}
    func token(jti: String) async throws -> TokenRecord? { nil }
    func tokens(agentId: String) async throws -> [TokenRecord] { [] }
    func revokeToken(jti: String, at: Int64) async throws -> Bool {
        state.withLock { _ = $0.revoked.insert(jti) }
        return true
    }
    func snapshot() async throws -> IdentitySnapshot {
        state.withLock { s in
            var snapshot = IdentitySnapshot(agents: s.agents.mapValues(\.status), revoked: s.revoked)
            snapshot.agentRecords = Array(s.agents.values)
            snapshot.epoch = s.epoch
            return snapshot
        }
    }
    var tracksEpochs: Bool { true }
    func claimEpoch(_ candidate: String) async throws -> String {
        state.withLock { s in
            if s.epoch == nil { s.epoch = candidate }
            return s.epoch!
        }
    }
    func merge(_ snapshot: IdentitySnapshot) async throws {
        state.withLock { s in
            for a in snapshot.agentRecords where s.agents[a.id] == nil { s.agents[a.id] = a }
            s.revoked.formUnion(snapshot.revoked)
        }
    }
}

@Suite("Identity snapshot when the shared store loses its data")
struct IdentityDataLossTests {
    static let agent = AgentRecord(id: "agt_1", name: "a", role: "developer", status: .active, createdBy: "t", createdAt: 1)

    @Test func anEmptyStoreNeverReplacesAPopulatedSnapshot() async throws {
        let store = ForgetfulStore()
        try await store.createAgent(Self.agent)
        _ = try await store.revokeToken(jti: "tok_revoked", at: 1)
        let metrics = GatewayMetrics()
        let state = IdentityState(store: store, metrics: metrics)
        try await state.refresh()
        let epoch = try #require(state.snapshot.epoch)
        #expect(state.isRevoked("tok_revoked") && state.status(of: "agt_1") == .active)

        store.wipe()  // Redis restarted without persistence
        try await state.refresh()
        #expect(state.isRevoked("tok_revoked"), "a revocation was forgotten")
        #expect(state.status(of: "agt_1") == .active, "a registered agent was forgotten")
        // ... and the store has been given back what it lost, under the old epoch.
        let restored = try await store.snapshot()
        #expect(restored.revoked.contains("tok_revoked") && restored.agents["agt_1"] == .active && restored.epoch == epoch)
        guard case .restored = state.storeHealth else {
            Issue.record("health is \(state.storeHealth)")
            return
        }
        #expect(String(decoding: metrics.exposition(), as: UTF8.self).contains("gateway_identity_store_data_loss_total 1"))
    }

    @Test func aReplacedStoreIsMergedNotTrusted() async throws {
        let store = ForgetfulStore()
        _ = try await store.revokeToken(jti: "old", at: 1)
        let state = IdentityState(store: store)
        try await state.refresh()
        store.wipe()
        _ = try await store.claimEpoch("someone-elses")  // a fresh sidecar claimed a new generation meanwhile
        _ = try await store.revokeToken(jti: "new", at: 2)
        try await state.refresh()
        #expect(state.isRevoked("old") && state.isRevoked("new") && state.snapshot.epoch == "someone-elses")
    }

    @Test func theLastGoodSnapshotSurvivesARestartOfTheSidecar() async throws {
        let path = NSTemporaryDirectoryPath() + "/identity-\(UInt64.random(in: 0...UInt64.max)).json"
        let store = ForgetfulStore()
        _ = try await store.revokeToken(jti: "tok_revoked", at: 1)
        let first = IdentityState(store: store, localCopy: path)
        try await first.refresh()
        store.wipe()
        // A new process, the store already empty: the local copy says what was known.
        let second = IdentityState(store: store, localCopy: path)
        try await second.refresh()
        #expect(second.isRevoked("tok_revoked"))
        #expect(try await store.snapshot().revoked.contains("tok_revoked"))
    }

    @Test func aNewFleetStartsItsOwnGeneration() async throws {
        let store = ForgetfulStore()
        let state = IdentityState(store: store)
        try await state.refresh()
        #expect(state.snapshot.epoch != nil && state.storeHealth == .ok)
        try await state.refresh()
        #expect(state.storeHealth == .ok)
    }
}

func NSTemporaryDirectoryPath() -> String { FileManagerTemporary.path }

enum FileManagerTemporary {
    static var path: String { ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp" }
}
