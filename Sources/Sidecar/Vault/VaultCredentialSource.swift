import Logging
import Synchronization
import Upstreams

/// Credentials for the pipeline: the vault's sealed entries (highest version per tool) first, then the
/// tool's `credential_env` variable. Reloading swaps the whole set at once; a request that already took
/// its credential finishes with it, so rotation never fails an in-flight call.
final class VaultCredentialSource: CredentialSource {
    private let contents = Mutex(VaultContents())
    private let fallback: PerTool<Credential>
    private let gmail: GmailTokenProvider
    private let directory: String
    private let kek: KeyEncryptionKey?
    /// Told every credential value this source holds, for the exfiltration check.
    private let catalog: SecretCatalog?

    init(directory: String, kek: KeyEncryptionKey?, fallback: [Tool: Credential], gmail: GmailTokenProvider, catalog: SecretCatalog? = nil) throws {
        self.catalog = catalog
        self.directory = directory
        self.kek = kek
        self.fallback = PerTool(fallback)
        self.gmail = gmail
        try reload()
    }

    /// Re-reads the vault directory. On any error the previous contents stay active.
    @discardableResult
    func reload() throws -> [Tool: Int] {
        let fresh = try VaultContents.load(directory: directory, kek: kek)
        contents.withLock { $0 = fresh }
        catalog?.set("vault", Self.catalogued(fresh, fallback: fallback))
        return fresh.versions
    }

    var versions: [Tool: Int] { contents.withLock { $0.versions } }

    /// Every value the vault and the environment hold, labelled by tool (the label is all a refusal names).
    static func catalogued(_ contents: VaultContents, fallback: PerTool<Credential>) -> [ExfiltrationScanner.Secret] {
        var out: [ExfiltrationScanner.Secret] = []
        for tool in Tool.allCases {
            switch contents.secrets[tool] {
            case .apiKey(let c)?:
                out.append(.init(label: tool.rawValue, value: c.reveal(), canary: false))
            case .oauthRefresh(let secret, _)?:
                out.append(.init(label: tool.rawValue, value: secret.refreshToken, canary: false))
                out.append(.init(label: tool.rawValue, value: secret.clientSecret, canary: false))
            case nil:
                break
            }
            if let c = fallback[tool] { out.append(.init(label: tool.rawValue, value: c.reveal(), canary: false)) }
        }
        return out
    }

    /// API keys and environment credentials are in memory; an OAuth access token may need a refresh.
    func readyCredential(for tool: Tool) -> CredentialLookup {
        switch contents.withLock({ $0.secrets[tool] }) {
        case .apiKey(let c)?: return .ready(c)
        case .oauthRefresh?: return .pending
        case nil: return .ready(fallback[tool])
        }
    }

    func credential(for tool: Tool) async throws -> Credential? {
        switch contents.withLock({ $0.secrets[tool] }) {
        case .apiKey(let c)?: return c
        case .oauthRefresh(let secret, let version)?: return try await gmail.accessToken(for: secret, version: version)
        case nil: return fallback[tool]
        }
    }
}
