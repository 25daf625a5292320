import NIOCore
import Policy
import Upstreams

extension RunCall {
    /// The loop breaker's fingerprint of a call: a digest of the tool, the action and what it asks for — method,
    /// path, target, its query pairs in any order, and a JSON body by content, not by spelling (member
    /// order, whitespace and string escapes do not count; `FingerprintJSON`). Any other body counts by
    /// its bytes.
    ///
    /// Computed in one pass over the body's bytes, on every call of a run: no parse into a tree, no sort,
    /// no canonical text. It only has to tell calls of one run apart — not resist the agent, which can vary
    /// its calls at will anyway — so a number counts by its spelling (`1` and `1.0` differ), and a body the
    /// JSON walk cannot read (invalid, deeper than `FingerprintJSON.maxDepth`) counts by its bytes.
    static func fingerprint(_ call: ToolCall) -> CallFingerprint {
        var h = CallFingerprint.Hasher()
        h.add(call.tool.rawValue)
        h.add(call.action)
        h.add(call.request.method.rawValue)
        h.add(call.request.path)
        h.add(call.request.target?.description ?? "")
        // Query pairs in any order — but a repeated name's values in theirs (`q=a&q=b` is not `q=b&q=a`
        // to an upstream that reads the first or the last): a sum of each pair's digest, the pair taken
        // with how many pairs of its name came before it.
        // (Counted as they come beyond 16 pairs: a query of n pairs costs n steps, not n², whatever the
        // agent sends.)
        // A short query (most are) counts them by looking back: no table to allocate and hash into.
        var pairs = CallFingerprint.Hasher.Sum()
        let items = call.request.query.items
        var before: [String: UInt64] = [:]
        for (k, item) in items.enumerated() {
            var p = CallFingerprint.Hasher()
            p.add(item.name)
            p.add(item.value)
            if items.count <= 16 {
                var earlier: UInt64 = 0
                for j in 0..<k where items[j].name == item.name { earlier += 1 }
                p.mix(earlier)
            } else {
                p.mix(before[item.name, default: 0])
                before[item.name, default: 0] += 1
            }
            pairs.add(p)
        }
        h.add(pairs)
        if let body = call.request.body, body.readableBytes > 0 {
            body.withUnsafeReadableBytes { bytes in
                if let json = FingerprintJSON.digest(bytes) {
                    h.mix(0x6a)  // "j"
                    h.add(json)
                } else if let form = RunCall.uploadDigest(call) {
                    h.mix(0x66)  // "f": the parts without the boundary an SDK draws anew each time
                    h.add(form)
                } else {
                    h.mix(0x62)  // "b"
                    h.add(bytes: bytes)
                }
            }
        }
        return h.fingerprint
    }
}

/// A JSON document's digest by content, in one pass over its bytes (`RunCall.fingerprint`): an object is
/// the order-free sum of its members (name and value), an array its elements in order, a string its
/// characters after unescaping (`"\u0061"` is `"a"`), a number its text, whitespace nothing. nil for
/// what is not one JSON document, or nests deeper than `maxDepth`.
enum FingerprintJSON {
    static let maxDepth = 128

    static func digest(_ bytes: UnsafeRawBufferPointer) -> CallFingerprint.Hasher? {
        var walk = Walk(bytes: bytes)
        guard let h = walk.value(depth: 0) else { return nil }
        walk.skipSpace()
        return walk.i == bytes.count ? h : nil
    }

    private struct Walk {
        let bytes: UnsafeRawBufferPointer
        var i = 0

        mutating func skipSpace() {
            while i < bytes.count {
                switch bytes[i] {
                case 0x20, 0x09, 0x0a, 0x0d: i += 1
                default: return
                }
            }
        }

