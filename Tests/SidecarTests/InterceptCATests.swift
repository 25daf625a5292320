import Crypto
import Foundation
import NIOSSL
import Policy
import SwiftASN1
import Testing
import X509

@testable import Sidecar

@Suite("Interception CA and leaf certificates")
struct InterceptCATests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    static func temporaryDirectory() -> String {
        let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("ca-test-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func generatedOnceThenReused() throws {
        let dir = Self.temporaryDirectory()
        let (first, generated) = try InterceptCA.load(InterceptSettings(), dir: dir, sidecarID: "edge-7", now: Self.now)
        #expect(generated)
        let (second, again) = try InterceptCA.load(InterceptSettings(), dir: dir, sidecarID: "edge-7", now: Self.now)
        #expect(!again && second.certificate == first.certificate)
        #expect(first.certificate.subject.description.contains("edge-7"))
        guard case .isCertificateAuthority(maxPathLength: 0)? = try first.certificate.extensions.basicConstraints else {
            Issue.record("the CA is not CA:true, pathlen:0")
            return
        }
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/ca.key.pem")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(!first.pem.contains("PRIVATE KEY"))
    }

    @Test func leafNamesTheHostAndChainsToTheCA() throws {
        let (ca, _) = try InterceptCA.load(InterceptSettings(), dir: Self.temporaryDirectory(), sidecarID: "s", now: Self.now)
        let leaves = try LeafCertificates(ca: ca, validity: .seconds(86400), capacity: 4)
        for name in ["api.openai.com", "127.0.0.1", "::1", String(repeating: "x", count: 70) + ".example"] {
            let certificate = try Self.certificate(in: leaves.mint(name: name, now: Self.now).context)
            let san = try #require(try certificate.extensions.subjectAlternativeNames)
            switch IPAddressLiteral(name) {
            case .some(let bytes): #expect(Array(san) == [.ipAddress(ASN1OctetString(contentBytes: bytes[...]))])
            case nil: #expect(Array(san) == [.dnsName(name)])
            }
            #expect(certificate.issuer == ca.certificate.subject)
            #expect(ca.certificate.publicKey.isValidSignature(certificate.signature, for: certificate))
            #expect(try certificate.extensions.authorityKeyIdentifier?.keyIdentifier == ca.keyIdentifier)
            #expect(try certificate.extensions.extendedKeyUsage?.contains(.serverAuth) == true)
            guard case .notCertificateAuthority? = try certificate.extensions.basicConstraints else {
                Issue.record("a leaf must not be a CA")
                continue
            }
            #expect(certificate.notValidAfter == Self.now.addingTimeInterval(86400))
            #expect(certificate.notValidBefore == Self.now.addingTimeInterval(-3600))
        }
    }

    @Test func contextsAreCachedBoundedAndRenewed() throws {
        let (ca, _) = try InterceptCA.load(InterceptSettings(), dir: Self.temporaryDirectory(), sidecarID: "s", now: Self.now)
        let leaves = try LeafCertificates(ca: ca, validity: .seconds(3600), capacity: 2)
        let (a, mintedA) = try leaves.context(for: "a.example", now: Self.now)
        let (again, mintedAgain) = try leaves.context(for: "a.example", now: Self.now.addingTimeInterval(60))
        #expect(mintedA && !mintedAgain && a === again)
        _ = try leaves.context(for: "b.example", now: Self.now)
        _ = try leaves.context(for: "c.example", now: Self.now)
        #expect(leaves.count == 2)
        // Within the last tenth of its life a leaf is minted again.
        let (_, renewed) = try leaves.context(for: "c.example", now: Self.now.addingTimeInterval(3300))
        #expect(renewed)
    }

    @Test func operatorCAIsChecked() throws {
        let dir = Self.temporaryDirectory()
        _ = try InterceptCA.load(InterceptSettings(), dir: dir, sidecarID: "s", now: Self.now)
        var settings = InterceptSettings()
        settings.caCert = dir + "/ca.pem"
        settings.caKey = dir + "/ca.key.pem"
        #expect(try InterceptCA.load(settings, dir: "/nonexistent", sidecarID: "s", now: Self.now).generated == false)
        // A key that is not the certificate's.
        let other = dir + "/other.key.pem"
        _ = FileManager.default.createFile(atPath: other, contents: Data(P256.Signing.PrivateKey().pemRepresentation.utf8))
        settings.caKey = other
        #expect(throws: InterceptCA.LoadError.self) { try InterceptCA.load(settings, dir: "/nonexistent", sidecarID: "s", now: Self.now) }
        // Expired.
        settings.caKey = dir + "/ca.key.pem"
        #expect(throws: InterceptCA.LoadError.self) {
            try InterceptCA.load(settings, dir: "/nonexistent", sidecarID: "s", now: Self.now.addingTimeInterval(11 * 365 * 86400))
        }
        // Not a certificate at all.
        let garbage = dir + "/garbage.pem"
        _ = FileManager.default.createFile(atPath: garbage, contents: Data("hello".utf8))
        settings.caCert = garbage
        #expect(throws: InterceptCA.LoadError.self) { try InterceptCA.load(settings, dir: "/nonexistent", sidecarID: "s", now: Self.now) }
    }

    @Test func configurationIsCheckedWithFieldPaths() throws {
        func error(_ yaml: String) -> String? {
            do {
                _ = try ConfigLoader.parse("version: 1\n" + yaml)
                return nil
            } catch { return error.path }
        }
        #expect(error("intercept: {ca_cert: /etc/hostname}") == "intercept.ca_key")
        #expect(error("intercept: {allowed_ports: [443, 70000]}") == "intercept.allowed_ports[1]")
        #expect(error("intercept: {allowed_ports: []}") == "intercept.allowed_ports")
        #expect(error("intercept: {passthrough_hosts: [api.openai.com]}") == "intercept.passthrough_hosts[0]")
        #expect(error("intercept: {passthrough_hosts: ['*.openai.com']}") == "intercept.passthrough_hosts[0]")
        #expect(error("intercept: {passthrough_hosts: ['bad host']}") == "intercept.passthrough_hosts[0]")
        #expect(error("intercept: {leaf_validity: 10m}") == "intercept.leaf_validity")
        #expect(error("intercept: {handshake_timeout: 0s}") == "intercept.handshake_timeout")
        let c = try ConfigLoader.parse("version: 1\nintercept: {allowed_ports: [443, 8443], passthrough_hosts: ['*.pinned.example']}")
        #expect(c.intercept.enabled && c.intercept.allowedPorts == [443, 8443] && c.intercept.passthroughHosts == ["*.pinned.example"])
    }

    /// The leaf a context presents: read back through a server handshake's configuration.
    static func certificate(in context: NIOSSLContext) throws -> Certificate {
        guard case .certificate(let leaf)? = context.configuration.certificateChain.first else {
            throw InterceptCA.LoadError("no leaf in the context")
        }
        return try Certificate(derEncoded: leaf.toDERBytes())
    }
}

/// The bytes of an IP literal (the SAN of a leaf for an address), nil for a name.
func IPAddressLiteral(_ text: String) -> [UInt8]? {
    var v4 = in_addr()
    if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
    return nil
}
