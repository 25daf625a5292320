/// The one path segment an agent chooses on a brokered tool's path — Gmail's user id, OpenAI's model
/// id. It travels with the real credential, so it may hold only letters, digits and the few characters
/// such ids are made of: never a dot segment (any run of dots only) or an escape an upstream could
/// read as a path of its own (`..%2F..%2Fdrive`).
enum PathSegment {
    /// `extra`: the characters allowed besides letters and digits; `escapes`: the characters also
    /// allowed percent-encoded (a client library writes Gmail's `@` as `%40`).
    static func isID(_ segment: Substring, extra: [UInt8], escapes: [UInt8] = [], maxBytes: Int) -> Bool {
        let bytes = Array(segment.utf8)
        guard !bytes.isEmpty, bytes.count <= maxBytes, bytes.contains(where: { $0 != UInt8(ascii: ".") }) else { return false }
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if isAlphanumeric(b) || extra.contains(b) {
                i += 1
            } else if b == UInt8(ascii: "%"), i + 2 < bytes.count, let hi = QueryString.hexValue(bytes[i + 1]), let lo = QueryString.hexValue(bytes[i + 2]),
                escapes.contains(hi << 4 | lo)
            {
                i += 3
            } else {
                return false
            }
        }
        return true
    }

    private static func isAlphanumeric(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        default: return false
        }
    }
}
