/// The four tools the sidecar brokers. The raw value is the stable name used in configuration,
/// policy documents, metrics labels and log lines, so it must never change.
public enum Tool: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
    case serpapi
    case openai
    case httpFetch = "http_fetch"
    case gmailSend = "gmail_send"

    public var description: String { rawValue }

    /// Position in `allCases`: the slot of `PerTool`, which the request path uses instead of `[Tool: …]`;
    /// hashing and comparing by it keeps the remaining sets and dictionaries off string hashing.
    public var index: Int {
        switch self {
        case .serpapi: return 0
        case .openai: return 1
        case .httpFetch: return 2
        case .gmailSend: return 3
        }
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(index) }
    public static func == (lhs: Tool, rhs: Tool) -> Bool { lhs.index == rhs.index }

    /// Every action of the tool. Actions are a closed set so they can be metric labels and policy keys.
    public var actions: [String] { Self.actionLists[index] }

    private static let actionLists = [["search"], ["chat", "completions", "embeddings", "responses", "models", "moderations", "images", "image_edits", "image_variations", "speech", "transcriptions", "translations", "traces", "stored_responses"], ["get", "head"], ["send", "profile"]]

    /// The reverse-route prefix an SDK uses as its base URL (`/openai/v1/...`).
    public var reversePrefix: String {
        switch self {
        case .serpapi: return "/serpapi"
        case .openai: return "/openai"
        case .httpFetch: return "/fetch"
        case .gmailSend: return "/gmail"
        }
    }

    /// Whether the sidecar holds the tool's real credential (the agent's own key is removed).
    public var isBrokered: Bool { self != .httpFetch }
}
