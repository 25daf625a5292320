import Crypto
import Foundation
import _CryptoExtras

/// Why a token was refused, in the order the checks run. Each maps to one stable problem code.
public enum TokenFailure: String, Error, Sendable, Hashable {
    /// Not five base64url segments, or a header that is not JSON.
    case malformed = "token_malformed"
    /// Anything cryptographic or about who issued it for whom: header not allowlisted, unknown kid,
    /// decryption or signature failure, wrong issuer or audience, not yet valid.
    case invalid = "token_invalid"
    case expired = "token_expired"
}

/// A token that passed the cryptographic and time checks (revocation, agent status and provenance are
/// checked per request by the caller, because they can change while the token is cached).
public struct VerifiedToken: Sendable, Hashable {
    public let claims: TokenClaims
    public let issuerKid: String
}

/// Verifies agent tokens in the documented order, with the time passed in (no global clock):
///
/// 1. JWE header allowlist: exactly `alg: RSA-OAEP-256`, `enc: A256GCM`, no `zip`, no `crit`, a known `kid`,
///    `cty` absent or `JWT`;
/// 2. decrypt, with the received header segment as AAD (a re-encoded header fails);
/// 3. inner JWS: `alg` allowed for the named issuer key (ES256 or HS256 — never `none`), signature;
/// 4. `iss`, `aud`, `nbf`, `exp` with a small leeway.
public struct TokenVerifier: Sendable {
    public let decryptionKeys: [String: FleetDecryptionKey]
    public let issuerKeys: [String: IssuerVerificationKey]
    public let issuer: String
    public let audience: String
    public let leeway: Int64

    public init(decryptionKeys: [FleetDecryptionKey], issuerKeys: [IssuerVerificationKey], issuer: String, audience: String, leeway: Int64 = 30) {
        self.decryptionKeys = Dictionary(decryptionKeys.map { ($0.kid, $0) }, uniquingKeysWith: { a, _ in a })
        self.issuerKeys = Dictionary(issuerKeys.map { ($0.kid, $0) }, uniquingKeysWith: { a, _ in a })
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
    }

    public func verify(_ token: String, now: Int64) -> Result<VerifiedToken, TokenFailure> {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 5, token.utf8.count <= 16 * 1024 else { return .failure(.malformed) }
        guard let headerBytes = Base64URL.decode(parts[0]),
            let header = try? JSONSerialization.jsonObject(with: Data(headerBytes)) as? [String: Any],
            let encryptedKey = Base64URL.decode(parts[1]), let iv = Base64URL.decode(parts[2]),
            let ciphertext = Base64URL.decode(parts[3]), let tag = Base64URL.decode(parts[4])
        else { return .failure(.malformed) }

        // 1. Header allowlist.
        guard header["alg"] as? String == "RSA-OAEP-256", header["enc"] as? String == "A256GCM",
            header["zip"] == nil, header["crit"] == nil,
            (header["cty"] == nil || (header["cty"] as? String)?.uppercased() == "JWT"),
            let kid = header["kid"] as? String, let key = decryptionKeys[kid],
            iv.count == 12, tag.count == 16
        else { return .failure(.invalid) }

        // 2. Decrypt: unwrap the content key, then open with AAD = the header segment as received.
        guard let cek = try? key.key.decrypt(encryptedKey, padding: .PKCS1_OAEP_SHA256), cek.count == 32,
            let nonce = try? AES.GCM.Nonce(data: iv),
            let box = try? AES.GCM.SealedBox(nonce: nonce, ciphertext: ciphertext, tag: tag),
            let plaintext = try? AES.GCM.open(box, using: SymmetricKey(data: cek), authenticating: Array(parts[0].utf8))
        else { return .failure(.invalid) }

        // 3. Inner JWS.
        guard let jws = String(bytes: plaintext, encoding: .utf8) else { return .failure(.invalid) }
        let jwsParts = jws.split(separator: ".", omittingEmptySubsequences: false)
        guard jwsParts.count == 3, let jwsHeaderBytes = Base64URL.decode(jwsParts[0]),
            let jwsHeader = try? JSONSerialization.jsonObject(with: Data(jwsHeaderBytes)) as? [String: Any],
            let payload = Base64URL.decode(jwsParts[1]), let signature = Base64URL.decode(jwsParts[2])
        else { return .failure(.invalid) }
        guard jwsHeader["crit"] == nil, let alg = jwsHeader["alg"] as? String else { return .failure(.invalid) }
        let issuerKey: IssuerVerificationKey
        if let kid = jwsHeader["kid"] as? String {
            guard let k = issuerKeys[kid] else { return .failure(.invalid) }
            issuerKey = k
        } else {
            let candidates = issuerKeys.values.filter { $0.algorithm == alg }
            guard candidates.count == 1 else { return .failure(.invalid) }
            issuerKey = candidates[0]
        }
        guard alg == issuerKey.algorithm else { return .failure(.invalid) }
        let signingInput = Array(jwsParts[0].utf8) + [UInt8(ascii: ".")] + Array(jwsParts[1].utf8)
        guard issuerKey.verify(signature: signature, of: signingInput) else { return .failure(.invalid) }

        // 4. Claims.
        guard let claims = try? JSONDecoder().decode(TokenClaims.self, from: Data(payload)) else { return .failure(.invalid) }
        guard claims.iss == issuer, claims.aud.contains(audience), !claims.sub.isEmpty, !claims.jti.isEmpty else {
            return .failure(.invalid)
        }
        if let nbf = claims.nbf, nbf > now + leeway { return .failure(.invalid) }
        if claims.iat > now + leeway { return .failure(.invalid) }
        if claims.exp <= now - leeway { return .failure(.expired) }
        return .success(VerifiedToken(claims: claims, issuerKid: issuerKey.kid))
    }
}
