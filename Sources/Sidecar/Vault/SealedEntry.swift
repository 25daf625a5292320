import Crypto
import Foundation
import Upstreams

/// The key-encryption key that seals vault entries (AES-256). Redacts itself.
struct KeyEncryptionKey: Sendable, CustomStringConvertible {
    let key: SymmetricKey

    /// From `KEK_BASE64` (or the configured variable) or a key file holding 32 raw bytes or their base64.
    static func load(env name: String, file: String?, environment: [String: String]) throws -> KeyEncryptionKey? {
        if let file {
            let data = try Data(contentsOf: URL(fileURLWithPath: file))
            if data.count == 32 { return KeyEncryptionKey(key: SymmetricKey(data: data)) }
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            return try parse(text, source: file)
        }
        guard let text = environment[name], !text.isEmpty else { return nil }
        return try parse(text, source: "$\(name)")
    }

    static func parse(_ text: String, source: String) throws -> KeyEncryptionKey {
        guard let data = Data(base64Encoded: text), data.count == 32 else {
            throw VaultError("\(source) must be 32 bytes, base64-encoded (openssl rand -base64 32)")
        }
        return KeyEncryptionKey(key: SymmetricKey(data: data))
    }

    static func generate() -> String { SymmetricKey(size: .bits256).withUnsafeBytes { Data($0).base64EncodedString() } }

    var description: String { "KeyEncryptionKey(<redacted>)" }
}

struct VaultError: Error, CustomStringConvertible, Sendable {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One sealed, versioned credential as stored on disk (JSON). AES-256-GCM under the KEK, with the
/// format, tool, version and kind as associated data: an entry copied to another tool or relabelled
/// with another version no longer opens.
struct SealedEntry: Codable, Sendable, Hashable {
    enum Kind: String, Codable, Sendable {
        /// An API key or a static bearer token.
        case apiKey = "api_key"
        /// An OAuth2 refresh token with its client id and secret (JSON), exchanged for access tokens.
        case oauthRefresh = "oauth_refresh"
    }

    static let format = "agent-sidecar-vault/1"

    var format: String
    var tool: String
    var version: Int
    var kind: Kind
    var createdAt: String
    var nonce: String
    var ciphertext: String
    var tag: String

    enum CodingKeys: String, CodingKey {
        case format, tool, version, kind, nonce, ciphertext, tag
        case createdAt = "created_at"
    }

    var associatedData: [UInt8] { Array("\(SealedEntry.format)|\(tool)|\(version)|\(kind.rawValue)".utf8) }

    static func seal(_ secret: [UInt8], tool: Tool, version: Int, kind: Kind, kek: KeyEncryptionKey, now: Int64) throws -> SealedEntry {
        var entry = SealedEntry(
            format: format, tool: tool.rawValue, version: version, kind: kind, createdAt: RFC3339.format(now), nonce: "",
            ciphertext: "", tag: "")
        let box = try AES.GCM.seal(secret, using: kek.key, nonce: AES.GCM.Nonce(), authenticating: entry.associatedData)
        entry.nonce = Data(box.nonce).base64EncodedString()
        entry.ciphertext = box.ciphertext.base64EncodedString()
        entry.tag = box.tag.base64EncodedString()
        return entry
    }

    func unseal(with kek: KeyEncryptionKey) throws -> [UInt8] {
        guard format == SealedEntry.format else { throw VaultError("unknown vault format \(format)") }
        guard let nonceData = Data(base64Encoded: nonce), let ct = Data(base64Encoded: ciphertext), let tagData = Data(base64Encoded: tag),
            let n = try? AES.GCM.Nonce(data: nonceData)
        else { throw VaultError("entry for \(tool) v\(version) is corrupt") }
        do {
            let box = try AES.GCM.SealedBox(nonce: n, ciphertext: ct, tag: tagData)
            return Array(try AES.GCM.open(box, using: kek.key, authenticating: associatedData))
        } catch {
            throw VaultError("entry for \(tool) v\(version) does not open with this key-encryption key (wrong KEK or tampered)")
        }
    }
}
