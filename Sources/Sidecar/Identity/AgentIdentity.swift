import Foundation
import Synchronization
import Policy

/// The authenticated agent behind a request.
struct AgentIdentity: Sendable, Hashable {
    var agentID: String
    var role: String
    /// Token id (`jti`): in the access log, never the token.
    var tokenID: String
    /// The token's own `tool:action` scopes, which narrow the role (nil = no narrowing).
    var scopes: Set<String>?
    var issuedAt: Int64
    var expiresAt: Int64
    /// The run the token is bound to (its `run` claim), if any.
    var run: String? = nil

    /// Anonymous identity used when authentication is turned off (local experiments only).
    static let anonymous = AgentIdentity(agentID: "anonymous", role: "anonymous", tokenID: "-", scopes: nil, issuedAt: 0, expiresAt: .max)

    /// Under 20 % of the lifetime or 5 minutes left: time to fetch a new token.
    func rotationRecommended(now: Int64) -> Bool {
        guard expiresAt != .max else { return false }
        let remaining = expiresAt - now
        return remaining < 300 || Double(remaining) < 0.2 * Double(expiresAt - issuedAt)
    }

    /// `tool:action` allowed by the token's own scopes (`tool:*` allows every action of the tool).
    func tokenAllows(_ scope: String) -> Bool {
        guard let scopes else { return true }
        if scopes.contains(scope) { return true }
        if let colon = scope.firstIndex(of: ":") { return scopes.contains(scope[..<colon] + ":*") }
        return false
    }
}

/// Where a token was found, so exactly that carrier is removed before the request goes upstream.
enum TokenCarrier: Sendable, Hashable {
    case proxyAuthorization
    case agentTokenHeader
    case authorization
    case compatBody

    /// The header field that carried the token (nil: the compatibility body). Every field of that name
    /// is removed before the call goes upstream.
    var fieldName: String? {
        switch self {
        case .proxyAuthorization: "proxy-authorization"
        case .agentTokenHeader: "x-agent-token"
        case .authorization: "authorization"
        case .compatBody: nil
        }
    }
}

/// Finds the presented token. The forward proxy reads `Proxy-Authorization` (Basic with the token as
/// password — what `HTTP_PROXY=http://agent:TOKEN@host:port` makes every client send — or Bearer) and
/// `X-Agent-Token`; reverse routes also read `Authorization: Bearer` (the OpenAI SDK's `api_key`).
/// On the forward proxy `Authorization` belongs to the destination site and is never read.
enum TokenExtractor {
    /// `memo`: the connection's last credential (see `CredentialMemo`), so a repeated one is not decoded again.
    static func token(in headers: HTTPHeadersLike, forwardProxy: Bool, memo: CredentialMemo? = nil) -> (String, TokenCarrier)? {
        func decoded(_ value: String) -> String? { memo?.token(raw: value, decode: credential) ?? credential(fromAuthorization: value) }
        if let value = headers.first(name: "proxy-authorization"), let token = decoded(value) {
            return (token, .proxyAuthorization)
        }
        if let value = headers.first(name: "x-agent-token"), !value.isEmpty { return (value, .agentTokenHeader) }
        if !forwardProxy, let value = headers.first(name: "authorization"), let token = decoded(value) {
            return (token, .authorization)
        }
        return nil
    }

    /// `Basic base64(user:token)` → token; `Bearer token` → token. A proxy URL written with the token as
    /// its user name (`http://TOKEN@host:port`, `http://TOKEN:x@host:port`) works too: when the password
    /// is not shaped like a token (a compact JWE: five dot-separated parts) and the user name is, the user
    /// name is the token. Otherwise the password is, as before.
    static func credential(fromAuthorization value: String) -> String? {
        let parts = value.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2 else { return nil }
        switch parts[0].lowercased() {
        case "bearer": return String(parts[1])
        case "basic":
            guard let data = Data(base64Encoded: String(parts[1])), let text = String(data: data, encoding: .utf8),
                let colon = text.firstIndex(of: ":")
            else { return nil }
            let user = text[..<colon]
            let password = text[text.index(after: colon)...]
            if !isTokenShaped(password), isTokenShaped(user) { return String(user) }
            return password.isEmpty ? nil : String(password)
        default: return nil
        }
    }

    /// Five non-empty dot-separated parts, as every agent token (a compact JWE) has.
    static func isTokenShaped(_ s: Substring) -> Bool {
        let parts = s.split(separator: ".", maxSplits: 5, omittingEmptySubsequences: false)
        return parts.count == 5 && parts.allSatisfy { !$0.isEmpty }
    }
}

/// The little of `HTTPHeaders` the extractor needs (keeps it testable without NIO types).
protocol HTTPHeadersLike {
    func first(name: String) -> String?
}

/// The last credential one connection presented: its header value, the token in it, the token's digest.
/// Agents send the same one on every request of a connection, so the base64 of a proxy password is
/// decoded, and the ~1 KB token hashed for the verification cache, once per connection instead of once per
/// request — comparing two equal strings is a memcmp. Requests of one connection are handled one after
/// another, so the lock is never contended.
final class CredentialMemo: Sendable {
    private struct Last {
        var raw = ""
        var token: String?
        var digestOf = ""
        var digest: TokenCache.Digest?
    }

    private let last = Mutex(Last())

    /// The token in an `Authorization`-style value, decoded again only when the value changed.
    func token(raw: String, decode: (String) -> String?) -> String? {
        if let token = last.withLock({ $0.raw == raw ? $0.token : nil }) { return token }
        let token = decode(raw)
        last.withLock { l in
            l.raw = raw
            l.token = token
        }
        return token
    }

    /// The token's digest, computed again only when the token changed.
    func digest(of token: String) -> TokenCache.Digest {
        if let digest = last.withLock({ $0.digestOf == token ? $0.digest : nil }) { return digest }
        let digest = TokenCache.Digest(token)
        last.withLock { l in
            l.digestOf = token
            l.digest = digest
        }
        return digest
    }
}
