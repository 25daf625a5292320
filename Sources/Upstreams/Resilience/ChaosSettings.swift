/// The chaos switch: on or off, the faults per tool, an optional seed and an optional end time.
/// Gmail sends are excluded unless `gmailOptIn` (an injected "failure" after the send would tempt a
/// client into sending twice).
public struct ChaosSettings: Sendable, Hashable, Codable {
    public var enabled = false
    public var tools: [String: ChaosFaults] = [:]
    public var seed: UInt64?
    /// Unix ms after which chaos turns itself off.
    public var until: Int64?
    public var gmailOptIn = false

    public init() {}

    enum CodingKeys: String, CodingKey { case enabled, tools, seed, until, gmailOptIn = "gmail_opt_in" }

    /// Every key is optional (`{"enabled": false}` is a whole document).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? false
        tools = try c.decodeIfPresent([String: ChaosFaults].self, forKey: .tools) ?? [:]
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed)
        until = try c.decodeIfPresent(Int64.self, forKey: .until)
        gmailOptIn = try c.decodeIfPresent(Bool.self, forKey: .gmailOptIn) ?? false
    }

    public func faults(for tool: Tool, now: Int64) -> ChaosFaults? {
        guard enabled, until.map({ now < $0 }) ?? true else { return nil }
        if tool == .gmailSend, !gmailOptIn { return nil }
        return tools[tool.rawValue] ?? tools["*"]
    }
}
