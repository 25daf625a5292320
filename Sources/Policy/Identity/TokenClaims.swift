import Foundation

/// The claims of an agent token (the inner JWS payload).
public struct TokenClaims: Sendable, Hashable, Codable {
    public var iss: String
    /// The agent id.
    public var sub: String
    public var aud: [String]
    public var iat: Int64
    public var nbf: Int64?
    public var exp: Int64
    /// The token id: what a revocation names.
    public var jti: String
    public var role: String
    /// `tool:action` entries that narrow the role (nil = the role's full set).
    public var scopes: [String]?
    /// Sidecar ids the token is bound to (nil = any sidecar of the fleet).
    public var sidecars: [String]?
    /// The run the token is bound to: every call made with it belongs to that run, and it cannot act for
    /// another (nil = any of the agent's runs, named per call).
    public var run: String?

    public init(
        iss: String, sub: String, aud: [String], iat: Int64, nbf: Int64? = nil, exp: Int64, jti: String, role: String,
        scopes: [String]? = nil, sidecars: [String]? = nil, run: String? = nil
    ) {
        self.iss = iss
        self.sub = sub
        self.aud = aud
        self.iat = iat
        self.nbf = nbf
        self.exp = exp
        self.jti = jti
        self.role = role
        self.scopes = scopes
        self.sidecars = sidecars
        self.run = run
    }

    enum CodingKeys: String, CodingKey { case iss, sub, aud, iat, nbf, exp, jti, role, scopes, sidecars, run }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        iss = try c.decode(String.self, forKey: .iss)
        sub = try c.decode(String.self, forKey: .sub)
        if let one = try? c.decode(String.self, forKey: .aud) { aud = [one] } else { aud = try c.decode([String].self, forKey: .aud) }
        iat = try c.decode(Int64.self, forKey: .iat)
        nbf = try c.decodeIfPresent(Int64.self, forKey: .nbf)
        exp = try c.decode(Int64.self, forKey: .exp)
        jti = try c.decode(String.self, forKey: .jti)
        role = try c.decode(String.self, forKey: .role)
        scopes = try c.decodeIfPresent([String].self, forKey: .scopes)
        sidecars = try c.decodeIfPresent([String].self, forKey: .sidecars)
        run = try c.decodeIfPresent(String.self, forKey: .run)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(iss, forKey: .iss)
        try c.encode(sub, forKey: .sub)
        if aud.count == 1 { try c.encode(aud[0], forKey: .aud) } else { try c.encode(aud, forKey: .aud) }
        try c.encode(iat, forKey: .iat)
        try c.encodeIfPresent(nbf, forKey: .nbf)
        try c.encode(exp, forKey: .exp)
        try c.encode(jti, forKey: .jti)
        try c.encode(role, forKey: .role)
        try c.encodeIfPresent(scopes, forKey: .scopes)
        try c.encodeIfPresent(sidecars, forKey: .sidecars)
        try c.encodeIfPresent(run, forKey: .run)
    }
}
