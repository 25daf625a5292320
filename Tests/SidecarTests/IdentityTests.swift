import Crypto
import Foundation
import NIOHTTP1
import Policy
import Synchronization
import Testing

@testable import Sidecar

/// Fixtures for identity tests: a fleet, an issuer, a store with agents, a settable clock.
final class IdentityFixture: Sendable {
    static let fleet = try! FleetDecryptionKey.generate()
    static let issuer = IssuerSigningKey.generateES256()
    let store: SQLiteIdentityStore
    let state: IdentityState
    let metrics = GatewayMetrics()
    let clock = ManualClock(1_800_000_000)
    let authenticator: Authenticator
    let minter = TokenMinter(signingKey: IdentityFixture.issuer, encryptionKey: IdentityFixture.fleet.publicKey)

    init(sidecarID: String = "sidecar-1") async throws {
        store = try SQLiteIdentityStore(path: ":memory:")
        state = IdentityState(store: store)
        var settings = AuthSettings()
        settings.sidecarID = sidecarID
        let verifier = TokenVerifier(
            decryptionKeys: [Self.fleet], issuerKeys: [Self.issuer.verificationKey], issuer: "agent-sidecar", audience: "agent-sidecar")
        let clock = self.clock
        authenticator = Authenticator(
            verifier: verifier, state: state, settings: settings, metrics: metrics, now: { clock.now },
            logger: .init(label: "test"))
        for (id, status) in [("agt_a", AgentRecord.Status.active), ("agt_b", .active), ("agt_off", .disabled)] {
            try await store.createAgent(AgentRecord(id: id, name: id, role: "scraper", status: status, createdBy: "t", createdAt: 0))
        }
        try await state.refresh()
    }

    var now: Int64 { clock.now }

    func token(agent: String = "agt_a", jti: String = "tok_1", ttl: Int64 = 900, scopes: [String]? = nil, sidecars: [String]? = nil) -> String {
        try! minter.mint(
            TokenClaims(iss: "agent-sidecar", sub: agent, aud: ["agent-sidecar"], iat: now, nbf: now, exp: now + ttl, jti: jti, role: "scraper",
                        scopes: scopes, sidecars: sidecars))
    }

    func code(_ result: Result<AgentIdentity, GatewayError>) -> String {
        switch result {
        case .success: return "ok"
        case .failure(let e): return e.codeString
        }
    }
}

