import Crypto
import Foundation
import _CryptoExtras

/// Mints agent tokens: a JWS signed by the issuer, nested in a compact JWE encrypted to the fleet
/// (`RSA-OAEP-256` + `A256GCM`, `cty: JWT`, `kid`). Standard JOSE, so any JOSE library reads them.
public struct TokenMinter: Sendable {
    public let signingKey: IssuerSigningKey
    public let encryptionKey: FleetEncryptionKey

    public init(signingKey: IssuerSigningKey, encryptionKey: FleetEncryptionKey) {
        self.signingKey = signingKey
        self.encryptionKey = encryptionKey
    }

    public func mint(_ claims: TokenClaims) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let jwsHeader = #"{"alg":"\#(signingKey.algorithm)","kid":"\#(signingKey.kid)","typ":"JWT"}"#
        let signingInput = Base64URL.encode(jwsHeader) + "." + Base64URL.encode(try encoder.encode(claims))
        let signature = try signingKey.sign(Array(signingInput.utf8))
        let jws = signingInput + "." + Base64URL.encode(signature)
        return try Self.encrypt(Array(jws.utf8), to: encryptionKey)
    }

    /// Compact JWE serialization (RFC 7516 §7.1) with a fresh content key and IV.
    static func encrypt(_ plaintext: [UInt8], to key: FleetEncryptionKey) throws -> String {
        let header = Base64URL.encode(#"{"alg":"RSA-OAEP-256","cty":"JWT","enc":"A256GCM","kid":"\#(key.kid)"}"#)
        let cek = SymmetricKey(size: .bits256)
        let wrapped = try cek.withUnsafeBytes { try key.key.encrypt(Array($0), padding: .PKCS1_OAEP_SHA256) }
        let nonce = AES.GCM.Nonce()
        let sealed = try AES.GCM.seal(plaintext, using: cek, nonce: nonce, authenticating: Array(header.utf8))
        return [
            header, Base64URL.encode(wrapped), Base64URL.encode(Array(nonce)), Base64URL.encode(sealed.ciphertext),
            Base64URL.encode(sealed.tag),
        ].joined(separator: ".")
    }
}
