import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Upstreams

/// Exchanges an OAuth2 refresh token for an access token (RFC 6749 §6). A protocol so tests can count
/// exchanges without a network.
protocol OAuthTokenEndpoint: Sendable {
    func exchange(_ secret: OAuthRefreshSecret) async throws -> (accessToken: String, expiresIn: Int64)
}

/// The live token endpoint over async-http-client (URL configurable so tests use a local fake).
struct HTTPTokenEndpoint: OAuthTokenEndpoint {
    let client: HTTPClient
    let url: String

    func exchange(_ secret: OAuthRefreshSecret) async throws -> (accessToken: String, expiresIn: Int64) {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers = ["Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"]
        var form = QueryString()
        form.append("grant_type", "refresh_token")
        form.append("refresh_token", secret.refreshToken)
        form.append("client_id", secret.clientID)
        form.append("client_secret", secret.clientSecret)
        request.body = .bytes(ByteBuffer(string: form.encoded))
        let response = try await client.execute(request, timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 64 * 1024)
        guard response.status == .ok, let json = JSONValue.parse(body.readableBytesView),
            let token = json["access_token"]?.stringValue, !token.isEmpty
        else { throw VaultError("token endpoint answered \(response.status.code)") }
        return (token, Int64(json["expires_in"]?.intValue ?? 3600))
    }
}

/// Gmail access tokens: cached until shortly before they expire, refreshed single-flight (concurrent
/// calls during a refresh share it), and re-obtained when the sealed refresh secret is rotated.
actor GmailTokenProvider {
    private let endpoint: any OAuthTokenEndpoint
    private let now: @Sendable () -> Int64
    private var cached: (version: Int, credential: Credential, refreshAt: Int64)?
    private var refreshing: (version: Int, task: Task<(Credential, Int64), any Error>)?
    private(set) var exchanges = 0

    /// Refresh this long before expiry, so a request never goes out with a token about to die — or at
    /// half the token's life when that is shorter: a token endpoint answering `expires_in` under the margin
    /// made every call exchange the refresh token again.
    static let margin: Int64 = 60

    static func refreshAt(now: Int64, expiresIn: Int64) -> Int64 {
        let life = max(0, expiresIn)
        return now + max(life / 2, life - margin)
    }

    /// Told each new access token (the exfiltration check's catalog).
    private let onToken: (@Sendable (Credential) -> Void)?

    init(endpoint: any OAuthTokenEndpoint, now: @escaping @Sendable () -> Int64, onToken: (@Sendable (Credential) -> Void)? = nil) {
        self.endpoint = endpoint
        self.now = now
        self.onToken = onToken
    }

    func accessToken(for secret: OAuthRefreshSecret, version: Int) async throws -> Credential {
        if let c = cached, c.version == version, c.refreshAt > now() { return c.credential }
        // Single flight: callers arriving during a refresh (the actor is re-entered while it awaits) share it.
        if let r = refreshing, r.version == version { return try await r.task.value.0 }
        let endpoint = self.endpoint
        let now = self.now
        let task = Task { () throws -> (Credential, Int64) in
            let (token, expiresIn) = try await endpoint.exchange(secret)
            return (Credential(token, version: version), Self.refreshAt(now: now(), expiresIn: expiresIn))
        }
        refreshing = (version, task)
        defer { if refreshing?.version == version { refreshing = nil } }
        let (credential, refreshAt) = try await task.value
        exchanges += 1
        cached = (version, credential, refreshAt)
        onToken?(credential)
        return credential
    }
}