@Suite("Authentication")
struct AuthenticatorTests {
    @Test func verifiesOnceThenServesFromCache() async throws {
        let f = try await IdentityFixture()
        let token = f.token()
        for _ in 0..<5 { #expect(f.code(f.authenticator.authenticate(token: token, presentedAgentID: nil)) == "ok") }
        let text = String(decoding: f.metrics.exposition(), as: UTF8.self)
        #expect(text.contains(#"gateway_token_validations_total{result="ok"} 1"#))
        #expect(text.contains(#"gateway_token_validations_total{result="cached"} 4"#))
    }

    @Test func refusalsInOrder() async throws {
        let f = try await IdentityFixture()
        #expect(f.code(f.authenticator.authenticate(token: nil, presentedAgentID: nil)) == "token_missing")
        #expect(f.code(f.authenticator.authenticate(token: "x.y", presentedAgentID: nil)) == "token_malformed")
        #expect(f.code(f.authenticator.authenticate(token: f.token(agent: "agt_off"), presentedAgentID: nil)) == "agent_disabled")
        #expect(f.code(f.authenticator.authenticate(token: f.token(agent: "agt_nobody"), presentedAgentID: nil)) == "agent_unknown")
        #expect(f.code(f.authenticator.authenticate(token: f.token(agent: "agt_a"), presentedAgentID: "agt_b")) == "provenance_mismatch")
        #expect(f.code(f.authenticator.authenticate(token: f.token(jti: "t2", sidecars: ["sidecar-9"]), presentedAgentID: nil)) == "provenance_mismatch")
        #expect(f.code(f.authenticator.authenticate(token: f.token(jti: "t3", sidecars: ["sidecar-1"]), presentedAgentID: "agt_a")) == "ok")
    }

    @Test func expiryIsCheckedEvenOnTheCachedPath() async throws {
        let f = try await IdentityFixture()
        let token = f.token(ttl: 60)
        #expect(f.code(f.authenticator.authenticate(token: token, presentedAgentID: nil)) == "ok")
        f.clock.advance(120)
        #expect(f.code(f.authenticator.authenticate(token: token, presentedAgentID: nil)) == "token_expired")
    }

    @Test func revocationAndDisablingApplyAtOnce() async throws {
        let f = try await IdentityFixture()
        let service = IdentityService(state: f.state, minter: f.minter, settings: AuthSettings(), metrics: f.metrics, authenticator: f.authenticator, now: { 1_800_000_000 })
        let agent = try await service.createAgent(name: "n", role: "scraper", createdBy: "t")
        let issued = try await service.issueToken(for: agent, ttl: .seconds(600), scopes: nil)
        #expect(f.code(f.authenticator.authenticate(token: issued.token, presentedAgentID: nil)) == "ok")
        _ = try await service.revoke(tokenID: issued.record.jti)
        #expect(f.code(f.authenticator.authenticate(token: issued.token, presentedAgentID: nil)) == "token_revoked")
        let second = try await service.issueToken(for: agent, ttl: .seconds(600), scopes: nil)
        #expect(f.code(f.authenticator.authenticate(token: second.token, presentedAgentID: nil)) == "ok")
        _ = try await service.setStatus(agentID: agent.id, .disabled)
        #expect(f.code(f.authenticator.authenticate(token: second.token, presentedAgentID: nil)) == "agent_disabled")
        await #expect(throws: IdentityService.IssueError.self) { try await service.issueToken(for: agent, ttl: .seconds(48 * 3600), scopes: nil) }
    }

    @Test func scopesNarrowTheCall() {
        let id = AgentIdentity(agentID: "a", role: "r", tokenID: "t", scopes: ["serpapi:search", "http_fetch:*"], issuedAt: 0, expiresAt: 100)
        #expect(id.tokenAllows("serpapi:search") && id.tokenAllows("http_fetch:head"))
        #expect(!id.tokenAllows("openai:chat") && !id.tokenAllows("gmail_send:send"))
        #expect(AgentIdentity.anonymous.tokenAllows("gmail_send:send"))
    }

    @Test(arguments: [(Int64(1000), Int64(850), true), (1000, 700, false), (100_000, 99_800, true), (100_000, 50_000, false)])
    func rotationRecommendedNearExpiry(_ lifetime: Int64, _ elapsed: Int64, _ expected: Bool) {
        let id = AgentIdentity(agentID: "a", role: "r", tokenID: "t", scopes: nil, issuedAt: 0, expiresAt: lifetime)
        #expect(id.rotationRecommended(now: elapsed) == expected)
    }
}

@Suite("Token extraction")
struct TokenExtractorTests {
    @Test func forwardProxyReadsProxyAuthorizationAndNeverAuthorization() {
        let basic = "Basic " + Data("agent:TOKEN-1".utf8).base64EncodedString()
        #expect(TokenExtractor.token(in: HTTPHeaders([("Proxy-Authorization", basic)]), forwardProxy: true)?.0 == "TOKEN-1")
        #expect(TokenExtractor.token(in: HTTPHeaders([("Proxy-Authorization", "Bearer TOKEN-2")]), forwardProxy: true)?.0 == "TOKEN-2")
        #expect(TokenExtractor.token(in: HTTPHeaders([("X-Agent-Token", "TOKEN-3")]), forwardProxy: true)?.1 == .agentTokenHeader)
        #expect(TokenExtractor.token(in: HTTPHeaders([("Authorization", "Bearer site")]), forwardProxy: true) == nil)
        #expect(TokenExtractor.token(in: HTTPHeaders([("Authorization", "Bearer T4")]), forwardProxy: false)?.1 == .authorization)
        #expect(TokenExtractor.token(in: HTTPHeaders([("Proxy-Authorization", "Basic !!!")]), forwardProxy: true) == nil)
    }

