import Crypto
import Foundation
import NIOSSL
import Synchronization
import SwiftASN1
import Upstreams
import X509

/// The TLS server contexts the sidecar presents inside intercepted tunnels, one per name, each with a
/// leaf certificate for that name signed by the `InterceptCA`.
///
/// Every leaf shares one P-256 key made when the process starts and held only in memory (as mitmproxy
/// does): a new name costs one ECDSA signature, not a key generation, and the key is never written to
/// disk. Contexts are kept in a bounded LRU (`intercept.leaf_cache_size`), so a new tunnel to a known
/// name costs one handshake and 10 000 distinct names cannot grow memory past the bound.
final class LeafCertificates: Sendable {
    let ca: InterceptCA
    let validity: Duration
    private let leafKey: P256.Signing.PrivateKey
    private let leafKeyForTLS: NIOSSLPrivateKey
    private let cache: Mutex<LRUCache<String, Leaf>>

    /// A minted context and when to mint again (a tenth of the validity before it ends).
    struct Leaf: @unchecked Sendable {
        // NIOSSLContext is thread-safe (BoringSSL's SSL_CTX is shared across connections by design).
        let context: NIOSSLContext
        let renewAt: Date
    }

    init(ca: InterceptCA, validity: Duration, capacity: Int) throws {
        self.ca = ca
        self.validity = validity
        leafKey = P256.Signing.PrivateKey()
        leafKeyForTLS = try NIOSSLPrivateKey(bytes: Array(leafKey.pemRepresentation.utf8), format: .pem)
        cache = Mutex(LRUCache(capacity: capacity))
    }

    var count: Int { cache.withLock { $0.count } }

    /// The context for `name` (a host name, or an IP literal): cached, else minted (`minted` says which).
    func context(for name: String, now: Date) throws -> (NIOSSLContext, minted: Bool) {
        if let leaf = cache.withLock({ $0.get(name) }), leaf.renewAt > now { return (leaf.context, false) }
        // Minted outside the lock: a signature and a context take tens of microseconds, and other
        // names must not wait for them. Two tunnels racing for one new name both mint; the later wins.
        let leaf = try mint(name: name, now: now)
        cache.withLock { _ = $0.set(name, leaf) }
        return (leaf.context, true)
    }

    /// A leaf for `name`: SAN = the name (or its IP address), server authentication only, valid from an
    /// hour ago (clients with a slow clock) for `validity`, never past the CA's own end.
    func mint(name: String, now: Date) throws -> Leaf {
        let publicKey = Certificate.PublicKey(leafKey.publicKey)
        let san: GeneralName
        switch IPAddress.parse(name) {
        case .v4(let v)?: san = .ipAddress(ASN1OctetString(contentBytes: [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)][...]))
        case .v6(let bytes)?: san = .ipAddress(ASN1OctetString(contentBytes: bytes[...]))
        case nil: san = .dnsName(name)
        }
        // A common name is limited to 64 characters; a longer name is only in the SAN, which is then critical.
        let subject = try DistinguishedName {
            if name.utf8.count <= 64 { CommonName(name) }
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([.serverAuth])
            if name.utf8.count <= 64 { SubjectAlternativeNames([san]) } else { Critical(SubjectAlternativeNames([san])) }
            AuthorityKeyIdentifier(keyIdentifier: ca.keyIdentifier)
            SubjectKeyIdentifier(hash: publicKey)
        }
        let notAfter = min(now.addingTimeInterval(Double(validity.components.seconds)), ca.certificate.notValidAfter)
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
            notValidBefore: max(now.addingTimeInterval(-3600), ca.certificate.notValidBefore), notValidAfter: notAfter,
            issuer: ca.certificate.subject, subject: subject, extensions: extensions, issuerPrivateKey: ca.key)
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        let leaf = try NIOSSLCertificate(bytes: serializer.serializedBytes, format: .der)
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: ([leaf] + ca.chain).map { .certificate($0) }, privateKey: .privateKey(leafKeyForTLS))
        // HTTP/1.1 only: the tunnel's requests are read by the HTTP/1.1 decoder (ALPN makes h2 clients fall back).
        tls.applicationProtocols = ["http/1.1"]
        tls.minimumTLSVersion = .tlsv12
        // How long a closing tunnel waits for the agent's close_notify after sending its own (the answers
        // are flushed before it). An idle pooled connection's client is not reading, so at shutdown every
        // open tunnel held the process this long (NIO's default 5 s).
        tls.shutdownTimeout = .milliseconds(500)
        let context = try NIOSSLContext(configuration: tls)
        let lifetime = notAfter.timeIntervalSince(now)
        return Leaf(context: context, renewAt: now.addingTimeInterval(lifetime * 0.9))
    }
}
