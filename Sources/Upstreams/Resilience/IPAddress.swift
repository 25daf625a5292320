/// An IPv4 or IPv6 address.
public enum IPAddress: Sendable, Hashable, CustomStringConvertible {
    case v4(UInt32)
    case v6([UInt8])

    /// Parses a host as an IP literal the way a permissive client would, so the guard sees what would
    /// really be connected to: IPv4 in dotted, decimal (`2130706433`), octal (`0177.0.0.1`), hex
    /// (`0x7f.1`) and short (`127.1`) forms, and IPv6 (with or without brackets). nil for names.
    public static func parse(_ host: String) -> IPAddress? {
        var h = host
        if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if h.contains(":") { return parseV6(h) }
        return parseV4(h)
    }

    static func parseV4(_ s: String) -> IPAddress? {
        // Most hosts are either names or dotted quads: both decided byte-wise here. Anything else (octal,
        // hex, fewer parts, signs) goes the general way below, which a dotted quad or a name would reach
        // with the same answer.
        switch quickV4(s) {
        case .name: return nil
        case .quad(let v): return .v4(v)
        case .other: return parseV4General(s)
        }
    }

    /// Every form `inet_aton` accepts: 1–4 parts, each decimal, octal (leading 0) or hex (0x).
    static func parseV4General(_ s: String) -> IPAddress? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...4).contains(parts.count), !parts.contains(where: \.isEmpty) else { return nil }
        var values: [UInt64] = []
        for p in parts {
            let lower = p.lowercased()
            let value: UInt64?
            if lower.hasPrefix("0x") { value = lower.count == 2 ? 0 : UInt64(lower.dropFirst(2), radix: 16) }
            else if lower.count > 1, lower.hasPrefix("0") { value = UInt64(lower.dropFirst(), radix: 8) }
            else { value = UInt64(lower, radix: 10) }
            guard let v = value else { return nil }
            values.append(v)
        }
        // inet_aton: the last part fills the remaining bytes.
        let lastBits = UInt64(8 * (5 - values.count))
        for v in values.dropLast() where v > 255 { return nil }
        guard values.last! < (UInt64(1) << lastBits) else { return nil }
        var result: UInt64 = 0
        for (i, v) in values.dropLast().enumerated() { result |= v << UInt64(24 - 8 * i) }
        result |= values.last!
        return .v4(UInt32(result))
    }

    private enum QuickV4 {
        /// A byte no IPv4 form has (every one is digits, hex letters, `x`, dots and signs).
        case name
        /// Four decimal parts of 1–3 digits, no leading zero, each at most 255.
        case quad(UInt32)
        case other
    }

    private static func quickV4(_ s: String) -> QuickV4 {
        var s = s
        return s.withUTF8 { bytes in
            var value: UInt32 = 0
            var part: UInt32 = 0
            var digits = 0
            var parts = 0
            var quad = true
            for b in bytes {
                switch b {
                case UInt8(ascii: "0")...UInt8(ascii: "9"):
                    if digits == 1, part == 0 { quad = false }  // a leading zero: octal
                    part = part &* 10 &+ UInt32(b - UInt8(ascii: "0"))
                    digits += 1
                    if digits > 3 || part > 255 { quad = false }
                case UInt8(ascii: "."):
                    if digits == 0 { quad = false }
                    value = value << 8 | (part & 0xFF)
                    parts += 1
                    part = 0
                    digits = 0
                case UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"), UInt8(ascii: "x"), UInt8(ascii: "X"),
                    UInt8(ascii: "+"), UInt8(ascii: "-"):
                    quad = false
                default:
                    return .name
                }
            }
            guard quad, parts == 3, digits > 0 else { return .other }
            return .quad(value << 8 | part)
        }
    }

    static func parseV6(_ s: String) -> IPAddress? {
        guard !s.contains("%") else { return nil }  // zone ids are never a valid destination here
        var head: [UInt16] = []
        var tail: [UInt16] = []
        let halves = s.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String, allowV4: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            var out: [UInt16] = []
            let items = part.split(separator: ":", omittingEmptySubsequences: false)
            for (i, item) in items.enumerated() {
                if allowV4, i == items.count - 1, item.contains(".") {
                    guard case .v4(let v)? = parseStrictV4(String(item)) else { return nil }
                    out += [UInt16(v >> 16), UInt16(v & 0xFFFF)]
                } else {
                    guard (1...4).contains(item.count), let g = UInt16(item, radix: 16) else { return nil }
                    out.append(g)
                }
            }
            return out
        }
        if halves.count == 2 {
            guard let h = groups(halves[0], allowV4: false), let t = groups(halves[1], allowV4: true), h.count + t.count <= 7 else { return nil }
            head = h
            tail = t
        } else {
            guard let all = groups(halves[0], allowV4: true), all.count == 8 else { return nil }
            head = all
        }
        let words = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        return .v6(words.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] })
    }

    static func parseStrictV4(_ s: String) -> IPAddress? {
        let parts = s.split(separator: ".")
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard let b = UInt8(p), String(b) == p else { return nil }
            v = v << 8 | UInt32(b)
        }
        return .v4(v)
    }

    public var description: String {
        switch self {
        case .v4(let v): return "\(v >> 24).\((v >> 16) & 255).\((v >> 8) & 255).\(v & 255)"
        case .v6(let b):
            return stride(from: 0, to: 16, by: 2).map { String(UInt16(b[$0]) << 8 | UInt16(b[$0 + 1]), radix: 16) }.joined(separator: ":")
        }
    }
}
