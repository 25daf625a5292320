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

    init(directory: String, kek: KeyEncryptionKey?, fallback: [Tool: Credential], gmail: GmailTokenProvider) throws {
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
        return fresh.versions
    }

    var versions: [Tool: Int] { contents.withLock { $0.versions } }

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
