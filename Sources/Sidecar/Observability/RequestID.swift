import NIOHTTP1

/// The id that ties an access log line, the upstream request and the agent's response together.
enum RequestID {
    /// Taken from `X-Request-Id` (if it is 1–128 safe characters, so it cannot forge log fields), else
    /// from a W3C `traceparent`'s trace id, else generated (128 random bits, hex).
    static func from(_ headers: HTTPHeaders) -> String {
        if let given = headers.first(name: "x-request-id"), isSafe(given) { return given }
        if let tp = headers.first(name: "traceparent") {
            let parts = tp.split(separator: "-")
            if parts.count == 4, parts[1].count == 32, parts[1].allSatisfy(\.isHexDigit), parts[1] != String(repeating: "0", count: 32) {
                return String(parts[1]).lowercased()
            }
        }
        return generate()
    }

    static func generate() -> String {
        var g = SystemRandomNumberGenerator()
        return hex(g.next()) + hex(g.next())
    }

    static func isSafe(_ s: String) -> Bool {
        (1...128).contains(s.utf8.count)
            && s.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x2E
                    || b == 0x5F || b == 0x3A
            }
    }

    private static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
