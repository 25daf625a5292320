/// A value for each tool, kept as one slot per tool indexed by `Tool.index`.
///
/// The request path looks a per-tool setting, bulkhead, retry budget, endpoint, timeout, route or
/// credential up about eight times per request. A `[Tool: Value]` lookup hashes the key through `Hasher`
/// (about 200 instructions each under callgrind, ~1.4 % of the sidecar's per-request work in all); this
/// is an array index. The subscript is optional like the dictionary's, so a tool without a value (no
/// vault secret, no configured endpoint) reads as nil.
public struct PerTool<Value> {
    private var slots: [Value?]

    /// No value for any tool.
    public init() { slots = Array(repeating: nil, count: Tool.allCases.count) }

    /// A value for every tool.
    public init(_ make: (Tool) throws -> Value) rethrows { slots = try Tool.allCases.map(make) }

    /// The tools the dictionary has a value for.
    public init(_ dictionary: [Tool: Value]) {
        self.init()
        for (tool, value) in dictionary { slots[tool.index] = value }
    }

    public subscript(tool: Tool) -> Value? {
        get { slots[tool.index] }
        set { slots[tool.index] = newValue }
        _modify { yield &slots[tool.index] }
    }
}

extension PerTool: Sendable where Value: Sendable {}
extension PerTool: Equatable where Value: Equatable {}
extension PerTool: Hashable where Value: Hashable {}
