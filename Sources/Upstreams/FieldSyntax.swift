/// Which bytes may appear where in an HTTP/1.1 message the sidecar writes (RFC 9110 §5.5–5.6, RFC 9112
/// §3.2). Both encoders — answers to the agent, requests to upstreams — check every field with these
/// before writing it, so no input (an agent's header, a path built from JSON) can split a message.
///
/// One table lookup per byte: these run over every field of every request on the data path.
public enum FieldSyntax {
    private static let token: UInt8 = 1
    private static let target: UInt8 = 2
    private static let badValue: UInt8 = 4

    private static let classes: [UInt8] = {
        var t = [UInt8](repeating: 0, count: 256)
        for b in 0..<256 {
            let c = UInt8(b)
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                t[b] |= token | target
            default: break
            }
            // tchar (RFC 9110 §5.6.2) beyond ALPHA / DIGIT
            if "!#$%&'*+-.^_`|~".utf8.contains(c) { t[b] |= token }
            // request-target bytes (RFC 9112 §3.2 with RFC 3986): unreserved, gen-delims, sub-delims, "%"
            if "-._~:/?#[]@!$&'()*+,;=%".utf8.contains(c) { t[b] |= target }
            // field values: no control character but HTAB (CR, LF and NUL above all)
            if (c < 0x20 && c != UInt8(ascii: "\t")) || c == 0x7F { t[b] |= badValue }
        }
        return t
    }()

    /// A field name or method: a non-empty token.
    public static func isToken(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { bytes in
            guard !bytes.isEmpty else { return false }
            for b in bytes where classes[Int(b)] & token == 0 { return false }
            return true
        }
    }

    /// A field value (or reason phrase) without control characters other than HTAB.
    public static func isValue(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { bytes in
            for b in bytes where classes[Int(b)] & badValue != 0 { return false }
            return true
        }
    }

    /// Bytes allowed literally in a request-target; anything else must have been percent-encoded.
    public static func isRequestTarget(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { bytes in
            for b in bytes where classes[Int(b)] & target == 0 { return false }
            return true
        }
    }
}
