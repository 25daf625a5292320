/// An ordered list of `application/x-www-form-urlencoded` query items.
///
/// Used to read policy-relevant parameters (SerpAPI `q`, `engine`, `num`), to remove an agent-supplied
/// `api_key`, and to build the cache key from a normalized query.
public struct QueryString: Sendable, Hashable {
    public var items: [(name: String, value: String)]

    public init(_ items: [(name: String, value: String)] = []) { self.items = items }

    public init(parsing raw: String?) {
        var items: [(String, String)] = []
        guard let raw, !raw.isEmpty else { self.items = []; return }
        for pair in raw.split(separator: "&", omittingEmptySubsequences: true) {
            if let eq = pair.firstIndex(of: "=") {
                items.append((QueryString.decode(pair[..<eq]), QueryString.decode(pair[pair.index(after: eq)...])))
            } else {
                items.append((QueryString.decode(pair), ""))
            }
        }
        self.items = items.map { (name: $0.0, value: $0.1) }
    }

    public func first(_ name: String) -> String? { items.first(where: { $0.name == name })?.value }

    public mutating func removeAll(named name: String) { items.removeAll { $0.name == name } }

    public mutating func append(_ name: String, _ value: String) { items.append((name: name, value: value)) }

    public var encoded: String {
        items.map { "\(QueryString.encode($0.name))=\(QueryString.encode($0.value))" }.joined(separator: "&")
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

    static func decode<S: StringProtocol>(_ s: S) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(s.utf8.count)
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if b == UInt8(ascii: "%"), it.count >= 2,
                let hi = hexValue(it[it.startIndex]), let lo = hexValue(it[it.startIndex + 1])
            {
                bytes.append(hi << 4 | lo)
                it = it.dropFirst(2)
            } else {
                bytes.append(b)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func encode(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                out += "%"
                out += String(b, radix: 16, uppercase: true).count == 1
                    ? "0" + String(b, radix: 16, uppercase: true) : String(b, radix: 16, uppercase: true)
            }
        }
        return out
    }

    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
