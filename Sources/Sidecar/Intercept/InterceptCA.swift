import Crypto
import Foundation
import NIOSSL
import SwiftASN1
import X509

/// The certificate authority whose leaves the sidecar presents inside intercepted tunnels.
///
/// Either generated on first start (`<state.dir>/ca/ca.pem` and `ca.key.pem`, ECDSA P-256, the key
/// 0600, a subject naming the sidecar id so an operator can tell whose CA a client trusts), or the
/// operator's (`intercept.ca_cert` / `intercept.ca_key`: typically an intermediate of the organisation's
/// CA shared by the fleet; the file may carry the intermediate's issuers after it, and they are sent
/// after every leaf). The key never leaves this process except in the file it was read from.
struct InterceptCA: Sendable {
    let certificate: Certificate
    let key: Certificate.PrivateKey
    /// What `GET /ca.pem` and `sidecar ca export` hand out: the certificates of the CA file (only they:
    /// a file that also holds a key never has it served).
    let pem: String
    /// The CA certificate and whatever followed it in its file, sent after each leaf.
    let chain: [NIOSSLCertificate]
    /// The CA's key identifier: each leaf's authority key identifier (strict verifiers require one).
    let keyIdentifier: ArraySlice<UInt8>

    struct LoadError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// The operator's CA when configured, else the generated one (made now if `dir` holds none).
    static func load(_ settings: InterceptSettings, dir: String, sidecarID: String, now: Date) throws(LoadError) -> (InterceptCA, generated: Bool) {
        if let certPath = settings.caCert, let keyPath = settings.caKey {
            return (try read(certPath: certPath, keyPath: keyPath, now: now, field: "intercept"), false)
        }
        let certPath = (dir as NSString).appendingPathComponent("ca.pem")
        let keyPath = (dir as NSString).appendingPathComponent("ca.key.pem")
        if FileManager.default.fileExists(atPath: certPath) || FileManager.default.fileExists(atPath: keyPath) {
            return (try read(certPath: certPath, keyPath: keyPath, now: now, field: "generated CA in \(dir)"), false)
        }
        try generate(dir: dir, certPath: certPath, keyPath: keyPath, sidecarID: sidecarID, now: now)
        return (try read(certPath: certPath, keyPath: keyPath, now: now, field: "generated CA in \(dir)"), true)
    }

    /// A new CA: P-256, ten years, `CA:true, pathlen:0` (it signs leaves only), key usage limited to
    /// signing certificates and CRLs.
    static func generate(dir: String, certPath: String, keyPath: String, sidecarID: String, now: Date) throws(LoadError) {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let key = P256.Signing.PrivateKey()
            let publicKey = Certificate.PublicKey(key.publicKey)
            let name = try DistinguishedName {
                OrganizationName("agent-sidecar")
                CommonName(String("agent-sidecar interception CA (\(sidecarID))".prefix(64)))
            }
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(digitalSignature: true, keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: publicKey)
            }
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
                notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(10 * 365 * 86400),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
                issuerPrivateKey: Certificate.PrivateKey(key))
            let certPEM = try certificate.serializeAsPEM().pemString + "\n"
            // The key first, with its mode set at creation: there is never a moment it is readable by others.
            guard FileManager.default.createFile(atPath: keyPath, contents: Data(key.pemRepresentation.utf8), attributes: [.posixPermissions: 0o600]),
                FileManager.default.createFile(atPath: certPath, contents: Data(certPEM.utf8), attributes: [.posixPermissions: 0o644])
            else { throw LoadError("cannot write the interception CA into \(dir)") }
        } catch let e as LoadError {
            throw e
        } catch {
            throw LoadError("cannot generate the interception CA in \(dir): \(error)")
        }
    }

    /// Reads and checks a CA: a CA certificate (basic constraints `CA:true`), currently valid, whose
    /// public key is the key's.
    static func read(certPath: String, keyPath: String, now: Date, field: String) throws(LoadError) -> InterceptCA {
        let certText: String
        let keyText: String
        do {
            certText = try TextFile.read(certPath)
            keyText = try TextFile.read(keyPath)
        } catch {
            throw LoadError("\(field): \(error)")
        }
        let documents: [PEMDocument]
        do { documents = try PEMDocument.parseMultiple(pemString: certText).filter { $0.discriminator == "CERTIFICATE" } } catch {
            throw LoadError("\(field): \(certPath) is not a PEM certificate file")
        }
        guard let first = documents.first, let certificate = try? Certificate(pemDocument: first) else {
            throw LoadError("\(field): \(certPath) holds no readable certificate")
        }
        let key: Certificate.PrivateKey
        do { key = try Certificate.PrivateKey(pemEncoded: keyText) } catch {
            throw LoadError("\(field): \(keyPath) is not a PEM private key (PKCS#8, SEC1 EC or PKCS#1 RSA)")
        }
        guard key.publicKey == certificate.publicKey else { throw LoadError("\(field): the key in \(keyPath) does not belong to the certificate in \(certPath)") }
        guard case .isCertificateAuthority? = try? certificate.extensions.basicConstraints else {
            throw LoadError("\(field): \(certPath) is not a CA certificate (basic constraints CA:true)")
        }
        guard certificate.notValidBefore <= now, now < certificate.notValidAfter else {
            throw LoadError("\(field): the CA certificate in \(certPath) is not valid now (\(certificate.notValidBefore) – \(certificate.notValidAfter))")
        }
        let chain: [NIOSSLCertificate]
        do {
            chain = try documents.map { try NIOSSLCertificate(bytes: Array($0.derBytes), format: .der) }
        } catch {
            throw LoadError("\(field): \(certPath) holds a certificate TLS cannot use")
        }
        let identifier = (try? certificate.extensions.subjectKeyIdentifier)?.keyIdentifier
            ?? SubjectKeyIdentifier(hash: certificate.publicKey).keyIdentifier
        let pem = documents.map(\.pemString).joined(separator: "\n") + "\n"
        return InterceptCA(certificate: certificate, key: key, pem: pem, chain: chain, keyIdentifier: identifier)
    }
}
