/// An ordered list of `application/x-www-form-urlencoded` query items.
///
/// Used to read policy-relevant parameters (SerpAPI `q`, `engine`, `num`), to remove an agent-supplied
/// `api_key`, and to build the cache key from a normalized query. A parsed query that is not changed is
/// forwarded exactly as the agent encoded it (as a proxy should), without being encoded again.
public struct QueryString: Sendable, Hashable {
    public var items: [(name: String, value: String)] { didSet { raw = nil } }
    /// The text it was parsed from, while the items are unchanged.
    private var raw: String?

    public init(_ items: [(name: String, value: String)] = []) { self.items = items }

    public init(parsing raw: String?) {
        guard var raw, !raw.isEmpty else { self.items = []; return }
        var items: [(name: String, value: String)] = []
        // Walked as bytes in place: no substring or index check per step, one string per name and value.
        raw.withUTF8 { bytes in
            var start = 0
            while start < bytes.count {
                var end = start
                while end < bytes.count, bytes[end] != UInt8(ascii: "&") { end += 1 }
                if end > start {
                    let pair = UnsafeBufferPointer(rebasing: bytes[start..<end])
                    if let eq = pair.firstIndex(of: UInt8(ascii: "=")) {
                        items.append((Self.decode(UnsafeBufferPointer(rebasing: pair[..<eq])), Self.decode(UnsafeBufferPointer(rebasing: pair[(eq + 1)...]))))
                    } else {
                        items.append((Self.decode(pair), ""))
                    }
                }
                start = end + 1
            }
        }
        self.items = items
        self.raw = raw
    }

    public func first(_ name: String) -> String? { items.first(where: { $0.name == name })?.value }

    /// Why a server could read this query as other parameters than these items, or nil. A guard reads
    /// the items; the upstream's framework (SerpAPI is Rails) may take the last of two values, split on
    /// `;` as well as `&`, or turn `num[]=` into an array — so none of that is guessed at: a repeated
    /// name (compared decoded: `n%75m` is `num`), a raw `;`, and bracketed names are refused.
    public var ambiguity: String? {
        if let raw, raw.utf8.contains(UInt8(ascii: ";")) { return "the query contains ';', which some servers read as a parameter separator" }
        var seen = Set<String>()
        for item in items {
            let shown = item.name.prefix(40)
            if item.name.utf8.contains(where: { $0 == UInt8(ascii: "[") || $0 == UInt8(ascii: "]") }) {
                return "parameter \(shown) uses bracket (array) syntax"
            }
            if !seen.insert(item.name).inserted { return "parameter \(shown) appears more than once" }
        }
        return nil
    }

    public mutating func removeAll(named name: String) {
        guard items.contains(where: { $0.name == name }) else { return }
        items.removeAll { $0.name == name }
    }

    public mutating func append(_ name: String, _ value: String) { items.append((name: name, value: value)) }

    public var encoded: String {
        if let raw { return raw }
        var out: [UInt8] = []
        out.reserveCapacity(items.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 2 })
        for (i, item) in items.enumerated() {
            if i > 0 { out.append(UInt8(ascii: "&")) }
            Self.encode(item.name, into: &out)
            out.append(UInt8(ascii: "="))
            Self.encode(item.value, into: &out)
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func == (lhs: QueryString, rhs: QueryString) -> Bool {
        lhs.items.elementsEqual(rhs.items, by: { $0.name == $1.name && $0.value == $1.value })
    }

    public func hash(into hasher: inout Hasher) {
        for item in items {
            hasher.combine(item.name)
            hasher.combine(item.value)
        }
    }

    static func decode(_ s: String) -> String {
        var s = s
        return s.withUTF8 { decode($0) }
    }

    static func decode(_ s: UnsafeBufferPointer<UInt8>) -> String {
        // Most names and values need no decoding at all.
        if !s.contains(where: { $0 == UInt8(ascii: "%") || $0 == UInt8(ascii: "+") }) { return String(decoding: s, as: UTF8.self) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(s.count)
        var i = 0
        while i < s.count {
            let b = s[i]
            i += 1
            if b == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if b == UInt8(ascii: "%"), i + 1 < s.count, let hi = hexValue(s[i]), let lo = hexValue(s[i + 1]) {
                bytes.append(hi << 4 | lo)
                i += 2
            } else {
                bytes.append(b)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func encode(_ s: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        encode(s, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Percent-encodes everything but the RFC 3986 unreserved characters.
    static func encode(_ s: String, into out: inout [UInt8]) {
        let hex: StaticString = "0123456789ABCDEF"
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.append(b)
            default:
                out.append(UInt8(ascii: "%"))
                out.append(hex.utf8Start[Int(b >> 4)])
                out.append(hex.utf8Start[Int(b & 0xF)])
            }
        }
    }

    /// A hex digit's value (percent-decoding here, in `PathSegment` and in `ExfiltrationScanner`).
    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
