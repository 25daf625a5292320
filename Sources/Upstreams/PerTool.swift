/// A dictionary keyed by `Tool`, kept as one slot per tool indexed by `Tool.index`.
///
/// The request path looks a per-tool setting, bulkhead, retry budget, endpoint, timeout or route up
/// about eight times per request. A `[Tool: Value]` lookup hashes the key through `Hasher` (about 200
/// instructions each under callgrind, ~1.4 % of the sidecar's per-request work in all); this is an array
/// index. It reads and writes like the dictionary it replaces — an optional subscript, literals,
/// iteration as key-value pairs (in `Tool.allCases` order) — so the code that builds it is unchanged.
public struct PerTool<Value> {
    private var slots: [Value?]

    public init() { slots = Array(repeating: nil, count: Tool.allCases.count) }

    public init(_ dictionary: [Tool: Value]) {
        self.init()
        for (tool, value) in dictionary { slots[tool.index] = value }
    }

    public init<S: Sequence>(uniqueKeysWithValues pairs: S) where S.Element == (Tool, Value) {
        self.init()
        for (tool, value) in pairs {
            precondition(slots[tool.index] == nil, "duplicate tool \(tool)")
            slots[tool.index] = value
        }
    }

    public subscript(tool: Tool) -> Value? {
        get { slots[tool.index] }
        set { slots[tool.index] = newValue }
        _modify { yield &slots[tool.index] }
    }

    public var isEmpty: Bool { slots.allSatisfy { $0 == nil } }
    public var count: Int { slots.count { $0 != nil } }
    public var keys: [Tool] { Tool.allCases.filter { slots[$0.index] != nil } }
    public var values: [Value] { slots.compactMap { $0 } }

    public func mapValues<T>(_ transform: (Value) throws -> T) rethrows -> PerTool<T> {
        var out = PerTool<T>()
        for tool in Tool.allCases { if let v = slots[tool.index] { out[tool] = try transform(v) } }
        return out
    }
}

extension PerTool: Sequence {
    public func makeIterator() -> IndexingIterator<[(key: Tool, value: Value)]> {
        Tool.allCases.compactMap { tool in slots[tool.index].map { (key: tool, value: $0) } }.makeIterator()
    }
}

extension PerTool: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (Tool, Value)...) { self.init(uniqueKeysWithValues: elements) }
}

extension PerTool: Sendable where Value: Sendable {}
extension PerTool: Equatable where Value: Equatable {}
extension PerTool: Hashable where Value: Hashable {}
