/// A tool's real credential (an API key or an OAuth access token).
///
/// It redacts itself in every description, debug description and mirror, so a credential that ends up in
/// string interpolation, a log metadata value or a `dump()` prints `<redacted>`. The only way to the
/// plaintext is `reveal()`, which is called in exactly one place: when the credential is written into
/// the upstream request.
public struct Credential: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    private let value: String
    /// The sealed entry's version, so a rotation is observable without revealing anything.
    public let version: Int
    /// What the scrubber searches for in every answer (nothing when the value is too short to search for
    /// safely), taken once when the credential is loaded.
    let scrubbed: [[UInt8]]
    /// The value percent-encoded for a query string (SerpAPI's `api_key`), encoded once.
    let queryEncoded: String

    public init(_ value: String, version: Int = 1) {
        self.value = value
        self.version = version
        self.scrubbed = SecretScrubber(bytes: [Array(value.utf8)]).secrets
        self.queryEncoded = QueryString.encode(value)
    }

    public static func == (lhs: Credential, rhs: Credential) -> Bool { lhs.value == rhs.value && lhs.version == rhs.version }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(value)
        hasher.combine(version)
    }

    public func reveal() -> String { value }

    /// Whether a credential's text can be written into a request header as it is: visible ASCII only,
    /// no space or control character (checked where credentials are loaded, so one pasted with a line
    /// break inside fails the start instead of every call).
    public static func isHeaderSafe(_ text: String) -> Bool { text.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7E } }

    public var isEmpty: Bool { value.isEmpty }

    public var description: String { "Credential(v\(version), <redacted>)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["version": version]) }
}

/// Where adapters get a tool's credential from. The data plane fills it from configuration and the
/// environment; the vault (sealed, versioned entries) plugs in behind the same protocol.
public protocol CredentialSource: Sendable {
    /// The credential to use for `tool`, or nil when none is configured.
    func credential(for tool: Tool) async throws -> Credential?

    /// The credential when it is in memory and nothing has to be fetched or refreshed first; `.pending`
    /// sends the call through `credential(for:)`.
    func readyCredential(for tool: Tool) -> CredentialLookup
}

extension CredentialSource {
    public func readyCredential(for tool: Tool) -> CredentialLookup { .pending }
}

/// A credential lookup that does not wait.
public enum CredentialLookup: Sendable {
    /// The credential (nil when none is configured).
    case ready(Credential?)
    /// It has to be fetched (an OAuth refresh, say).
    case pending
}

/// Credentials that never change while the process runs.
public struct StaticCredentials: CredentialSource {
    private let byTool: [Tool: Credential]

    public init(_ byTool: [Tool: Credential]) { self.byTool = byTool }

    public func credential(for tool: Tool) async throws -> Credential? { byTool[tool] }

    public func readyCredential(for tool: Tool) -> CredentialLookup { .ready(byTool[tool]) }
}