    /// A proxy URL with the token as its user name (`http://TOKEN@host`, `http://TOKEN:x@host`) finds it too;
    /// a token-shaped password always wins; anything else is read as before (the password, or nothing).
    @Test(arguments: [
        ("agent:a.b.c.d.e", "a.b.c.d.e"), ("a.b.c.d.e:", "a.b.c.d.e"), ("a.b.c.d.e:x", "a.b.c.d.e"),
        ("v.w.x.y.z:a.b.c.d.e", "a.b.c.d.e"), ("agent:plain", "plain"), ("agent:", nil), (":", nil),
        ("a.b.c.d:", nil), ("a..c.d.e:", nil), ("a.b.c.d.e.:x", "x"), (".a.b.c.d:x", "x"), ("a.b.c.d.e.f:", nil),
    ] as [(String, String?)])
    func aTokenAsTheProxyUserName(_ userinfo: String, _ expected: String?) {
        let basic = "Basic " + Data(userinfo.utf8).base64EncodedString()
        #expect(TokenExtractor.credential(fromAuthorization: basic) == expected)
    }

    @Test func theCarrierIsRemoved() {
        let h = HTTPHeaders([("Authorization", "Bearer T"), ("Accept", "*/*")])
        #expect(Pipeline.removingCarrier(.authorization, from: h).map(\.name) == ["Accept"])
    }
}

/// The contract every identity store implementation must meet (SQLite here; Redis runs it too).
enum IdentityStoreContract {
    static func run(_ store: any IdentityStore) async throws {
        try await store.createAgent(AgentRecord(id: "a1", name: "one", role: "scraper", status: .active, createdBy: "t", createdAt: 10))
        try await store.createAgent(AgentRecord(id: "a2", name: "two", role: "engager", status: .active, createdBy: "t", createdAt: 20))
        #expect(try await store.agent(id: "a1")?.name == "one")
        #expect(try await store.agent(id: "nope") == nil)
        #expect(try await store.agents(role: "engager", status: nil).map(\.id) == ["a2"])
        #expect(try await store.setAgentStatus(id: "a1", status: .disabled))
        #expect(try await !store.setAgentStatus(id: "nope", status: .disabled))
        #expect(try await store.agents(role: nil, status: .disabled).map(\.id) == ["a1"])
        let t = TokenRecord(jti: "j1", agentId: "a2", issuedAt: 1, expiresAt: 99, scopes: ["serpapi:search"], source: .api, revokedAt: nil)
        try await store.recordToken(t)
        try await store.recordToken(TokenRecord(jti: "j1", agentId: "other", issuedAt: 5, expiresAt: 5, scopes: nil, source: .observed, revokedAt: nil))
        #expect(try await store.token(jti: "j1") == t, "first record wins")
        #expect(try await store.tokens(agentId: "a2").map(\.jti) == ["j1"])
        #expect(try await store.revokeToken(jti: "j1", at: 50))
        #expect(try await !store.revokeToken(jti: "unknown", at: 50))
        #expect(try await store.token(jti: "j1")?.revokedAt == 50)
        let snap = try await store.snapshot()
        #expect(snap.agents == ["a1": .disabled, "a2": .active] && snap.revoked == ["j1"])
    }
}

@Suite("Identity store contract")
struct IdentityStoreTests {
    @Test func sqliteInMemory() async throws {
        try await IdentityStoreContract.run(try SQLiteIdentityStore(path: ":memory:"))
    }

    @Test func sqliteSurvivesReopening() async throws {
        let path = NSTemporaryDirectory() + "identity-\(UUID().uuidString).sqlite"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await IdentityStoreContract.run(try SQLiteIdentityStore(path: path))
        let reopened = try SQLiteIdentityStore(path: path)
        #expect(try await reopened.snapshot().revoked == ["j1"])
    }
}

/// A settable clock in unix seconds, shared by reference.
final class ManualClock: Sendable {
    private let value: Atomic<Int64>
    init(_ start: Int64) { value = Atomic(start) }
    var now: Int64 { value.load(ordering: .relaxed) }
    func advance(_ seconds: Int64) { value.wrappingAdd(seconds, ordering: .relaxed) }
    func set(_ seconds: Int64) { value.store(seconds, ordering: .relaxed) }
}
