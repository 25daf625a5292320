import Crypto
import Foundation
import _CryptoExtras

/// The fleet's RSA key pair that token JWEs are encrypted to. Sidecars hold the private half; issuers
/// only the public half. Every key type here redacts itself in descriptions.
public struct FleetDecryptionKey: Sendable, CustomStringConvertible {
    public let kid: String
    // Immutable after init; BoringSSL RSA keys are safe to use from several threads.
    nonisolated(unsafe) let key: _RSA.Encryption.PrivateKey

    public init(pem: String, kid: String? = nil) throws {
        key = try _RSA.Encryption.PrivateKey(pemRepresentation: pem)
        guard key.keySizeInBits >= 2048 else { throw KeyError("fleet key must be RSA-2048 or larger") }
        self.kid = try kid ?? FleetEncryptionKey(key.publicKey).kid
    }

    public static func generate() throws -> FleetDecryptionKey {
        let key = try _RSA.Encryption.PrivateKey(keySize: .bits2048)
        return try FleetDecryptionKey(pem: key.pkcs8PEMRepresentation)
    }

    public var pkcs8PEM: String { key.pkcs8PEMRepresentation }
    public var publicKey: FleetEncryptionKey { (try? FleetEncryptionKey(key.publicKey, kid: kid))! }
    public var description: String { "FleetDecryptionKey(kid: \(kid), <redacted>)" }
}

public struct FleetEncryptionKey: Sendable, CustomStringConvertible {
    public let kid: String
    nonisolated(unsafe) let key: _RSA.Encryption.PublicKey

    init(_ key: _RSA.Encryption.PublicKey, kid: String? = nil) throws {
        self.key = key
        self.kid = try kid ?? FleetEncryptionKey.thumbprint(key)
    }

    public init(pem: String, kid: String? = nil) throws {
        try self.init(_RSA.Encryption.PublicKey(pemRepresentation: pem), kid: kid)
    }

    public var pem: String { key.pemRepresentation }
    public var description: String { "FleetEncryptionKey(kid: \(kid))" }

    /// RFC 7638 JWK thumbprint: the key's id is derived from the key, so it cannot be mislabelled.
    static func thumbprint(_ key: _RSA.Encryption.PublicKey) throws -> String {
        let p = try key.getKeyPrimitives()
        let json = #"{"e":"\#(Base64URL.encode(p.publicExponent))","kty":"RSA","n":"\#(Base64URL.encode(p.modulus))"}"#
        return Base64URL.encode(Array(SHA256.hash(data: Array(json.utf8))))
    }
}

/// A key that verifies the inner JWS of tokens. ES256 by default; HS256 (a shared secret) only for
/// single-host setups. Each key allows exactly its own algorithm, so an HS256 token "signed" with an
/// ES256 public key is never accepted (the classic algorithm-confusion forgery).
public enum IssuerVerificationKey: Sendable, CustomStringConvertible {
    case es256(kid: String, P256.Signing.PublicKey)
    case hs256(kid: String, SymmetricKey)

    public var kid: String {
        switch self {
        case .es256(let kid, _), .hs256(let kid, _): return kid
        }
    }

    public var algorithm: String {
        switch self {
        case .es256: return "ES256"
        case .hs256: return "HS256"
        }
    }

    public static func es256(pem: String, kid: String? = nil) throws -> IssuerVerificationKey {
        let key = try P256.Signing.PublicKey(pemRepresentation: pem)
        return .es256(kid: kid ?? thumbprint(key), key)
    }

    public var description: String { "IssuerVerificationKey(\(algorithm), kid: \(kid))" }

    static func thumbprint(_ key: P256.Signing.PublicKey) -> String {
        let raw = Array(key.x963Representation)  // 0x04 || X || Y
        let json = #"{"crv":"P-256","kty":"EC","x":"\#(Base64URL.encode(raw[1..<33]))","y":"\#(Base64URL.encode(raw[33..<65]))"}"#
        return Base64URL.encode(Array(SHA256.hash(data: Array(json.utf8))))
    }

    func verify(signature: [UInt8], of input: [UInt8]) -> Bool {
        switch self {
        case .es256(_, let key):
            guard signature.count == 64, let sig = try? P256.Signing.ECDSASignature(rawRepresentation: signature) else { return false }
            return key.isValidSignature(sig, for: input)
        case .hs256(_, let secret):
            return HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: input, using: secret)
        }
    }
}

/// The issuer's signing key (held by whoever mints tokens: the CLI or the admin API).
public enum IssuerSigningKey: Sendable, CustomStringConvertible {
    case es256(kid: String, P256.Signing.PrivateKey)
    case hs256(kid: String, SymmetricKey)

    public static func es256(pem: String, kid: String? = nil) throws -> IssuerSigningKey {
        let key = try P256.Signing.PrivateKey(pemRepresentation: pem)
        return .es256(kid: kid ?? IssuerVerificationKey.thumbprint(key.publicKey), key)
    }

    public static func generateES256() -> IssuerSigningKey {
        let key = P256.Signing.PrivateKey()
        return .es256(kid: IssuerVerificationKey.thumbprint(key.publicKey), key)
    }

    public var kid: String {
        switch self {
        case .es256(let kid, _), .hs256(let kid, _): return kid
        }
    }

    public var algorithm: String {
        switch self {
        case .es256: return "ES256"
        case .hs256: return "HS256"
        }
    }

    public var verificationKey: IssuerVerificationKey {
        switch self {
        case .es256(let kid, let key): return .es256(kid: kid, key.publicKey)
        case .hs256(let kid, let secret): return .hs256(kid: kid, secret)
        }
    }

    /// PKCS#8 PEM of an ES256 key (nil for HS256, whose secret is configured, not stored in a key file).
    public var pkcs8PEM: String? {
        if case .es256(_, let key) = self { return key.pemRepresentation }
        return nil
    }

    public var publicPEM: String? {
        if case .es256(_, let key) = self { return key.publicKey.pemRepresentation }
        return nil
    }

    public var description: String { "IssuerSigningKey(\(algorithm), kid: \(kid), <redacted>)" }

    func sign(_ input: [UInt8]) throws -> [UInt8] {
        switch self {
        case .es256(_, let key): return Array(try key.signature(for: input).rawRepresentation)
        case .hs256(_, let secret): return Array(HMAC<SHA256>.authenticationCode(for: input, using: secret))
        }
    }
}

public struct KeyError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
