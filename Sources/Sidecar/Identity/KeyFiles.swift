import Foundation
import Policy

/// Reads and writes the key files of `sidecar keys init DIR`:
///
///     fleet-<kid>.key.pem    RSA-2048 fleet decryption key (sidecars only), 0600
///     fleet-<kid>.pub.pem    its public half (issuers encrypt tokens to it)
///     issuer-<kid>.key.pem   ES256 issuer signing key (whoever mints tokens), 0600
///     issuer-<kid>.pub.pem   its public half (sidecars verify with it)
///
/// Key ids are RFC 7638 thumbprints, so a file name can never claim another key's id. Several files of
/// each kind may coexist: that is how keys rotate (add the new key everywhere, then retire the old one).
enum KeyFiles {
    struct Generated {
        var fleetKid: String
        var issuerKid: String
        var files: [String]
    }

    static func initialize(directory: String) throws -> Generated {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let fleet = try FleetDecryptionKey.generate()
        let issuer = IssuerSigningKey.generateES256()
        var files: [String] = []
        func write(_ name: String, _ text: String, secret: Bool) throws {
            let path = (directory as NSString).appendingPathComponent(name)
            guard !FileManager.default.fileExists(atPath: path) else { throw KeyError("\(path) already exists") }
            guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: secret ? 0o600 : 0o644]) else {
                throw KeyError("cannot write \(path)")
            }
            files.append(path)
        }
        try write("fleet-\(fleet.kid).key.pem", fleet.pkcs8PEM, secret: true)
        try write("fleet-\(fleet.kid).pub.pem", fleet.publicKey.pem, secret: false)
        try write("issuer-\(issuer.kid).key.pem", issuer.pkcs8PEM!, secret: true)
        try write("issuer-\(issuer.kid).pub.pem", issuer.publicPEM!, secret: false)
        return Generated(fleetKid: fleet.kid, issuerKid: issuer.kid, files: files)
    }

    /// Every key file in `directory`, by kind.
    struct Loaded {
        var decryption: [FleetDecryptionKey] = []
        var encryption: [FleetEncryptionKey] = []
        var verification: [IssuerVerificationKey] = []
        var signing: [IssuerSigningKey] = []
    }

    static func load(directory: String) throws -> Loaded {
        var loaded = Loaded()
        // Oldest first, so `.last` of each kind is the newest key: the one new tokens use.
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted { a, b in
            let pa = (directory as NSString).appendingPathComponent(a), pb = (directory as NSString).appendingPathComponent(b)
            let ma = (try? FileManager.default.attributesOfItem(atPath: pa)[.modificationDate] as? Date) ?? .distantPast
            let mb = (try? FileManager.default.attributesOfItem(atPath: pb)[.modificationDate] as? Date) ?? .distantPast
            return ma == mb ? a < b : ma < mb
        }
        for name in names {
            let path = (directory as NSString).appendingPathComponent(name)
            // A file that cannot be read as its kind of key is named: a start-up failure must say where.
            do {
                if name.hasPrefix("fleet-"), name.hasSuffix(".key.pem") { loaded.decryption.append(try FleetDecryptionKey(pem: read(path))) }
                if name.hasPrefix("fleet-"), name.hasSuffix(".pub.pem") { loaded.encryption.append(try FleetEncryptionKey(pem: read(path))) }
                if name.hasPrefix("issuer-"), name.hasSuffix(".pub.pem") { loaded.verification.append(try IssuerVerificationKey.es256(pem: read(path))) }
                if name.hasPrefix("issuer-"), name.hasSuffix(".key.pem") { loaded.signing.append(try IssuerSigningKey.es256(pem: read(path))) }
            } catch let error as KeyError {
                throw error
            } catch {
                throw KeyError("\(path) is not a usable PEM key of its kind (\(error))")
            }
        }
        return loaded
    }

    static func read(_ path: String) throws -> String {
        do { return try TextFile.read(path) } catch { throw KeyError(error.description) }
    }
}
