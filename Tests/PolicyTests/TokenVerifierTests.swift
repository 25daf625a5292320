import Crypto
import Foundation
import Testing
import _CryptoExtras

@testable import Policy

/// Keys shared by the suite (RSA generation is slow in debug builds).
enum TestKeys {
    static let fleet = try! FleetDecryptionKey.generate()
    static let otherFleet = try! FleetDecryptionKey.generate()
    static let issuer = IssuerSigningKey.generateES256()
    static let otherIssuer = IssuerSigningKey.generateES256()
    static let hmac = IssuerSigningKey.hs256(kid: "hs", SymmetricKey(data: Array("a shared secret of at least 32 bytes!!".utf8)))
    static let now: Int64 = 1_800_000_000

    static var verifier: TokenVerifier {
        TokenVerifier(
            decryptionKeys: [fleet], issuerKeys: [issuer.verificationKey, hmac.verificationKey], issuer: "agent-sidecar",
            audience: "agent-sidecar", leeway: 30)
    }

    static func claims(exp: Int64 = now + 900, nbf: Int64? = now, aud: String = "agent-sidecar", iss: String = "agent-sidecar") -> TokenClaims {
        TokenClaims(iss: iss, sub: "agt_1", aud: [aud], iat: now, nbf: nbf, exp: exp, jti: "tok_1", role: "scraper", scopes: ["serpapi:search"])
    }

    static func mint(_ claims: TokenClaims = claims(), signer: IssuerSigningKey = issuer, to key: FleetEncryptionKey = fleet.publicKey) -> String {
        try! TokenMinter(signingKey: signer, encryptionKey: key).mint(claims)
    }

    /// Re-encrypts an arbitrary inner payload (to build forged inner JWSs), with a chosen JWE header.
    static func jwe(inner: String, header: String? = nil, to key: FleetEncryptionKey = fleet.publicKey) -> String {
        let h = Base64URL.encode(header ?? #"{"alg":"RSA-OAEP-256","cty":"JWT","enc":"A256GCM","kid":"\#(key.kid)"}"#)
        let cek = SymmetricKey(size: .bits256)
        let wrapped = try! cek.withUnsafeBytes { try key.key.encrypt(Array($0), padding: .PKCS1_OAEP_SHA256) }
        let nonce = AES.GCM.Nonce()
        let sealed = try! AES.GCM.seal(Array(inner.utf8), using: cek, nonce: nonce, authenticating: Array(h.utf8))
        return [h, Base64URL.encode(wrapped), Base64URL.encode(Array(nonce)), Base64URL.encode(sealed.ciphertext), Base64URL.encode(sealed.tag)]
            .joined(separator: ".")
    }

    static func jws(header: String, claims: TokenClaims = claims(), sign: ([UInt8]) -> [UInt8]) -> String {
        let enc = JSONEncoder()
        let input = Base64URL.encode(header) + "." + Base64URL.encode(try! enc.encode(claims))
        return input + "." + Base64URL.encode(sign(Array(input.utf8)))
    }
}

@Suite("Agent tokens")
struct TokenVerifierTests {
    @Test func roundTripES256AndHS256() throws {
        for signer in [TestKeys.issuer, TestKeys.hmac] {
            let v = try TestKeys.verifier.verify(TestKeys.mint(signer: signer), now: TestKeys.now).get()
            #expect(v.claims.sub == "agt_1" && v.claims.scopes == ["serpapi:search"] && v.issuerKid == signer.kid)
        }
    }

    @Test func headerIsTheAllowlistedOne() throws {
        let token = TestKeys.mint()
        let header = try #require(Base64URL.decode(token.split(separator: ".")[0]))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(header)) as? [String: String])
        #expect(json == ["alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": TestKeys.fleet.kid])
    }

    /// Flips one byte in one segment.
    static func tamper(_ token: String, segment: Int) -> String {
        var parts = token.split(separator: ".").map(String.init)
        var bytes = Base64URL.decode(parts[segment])!
        bytes[bytes.count / 2] ^= 0x01
        parts[segment] = Base64URL.encode(bytes)
        return parts.joined(separator: ".")
    }