        mutating func value(depth: Int) -> CallFingerprint.Hasher? {
            skipSpace()
            guard i < bytes.count else { return nil }
            var h = CallFingerprint.Hasher()
            switch bytes[i] {
            case UInt8(ascii: "{"):
                guard depth < FingerprintJSON.maxDepth else { return nil }
                i += 1
                var members = CallFingerprint.Hasher.Sum()
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
                    i += 1
                } else {
                    while true {
                        skipSpace()
                        guard i < bytes.count, bytes[i] == UInt8(ascii: "\""), let name = string() else { return nil }
                        skipSpace()
                        guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return nil }
                        i += 1
                        guard let v = value(depth: depth + 1) else { return nil }
                        var member = name
                        member.add(v)
                        members.add(member)
                        skipSpace()
                        guard i < bytes.count else { return nil }
                        if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                        guard bytes[i] == UInt8(ascii: "}") else { return nil }
                        i += 1
                        break
                    }
                }
                h.mix(0x6f)  // "o"
                h.add(members)
            case UInt8(ascii: "["):
                guard depth < FingerprintJSON.maxDepth else { return nil }
                i += 1
                h.mix(0x61)  // "a"
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
                    i += 1
                } else {
                    while true {
                        guard let v = value(depth: depth + 1) else { return nil }
                        h.add(v)
                        skipSpace()
                        guard i < bytes.count else { return nil }
                        if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                        guard bytes[i] == UInt8(ascii: "]") else { return nil }
                        i += 1
                        break
                    }
                }
                h.mix(0x5d)  // "]": [[]] is not [], []
            case UInt8(ascii: "\""):
                guard let s = string() else { return nil }
                h.mix(0x73)  // "s"
                h.add(s)
            case UInt8(ascii: "t"): guard literal("true") else { return nil }; h.mix(0x74)
            case UInt8(ascii: "f"): guard literal("false") else { return nil }; h.mix(0x66)
            case UInt8(ascii: "n"): guard literal("null") else { return nil }; h.mix(0x6e)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                let start = i
                while i < bytes.count, Self.isNumberByte(bytes[i]) { i += 1 }
                h.mix(0x23)  // "#"
                h.add(bytes: UnsafeRawBufferPointer(rebasing: bytes[start..<i]))
            default:
                return nil
            }
            return h
        }

        private static func isNumberByte(_ b: UInt8) -> Bool {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"):
                return true
            default: return false
            }
        }

        private mutating func literal(_ word: StaticString) -> Bool {
            let n = word.utf8CodeUnitCount
            guard i + n <= bytes.count else { return false }
            for k in 0..<n where bytes[i + k] != word.utf8Start[k] { return false }
            i += n
            return true
        }

        /// A string at `i` (its opening quote), digested by its characters: runs of plain bytes as they
        /// are, each escape as the UTF-8 of what it stands for. Advances past the closing quote.
        private mutating func string() -> CallFingerprint.Hasher? {
            i += 1
            var h = CallFingerprint.Hasher()
            var length: UInt64 = 0
            while i < bytes.count {
                let c = bytes[i]
                switch c {
                case UInt8(ascii: "\""):
                    i += 1
                    h.mix(length &+ 0x8000_0000_0000_0000)  // the end, and how long: "ab","c" is not "a","bc"
                    return h
                case UInt8(ascii: "\\"):
                    guard i + 1 < bytes.count else { return nil }
                    let e = bytes[i + 1]
                    i += 2
                    let unescaped: UInt8
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): unescaped = e
                    case UInt8(ascii: "b"): unescaped = 0x08
                    case UInt8(ascii: "f"): unescaped = 0x0c
                    case UInt8(ascii: "n"): unescaped = 0x0a
                    case UInt8(ascii: "r"): unescaped = 0x0d
                    case UInt8(ascii: "t"): unescaped = 0x09
                    case UInt8(ascii: "u"):
                        guard var scalar = hex4() else { return nil }
                        if (0xD800..<0xDC00).contains(scalar), i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"),
                            bytes[i + 1] == UInt8(ascii: "u")
                        {
                            let mark = i
                            i += 2
                            if let low = hex4(), (0xDC00..<0xE000).contains(low) {
                                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                i = mark
                            }
                        }
                        // A lone surrogate has no UTF-8: digested as U+FFFD, as a decoder would read it.
                        for byte in String(Unicode.Scalar(scalar) ?? "\u{FFFD}").utf8 {
                            h.mix(UInt64(byte))
                            length &+= 1
                        }
                        continue
                    default:
                        return nil
                    }
                    h.mix(UInt64(unescaped))
                    length &+= 1
                case 0x00..<0x20:
                    return nil
                default:
                    h.mix(UInt64(c))
                    length &+= 1
                    i += 1
                }
            }
            return nil
        }

        private mutating func hex4() -> UInt32? {
            guard i + 4 <= bytes.count else { return nil }
            var v: UInt32 = 0
            for k in 0..<4 {
                let c = bytes[i + k]
                let d: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
                default: return nil
                }
                v = v << 4 | UInt32(d)
            }
            i += 4
            return v
        }
    }
}
