import Foundation
import Logging
import Synchronization
import Upstreams

/// OAuth2 client material for Gmail: exchanged for short-lived access tokens. Redacts itself.
struct OAuthRefreshSecret: Sendable, Hashable, Codable, CustomStringConvertible, CustomReflectable {
    var refreshToken: String
    var clientID: String
    var clientSecret: String

    enum CodingKeys: String, CodingKey {
        case refreshToken = "refresh_token"
        case clientID = "client_id"
        case clientSecret = "client_secret"
    }

    var description: String { "OAuthRefreshSecret(client: \(clientID.prefix(6))…, <redacted>)" }
    var customMirror: Mirror { Mirror(self, children: [:]) }
}

/// What the vault holds for one tool, unsealed (in memory only).
enum VaultSecret: Sendable, Hashable {
    case apiKey(Credential)
    case oauthRefresh(OAuthRefreshSecret, version: Int)
}

/// The unsealed credentials of one generation of the vault directory: for each tool, the highest version.
struct VaultContents: Sendable {
    var secrets = PerTool<VaultSecret>()
    var versions: [Tool: Int] = [:]

    static func load(directory: String, kek: KeyEncryptionKey?) throws -> VaultContents {
        var contents = VaultContents()
        guard FileManager.default.fileExists(atPath: directory) else { return contents }
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".sealed") }.sorted()
        guard !names.isEmpty else { return contents }
        guard let kek else { throw VaultError("\(directory) holds sealed entries but no key-encryption key is configured (KEK_BASE64 or vault.kek_file)") }
        for name in names {
            let path = (directory as NSString).appendingPathComponent(name)
            let entry: SealedEntry
            do {
                entry = try JSONDecoder().decode(SealedEntry.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
            } catch {
                throw VaultError("\(path) is not a sealed entry")
            }
            guard let tool = Tool(rawValue: entry.tool), tool.isBrokered else { throw VaultError("\(path): unknown tool \(entry.tool)") }
            if let have = contents.versions[tool], have >= entry.version { continue }
            let plain = try entry.unseal(with: kek)
            switch entry.kind {
            case .apiKey:
                guard let text = String(bytes: plain, encoding: .utf8), !text.isEmpty else { throw VaultError("\(path): empty secret") }
                let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
                guard Credential.isHeaderSafe(key) else {
                    throw VaultError("\(path): the secret has a space, control or non-ASCII character inside it (the value is not shown)")
                }
                contents.secrets[tool] = .apiKey(Credential(key, version: entry.version))
            case .oauthRefresh:
                guard let secret = try? JSONDecoder().decode(OAuthRefreshSecret.self, from: Data(plain)) else {
                    throw VaultError("\(path): oauth_refresh entries hold {refresh_token, client_id, client_secret}")
                }
                contents.secrets[tool] = .oauthRefresh(secret, version: entry.version)
            }
            contents.versions[tool] = entry.version
        }
        return contents
    }

    /// The next version number for `tool` in `directory` (1 + the highest sealed one).
    static func nextVersion(for tool: Tool, in directory: String) -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var highest = 0
        for name in names where name.hasSuffix(".sealed") {
            let path = (directory as NSString).appendingPathComponent(name)
            if let entry = try? JSONDecoder().decode(SealedEntry.self, from: Data(contentsOf: URL(fileURLWithPath: path))), entry.tool == tool.rawValue {
                highest = max(highest, entry.version)
            }
        }
        return highest + 1
    }
}