    static let forgeries: [(String, @Sendable () -> String, TokenFailure)] = [
        ("tampered encrypted key", { tamper(TestKeys.mint(), segment: 1) }, .invalid),
        ("tampered IV", { tamper(TestKeys.mint(), segment: 2) }, .invalid),
        ("tampered ciphertext", { tamper(TestKeys.mint(), segment: 3) }, .invalid),
        ("tampered tag", { tamper(TestKeys.mint(), segment: 4) }, .invalid),
        ("re-encoded header (same JSON, different bytes)", {
            var parts = TestKeys.mint().split(separator: ".").map(String.init)
            let json = String(decoding: Base64URL.decode(parts[0])!, as: UTF8.self)
            parts[0] = Base64URL.encode(json.replacingOccurrences(of: ",", with: ", "))
            return parts.joined(separator: ".")
        }, .invalid),
        ("JWE alg RSA1_5", { TestKeys.jwe(inner: "x", header: #"{"alg":"RSA1_5","enc":"A256GCM","kid":"\#(TestKeys.fleet.kid)"}"#) }, .invalid),
        ("JWE with zip", { TestKeys.jwe(inner: "x", header: #"{"alg":"RSA-OAEP-256","enc":"A256GCM","zip":"DEF","kid":"\#(TestKeys.fleet.kid)"}"#) }, .invalid),
        ("JWE with crit", { TestKeys.jwe(inner: "x", header: #"{"alg":"RSA-OAEP-256","enc":"A256GCM","crit":["exp"],"kid":"\#(TestKeys.fleet.kid)"}"#) }, .invalid),
        ("JWE enc A128GCM", { TestKeys.jwe(inner: "x", header: #"{"alg":"RSA-OAEP-256","enc":"A128GCM","kid":"\#(TestKeys.fleet.kid)"}"#) }, .invalid),
        ("unknown kid", { TestKeys.mint(to: TestKeys.otherFleet.publicKey) }, .invalid),
        ("encrypted to another fleet under our kid", {
            TestKeys.jwe(inner: "x", header: #"{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"\#(TestKeys.fleet.kid)"}"#, to: TestKeys.otherFleet.publicKey)
        }, .invalid),
        ("inner alg none", { TestKeys.jwe(inner: TestKeys.jws(header: #"{"alg":"none","kid":"\#(TestKeys.issuer.kid)"}"#) { _ in [] }) }, .invalid),
        ("inner HS256 signed with the ES256 public key", {
            let publicPEM = Array(TestKeys.issuer.publicPEM!.utf8)
            return TestKeys.jwe(inner: TestKeys.jws(header: #"{"alg":"HS256","kid":"\#(TestKeys.issuer.kid)"}"#) { input in
                Array(HMAC<SHA256>.authenticationCode(for: input, using: SymmetricKey(data: publicPEM)))
            })
        }, .invalid),
        ("inner signed by an unknown issuer", { TestKeys.mint(signer: TestKeys.otherIssuer) }, .invalid),
        ("wrong audience", { TestKeys.mint(TestKeys.claims(aud: "someone-else")) }, .invalid),
        ("wrong issuer", { TestKeys.mint(TestKeys.claims(iss: "evil")) }, .invalid),
        ("nbf in the future", { TestKeys.mint(TestKeys.claims(nbf: TestKeys.now + 3600)) }, .invalid),
        ("expired", { TestKeys.mint(TestKeys.claims(exp: TestKeys.now - 60)) }, .expired),
        ("four segments", { TestKeys.mint().split(separator: ".").dropLast().joined(separator: ".") }, .malformed),
        ("not base64url", { "a.b.c.d.e!" }, .malformed),
        ("padded base64", { TestKeys.mint().replacingOccurrences(of: ".", with: "=.") }, .malformed),
        ("empty", { "" }, .malformed),
    ]

    @Test(arguments: forgeries.indices)
    func refusesForgeries(_ i: Int) {
        let (name, make, expected) = Self.forgeries[i]
        let result = TestKeys.verifier.verify(make(), now: TestKeys.now)
        #expect(result == .failure(expected), "\(name)")
    }

    @Test func leewayIsSmall() {
        let t = TestKeys.mint(TestKeys.claims(exp: TestKeys.now - 20))
        #expect((try? TestKeys.verifier.verify(t, now: TestKeys.now).get()) != nil, "within 30 s leeway")
        #expect(TestKeys.verifier.verify(t, now: TestKeys.now + 20) == .failure(.expired))
    }

    @Test func keysRedactThemselves() {
        for text in ["\(TestKeys.fleet)", "\(TestKeys.issuer)", "\(TestKeys.hmac)", String(reflecting: TestKeys.hmac)] {
            #expect(!text.contains("BEGIN") && text.contains("redacted"))
        }
    }

    @Test func thumbprintKidsAreStable() throws {
        let pem = TestKeys.fleet.publicKey.pem
        #expect(try FleetEncryptionKey(pem: pem).kid == TestKeys.fleet.kid)
        #expect(try IssuerVerificationKey.es256(pem: TestKeys.issuer.publicPEM!).kid == TestKeys.issuer.kid)
    }
}

extension Result where Success == VerifiedToken, Failure == TokenFailure {
    static func == (l: Self, r: Self) -> Bool {
        switch (l, r) {
        case (.failure(let a), .failure(let b)): return a == b
        case (.success(let a), .success(let b)): return a == b
        default: return false
        }
    }
}
