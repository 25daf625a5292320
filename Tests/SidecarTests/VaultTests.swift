import Crypto
import Foundation
import Synchronization
import Testing
import Upstreams

@testable import Sidecar

@Suite("Credential vault")
struct VaultTests {
    static let kek = try! KeyEncryptionKey.parse(KeyEncryptionKey.generate(), source: "test")

    static func directory() -> String {
        let d = NSTemporaryDirectory() + "vault-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static func write(_ entry: SealedEntry, _ dir: String, _ name: String) throws {
        try JSONEncoder().encode(entry).write(to: URL(fileURLWithPath: dir + "/" + name))
    }

    @Test func sealsAndUnsealsAndTheHighestVersionWins() throws {
        let dir = Self.directory()
        try Self.write(try SealedEntry.seal(Array("sk-old".utf8), tool: .openai, version: 1, kind: .apiKey, kek: Self.kek, now: 0), dir, "a.sealed")
        try Self.write(try SealedEntry.seal(Array("sk-new".utf8), tool: .openai, version: 2, kind: .apiKey, kek: Self.kek, now: 0), dir, "b.sealed")
        let contents = try VaultContents.load(directory: dir, kek: Self.kek)
        #expect(contents.versions[.openai] == 2)
        guard case .apiKey(let c)? = contents.secrets[.openai] else { Issue.record("missing"); return }
        #expect(c.reveal() == "sk-new" && c.version == 2)
        #expect(VaultContents.nextVersion(for: .openai, in: dir) == 3)
    }

    @Test func relabelledOrWrongKeyEntriesDoNotOpen() throws {
        var entry = try SealedEntry.seal(Array("sk-x".utf8), tool: .openai, version: 1, kind: .apiKey, kek: Self.kek, now: 0)
        entry.tool = "serpapi"
        #expect(throws: VaultError.self) { try entry.unseal(with: Self.kek) }
        entry.tool = "openai"
        entry.version = 9
        #expect(throws: VaultError.self) { try entry.unseal(with: Self.kek) }
        entry.version = 1
        let other = try KeyEncryptionKey.parse(KeyEncryptionKey.generate(), source: "other")
        #expect(throws: VaultError.self) { try entry.unseal(with: other) }
        #expect(try entry.unseal(with: Self.kek) == Array("sk-x".utf8))
    }

    @Test func sealedEntriesWithoutAKEKAreAnError() throws {
        let dir = Self.directory()
        try Self.write(try SealedEntry.seal(Array("k".utf8), tool: .serpapi, version: 1, kind: .apiKey, kek: Self.kek, now: 0), dir, "s.sealed")
        #expect(throws: VaultError.self) { try VaultContents.load(directory: dir, kek: nil) }
    }

    @Test func reloadSwapsAndAFailedReloadKeepsThePrevious() async throws {
        let dir = Self.directory()
        try Self.write(try SealedEntry.seal(Array("serp-v1".utf8), tool: .serpapi, version: 1, kind: .apiKey, kek: Self.kek, now: 0), dir, "1.sealed")
        let gmail = GmailTokenProvider(endpoint: CountingEndpoint(), now: { 0 })
        let source = try VaultCredentialSource(directory: dir, kek: Self.kek, fallback: [.openai: Credential("env-key")], gmail: gmail)
        #expect(try await source.credential(for: .serpapi)?.reveal() == "serp-v1")
        #expect(try await source.credential(for: .openai)?.reveal() == "env-key", "falls back to the environment")
        try Self.write(try SealedEntry.seal(Array("serp-v2".utf8), tool: .serpapi, version: 2, kind: .apiKey, kek: Self.kek, now: 0), dir, "2.sealed")
        try source.reload()
        #expect(try await source.credential(for: .serpapi)?.reveal() == "serp-v2")
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: dir + "/3.sealed"))
        #expect(throws: VaultError.self) { try source.reload() }
        #expect(try await source.credential(for: .serpapi)?.reveal() == "serp-v2")
    }

    @Test func oauthSecretsRedactThemselves() {
        let s = OAuthRefreshSecret(refreshToken: "1//refresh-secret", clientID: "client-123.apps", clientSecret: "GOCSPX-secret")
        var dumped = ""
        dump(s, to: &dumped)
        for text in ["\(s)", String(reflecting: s), dumped] {
            #expect(!text.contains("refresh-secret") && !text.contains("GOCSPX"))
        }
    }
}

/// Counts token exchanges; answers after a short pause so concurrent callers overlap.
final class CountingEndpoint: OAuthTokenEndpoint {
    let calls = Atomic<Int>(0)
    func exchange(_ secret: OAuthRefreshSecret) async throws -> (accessToken: String, expiresIn: Int64) {
        let n = calls.wrappingAdd(1, ordering: .relaxed).newValue
        try await Task.sleep(for: .milliseconds(50))
        return ("ya29.access-\(n)", 3600)
    }
}

@Suite("Gmail access tokens")
struct GmailTokenProviderTests {
    static let secret = OAuthRefreshSecret(refreshToken: "r", clientID: "c", clientSecret: "s")

    @Test func concurrentCallersShareOneRefresh() async throws {
        let endpoint = CountingEndpoint()
        let provider = GmailTokenProvider(endpoint: endpoint, now: { 1000 })
        let tokens = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<20 { group.addTask { try await provider.accessToken(for: Self.secret, version: 1).reveal() } }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(tokens == ["ya29.access-1"] && endpoint.calls.load(ordering: .relaxed) == 1)
    }

    @Test func refreshesShortlyBeforeExpiryAndOnRotation() async throws {
        let endpoint = CountingEndpoint()
        let clock = ManualClock(1000)
        let provider = GmailTokenProvider(endpoint: endpoint, now: { clock.now })
        #expect(try await provider.accessToken(for: Self.secret, version: 1).reveal() == "ya29.access-1")
        clock.set(1000 + 3600 - 120)
        #expect(try await provider.accessToken(for: Self.secret, version: 1).reveal() == "ya29.access-1", "still valid")
        clock.set(1000 + 3600 - 30)
        #expect(try await provider.accessToken(for: Self.secret, version: 1).reveal() == "ya29.access-2", "inside the margin")
        #expect(try await provider.accessToken(for: Self.secret, version: 2).reveal() == "ya29.access-3", "rotated secret")
    }

    /// A token living less than the margin is kept for half its life, not exchanged again on every call;
    /// one said to live no time at all is never kept.
    @Test(arguments: [(3600, 1000 + 3540), (30, 1000 + 15), (0, 1000), (-5, 1000), (9_000_000_000_000_000, 1000 + 9_000_000_000_000_000 - 60)] as [(Int64, Int64)])
    func shortLivedTokensAreKeptForHalfTheirLife(_ expiresIn: Int64, _ refreshAt: Int64) {
        #expect(GmailTokenProvider.refreshAt(now: 1000, expiresIn: expiresIn) == refreshAt)
    }
}
