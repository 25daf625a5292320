import NIOHTTP1

/// The `Host` field of a request to the proxy port, checked as RFC 9112 §3.2 asks: an HTTP/1.1 request
/// without one, or with a value that is not `uri-host [":" port]`, is answered 400. The sidecar routes by
/// the request-target, not by `Host`, but a front proxy, a log reader or the upstream may read `Host`;
/// a request that two readers could take to different places is refused, as a repeated `Host` already is
/// (`SingleValuedFields`). `CONNECT` names its target in the request line and older clients send it as
/// HTTP/1.0 or without `Host`, so there only the value is checked.
enum HostField {
    static func problem(in head: HTTPRequestHead) -> GatewayError? {
        guard let value = head.headers.first(name: "host") else {
            guard head.method != .CONNECT, head.version.major == 1, head.version.minor >= 1 else { return nil }
            return .malformed("an HTTP/1.1 request needs a Host field (RFC 9112 §3.2)")
        }
        return isValid(value) ? nil : .malformed("the Host field is not a host[:port]")
    }

    /// `uri-host [":" port]`: a reg-name (unreserved, sub-delims, percent escapes), an IPv4 address or a
    /// bracketed IP literal, then digits after the last colon outside brackets. Empty is allowed (a
    /// target without an authority). Space, `@`, `/`, `?`, `#`, quotes, controls and non-ASCII are not.
    static func isValid(_ value: String) -> Bool {
        // Over the string's own bytes: this runs on every request, and an Array copy was an allocation each.
        var value = value
        return value.withUTF8(isValid(bytes:))
    }

    private static func isValid(bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var i = 0
        if bytes.first == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")), close > 1 else { return false }
            guard bytes[1..<close].allSatisfy({ isHexOrLiteral($0) }) else { return false }
            i = close + 1
        } else {
            while i < bytes.count, bytes[i] != UInt8(ascii: ":") {
                guard isRegName(bytes[i]) else { return false }
                i += 1
            }
        }
        guard i < bytes.count else { return true }
        guard bytes[i] == UInt8(ascii: ":") else { return false }
        let port = bytes[(i + 1)...]
        return port.count <= 5 && port.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    private static func isRegName(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "%"),
            UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"),
            UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="):
            return true
        default:
            return false
        }
    }

    /// Inside brackets: an IPv6 address (hex digits, colons, dots for an embedded IPv4) or an IPvFuture.
    private static func isHexOrLiteral(_ b: UInt8) -> Bool {
        b == UInt8(ascii: ":") || isRegName(b)
    }
}
