import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing
import Upstreams

@testable import Sidecar

/// The control API in Hummingbird's router test mode (no sockets).
@Suite("Control API")
struct ControlAPITests {
    static let adminToken = "adm_test_token_0123456789abcdef"

    static func app(_ f: IdentityFixture, maxBody: Int = 4096) -> some ApplicationProtocol {
        let service = IdentityService(
            state: f.state, minter: f.minter, settings: AuthSettings(), metrics: f.metrics, authenticator: f.authenticator,
            now: { 1_800_000_000 })
        let router = Router(context: AdminContext.self)
        AdminRoutes(metrics: f.metrics, readiness: Readiness()).register(on: router)
        let api = router.group("api").add(middleware: AdminAuthMiddleware(token: AdminToken(adminToken), metrics: f.metrics))
        ControlAPI(identity: service, credentials: nil, maxBodyBytes: maxBody).register(on: api)
        return Application(router: router)
    }

    static let auth: HTTPFields = [.authorization: "Bearer \(adminToken)", .contentType: "application/json"]

    static func json(_ r: TestResponse) -> JSONValue { JSONValue.parse(r.body.readableBytesView) ?? .null }

    @Test func agentsAndTokensLifecycle() async throws {
        let f = try await IdentityFixture()
        try await Self.app(f).test(.router) { client in
            let created = try await client.execute(
                uri: "/api/agents", method: .post, headers: Self.auth,
                body: ByteBuffer(string: #"{"name":"scraper-1","role":"scraper","created_by":"ops"}"#))
            #expect(created.status == .created)
            let agentID = try #require(Self.json(created)["agent_id"]?.stringValue)

            let list = try await client.execute(uri: "/api/agents?role=scraper&status=active", method: .get, headers: Self.auth)
            #expect(Self.json(list)["agents"]?.arrayValue?.contains { $0["agent_id"]?.stringValue == agentID } == true)

            let issued = try await client.execute(
                uri: "/api/agents/\(agentID)/tokens", method: .post, headers: Self.auth,
                body: ByteBuffer(string: #"{"ttl":"10m","scopes":["serpapi:search"]}"#))
            #expect(issued.status == .created)
            let token = try #require(Self.json(issued)["token"]?.stringValue)
            let tokenID = try #require(Self.json(issued)["token_id"]?.stringValue)
            #expect(f.code(f.authenticator.authenticate(token: token, presentedAgentID: nil)) == "ok")

            let tokens = try await client.execute(uri: "/api/agents/\(agentID)/tokens", method: .get, headers: Self.auth)
            let text = String(buffer: tokens.body)
            #expect(text.contains(tokenID) && !text.contains(token), "metadata only, never the token")

            let revoked = try await client.execute(uri: "/api/tokens/\(tokenID)/revoke", method: .post, headers: Self.auth)
            #expect(revoked.status == .ok && Self.json(revoked)["revoked"] == true)
            #expect(f.code(f.authenticator.authenticate(token: token, presentedAgentID: nil)) == "token_revoked")

            let disabled = try await client.execute(uri: "/api/agents/\(agentID)/disable", method: .post, headers: Self.auth)
            #expect(Self.json(disabled)["status"] == "disabled")
        }
    }

    @Test func fourRunrAliases() async throws {
        let f = try await IdentityFixture()
        try await Self.app(f).test(.router) { client in
            let created = try await client.execute(
                uri: "/api/create-agent", method: .post, headers: Self.auth,
                body: ByteBuffer(string: #"{"name":"e","role":"engager","created_by":"sdk"}"#))
            let agentID = try #require(Self.json(created)["agent_id"]?.stringValue)
            let issued = try await client.execute(
                uri: "/api/generate-token", method: .post, headers: Self.auth,
                body: ByteBuffer(string: #"{"agent_id":"\#(agentID)","permissions":["gmail_send:send"],"ttl":600}"#))
            #expect(issued.status == .created)
            #expect(Self.json(issued)["agent_token"] == Self.json(issued)["token"])
            #expect(Self.json(issued)["scopes"] == ["gmail_send:send"])
        }
    }

    @Test func badInput() async throws {
        let f = try await IdentityFixture()
        try await Self.app(f, maxBody: 512).test(.router) { client in
            func problem(_ r: TestResponse) -> String? { Self.json(r)["code"]?.stringValue }
            var r = try await client.execute(uri: "/api/agents", method: .post, body: ByteBuffer(string: "{}"))
            #expect(r.status == .unauthorized && problem(r) == "admin_unauthorized")
            r = try await client.execute(uri: "/api/agents", method: .get, headers: [.authorization: "Bearer wrong-token-wrong-token"])
            #expect(r.status == .unauthorized)
            r = try await client.execute(uri: "/api/agents", method: .post, headers: Self.auth, body: ByteBuffer(string: "{not json"))
            #expect(r.status == .badRequest && problem(r) == "invalid_json")
            // The reason in words, not the Swift value (`invalid("...")`, `duplicateKey("name")`).
            r = try await client.execute(uri: "/api/agents", method: .post, headers: Self.auth, body: ByteBuffer(string: #"{"name":"a","name":"b"}"#))
            #expect(Self.json(r)["detail"]?.stringValue == #"the body is not valid JSON (the JSON body names "name" twice in one object)"#)
            r = try await client.execute(
                uri: "/api/agents", method: .post, headers: [.authorization: "Bearer \(Self.adminToken)", .contentType: "text/plain"],
                body: ByteBuffer(string: "{}"))
            #expect(r.status == .unsupportedMediaType)
            r = try await client.execute(uri: "/api/agents", method: .post, headers: Self.auth, body: ByteBuffer(string: #"{"name":"","role":"Bad Role!"}"#))
            #expect(r.status == .unprocessableContent && problem(r) == "validation_failed")
            let fields = Self.json(r)["errors"]?.arrayValue?.compactMap { $0["field"]?.stringValue }
            #expect(fields == ["name", "role", "created_by"])
            // Stored bodies are written back from doubles: a number that would come back changed is refused.
            r = try await client.execute(
                uri: "/api/agents", method: .post, headers: Self.auth,
                body: ByteBuffer(string: #"{"name":"n","role":"developer","created_by":"me","metadata":{"id":12345678901234567}}"#))
            #expect(r.status == .unprocessableContent && problem(r) == "validation_failed")
            r = try await client.execute(uri: "/api/agents/agt_missing", method: .get, headers: Self.auth)
            #expect(r.status == .notFound && problem(r) == "not_found")
            r = try await client.execute(uri: "/api/tokens/tok_missing/revoke", method: .post, headers: Self.auth)
            #expect(r.status == .notFound)
            r = try await client.execute(
                uri: "/api/agents/agt_a/tokens", method: .post, headers: Self.auth, body: ByteBuffer(string: #"{"ttl":"48h"}"#))
            #expect(r.status == .unprocessableContent, "over max_ttl")
            r = try await client.execute(
                uri: "/api/agents/agt_a/tokens", method: .post, headers: Self.auth, body: ByteBuffer(string: #"{"scopes":["ftp:get"]}"#))
            #expect(r.status == .unprocessableContent)
            r = try await client.execute(
                uri: "/api/agents", method: .post, headers: Self.auth, body: ByteBuffer(string: String(repeating: " ", count: 2000) + "{}"))
            #expect(r.status == .contentTooLarge && problem(r) == "body_too_large")
            r = try await client.execute(uri: "/healthz", method: .get)
            #expect(r.status == .ok, "health stays open")
        }
    }
}
