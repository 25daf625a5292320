import Crypto
import Foundation
import HTTPTypes
import Hummingbird

/// The admin token that guards every mutating or secret-revealing control route. Redacts itself.
struct AdminToken: Sendable, CustomStringConvertible {
    private let digest: [UInt8]

    init(_ token: String) { digest = Array(SHA256.hash(data: Array(token.utf8))) }

    /// An operator's token from `source` (a variable or a file), trimmed; refused when short.
    init(operators text: String, source: String) throws {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard t.count >= 16 else { throw VaultError("\(source): the admin token must be at least 16 characters") }
        self.init(t)
    }

    /// `SIDECAR_ADMIN_TOKEN`, else the token file; the file is created (0600, 256 random bits) on first
    /// start so a fresh install is never left with a guessable default. An operator's token, from either
    /// place, is trimmed (a Kubernetes secret or `echo` leaves a newline) and must be 16 characters or more:
    /// the admin port answers 100 guesses a second per address.
    static func load(path: String, environment: [String: String]) throws -> (AdminToken, generated: Bool) {
        if let raw = environment["SIDECAR_ADMIN_TOKEN"], !raw.isEmpty {
            return (try AdminToken(operators: raw, source: "SIDECAR_ADMIN_TOKEN"), false)
        }
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            return (try AdminToken(operators: text, source: path), false)
        }
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let token = "adm_" + RequestID.generate() + RequestID.generate()
        guard FileManager.default.createFile(atPath: path, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw VaultError("cannot write \(path)")
        }
        return (AdminToken(token), true)
    }

    /// Constant-time comparison of digests, so timing does not leak how much of a guess was right.
    func matches(_ presented: String) -> Bool {
        let other = Array(SHA256.hash(data: Array(presented.utf8)))
        var diff: UInt8 = 0
        for i in 0..<digest.count { diff |= digest[i] ^ other[i] }
        return diff == 0
    }

    var description: String { "AdminToken(<redacted>)" }

    /// The token of `Authorization: Bearer <token>` (the scheme in any case), as every admin route reads it.
    static func bearer(in request: Request) -> String? {
        guard let value = request.headers[.authorization], value.lowercased().hasPrefix("bearer ") else { return nil }
        let token = value.dropFirst(7).trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : token
    }
}

/// Requires `Authorization: Bearer <admin token>` on the control routes it wraps; 401 otherwise.
struct AdminAuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: AdminToken
    let metrics: GatewayMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let presented = AdminToken.bearer(in: request), token.matches(presented) else {
            metrics.securityEvent("admin_auth_failure")
            var error = GatewayError(.adminUnauthorized, "send Authorization: Bearer <admin token>")
            error.headers = [("WWW-Authenticate", #"Bearer realm="agent-sidecar-admin""#)]
            return AdminProblem.response(error)
        }
        return try await next(request, context)
    }
}

/// Problem+json responses on the admin port, from the same error catalog as the proxy.
enum AdminProblem {
    static func response(_ error: GatewayError) -> Response {
        let requestID = RequestID.generate()
        let problem = ResponseMapper.problem(error, requestID: requestID)
        var headers = HTTPFields()
        for (name, value) in problem.headers {
            if let field = HTTPField.Name(name) { headers.append(HTTPField(name: field, value: value)) }
        }
        guard case .buffer(let body) = problem.body else { return Response(status: .internalServerError) }
        return Response(status: .init(code: Int(error.status.code)), headers: headers, body: .init(byteBuffer: body))
    }

    /// A route's answer, or its refusal as a problem; any other failure (a store that threw) as `otherwise`.
    static func respond(otherwise: @autoclosure () -> GatewayError, _ body: () async throws -> Response) async -> Response {
        do { return try await body() } catch let e as GatewayError { return response(e) } catch { return response(otherwise()) }
    }
}

/// Who calls an admin route that agents may use too (runs, approvals): the admin token, or an agent's
/// own token (`Authorization: Bearer`, or `X-Agent-Token`), verified as on the proxy.
enum AdminOrAgent {
    case admin
    case agent(AgentIdentity)

    static func identify(_ request: Request, adminToken: AdminToken, authenticator: Authenticator?, metrics: GatewayMetrics?) throws(GatewayError) -> Self {
        let presented = AdminToken.bearer(in: request) ?? request.headers[HTTPField.Name("X-Agent-Token")!]
        guard let presented, !presented.isEmpty else {
            throw RunsAPI.unauthorized("send Authorization: Bearer <admin token> or the agent's own token")
        }
        if adminToken.matches(presented) { return .admin }
        guard let authenticator else {
            metrics?.securityEvent("admin_auth_failure")
            throw RunsAPI.unauthorized("not the admin token (agent tokens are not accepted: authentication is off)")
        }
        switch authenticator.authenticate(token: presented, presentedAgentID: request.headers[HTTPField.Name("X-Agent-Id")!]) {
        case .success(let identity): return .agent(identity)
        case .failure(var error):
            error.headers.append(("WWW-Authenticate", #"Bearer realm="agent-sidecar-admin""#))
            throw error
        }
    }
}
