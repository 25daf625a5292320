/// A fixed-capacity least-recently-used map with O(1) lookup, insertion, removal and eviction: entries
/// live in an array threaded by a doubly linked list (most recent at the head), so nothing is scanned and
/// no node is allocated per entry. Not thread-safe: the owner holds it behind its own lock.
public struct LRUCache<Key: Hashable, Value> {
    fileprivate struct Node {
        var key: Key
        /// nil in a slot freed by `remove` (its value is not kept alive), until the slot is reused.
        var value: Value?
        var previous: Int
        var next: Int
    }

    public let capacity: Int
    private var nodes: [Node] = []
    private var index: [Key: Int] = [:]
    private var head = -1
    private var tail = -1
    /// Slots emptied by `remove`, reused before the array grows.
    private var free: [Int] = []

    public init(capacity: Int) {
        precondition(capacity > 0, "an LRU cache needs room for one entry")
        self.capacity = capacity
    }

    public var count: Int { index.count }

    /// Whether `key` is held (without making it the most recently used).
    public func contains(_ key: Key) -> Bool { index[key] != nil }

    /// The value for `key`, which becomes the most recently used.
    public mutating func get(_ key: Key) -> Value? {
        guard let i = index[key] else { return nil }
        moveToFront(i)
        return nodes[i].value
    }

    /// Stores `value` as the most recently used; returns the entry evicted to make room, if any.
    @discardableResult
    public mutating func set(_ key: Key, _ value: Value) -> (key: Key, value: Value)? {
        if let i = index[key] {
            nodes[i].value = value
            moveToFront(i)
            return nil
        }
        if let i = free.popLast() {
            nodes[i] = Node(key: key, value: value, previous: -1, next: -1)
            index[key] = i
            linkFront(i)
            return nil
        }
        if nodes.count < capacity {
            nodes.append(Node(key: key, value: value, previous: -1, next: -1))
            let i = nodes.count - 1
            index[key] = i
            linkFront(i)
            return nil
        }
        // Full: the least recently used slot is reused for the new entry.
        let i = tail
        let evicted = (nodes[i].key, nodes[i].value!)
        unlink(i)
        index[evicted.0] = nil
        nodes[i] = Node(key: key, value: value, previous: -1, next: -1)
        index[key] = i
        linkFront(i)
        return evicted
    }

    /// Removes `key`'s entry; returns its value.
    @discardableResult
    public mutating func remove(_ key: Key) -> Value? {
        guard let i = index.removeValue(forKey: key) else { return nil }
        unlink(i)
        let value = nodes[i].value
        nodes[i].value = nil
        free.append(i)
        return value
    }

    /// Removes the least recently used entry (for owners that bound something other than the count).
    public mutating func removeLeastRecent() -> (key: Key, value: Value)? {
        guard tail >= 0 else { return nil }
        let key = nodes[tail].key
        guard let value = remove(key) else { return nil }
        return (key, value)
    }

    /// Keys from the most to the least recently used (for tests and diagnostics).
    public var keysByRecency: [Key] {
        var out: [Key] = []
        var i = head
        while i >= 0 {
            out.append(nodes[i].key)
            i = nodes[i].next
        }
        return out
    }

    private mutating func moveToFront(_ i: Int) {
        guard head != i else { return }
        unlink(i)
        linkFront(i)
    }

    private mutating func unlink(_ i: Int) {
        let (p, n) = (nodes[i].previous, nodes[i].next)
        if p >= 0 { nodes[p].next = n } else { head = n }
        if n >= 0 { nodes[n].previous = p } else { tail = p }
        nodes[i].previous = -1
        nodes[i].next = -1
    }

    private mutating func linkFront(_ i: Int) {
        nodes[i].next = head
        nodes[i].previous = -1
        if head >= 0 { nodes[head].previous = i }
        head = i
        if tail < 0 { tail = i }
    }
}

extension LRUCache: Sendable where Key: Sendable, Value: Sendable {}
extension LRUCache.Node: Sendable where Key: Sendable, Value: Sendable {}
