/// Which bytes may appear where in an HTTP/1.1 message the sidecar writes (RFC 9110 §5.5–5.6, RFC 9112
/// §3.2). Both encoders — answers to the agent, requests to upstreams — check every field with these
/// before writing it, so no input (an agent's header, a path built from JSON) can split a message.
///
/// One shift and mask per byte, against sets written as 128-bit constants (no table to initialize,
/// so no lazy-global check on every call): these run over every field of every request.
public enum FieldSyntax {
    /// tchar (RFC 9110 §5.6.2): ALPHA, DIGIT and ! # $ % & ' * + - . ^ _ ` | ~
    private static let tokenLow: UInt64 = 0x03FF_6CFA_0000_0000
    private static let tokenHigh: UInt64 = 0x57FF_FFFF_C7FF_FFFE
    /// Request-target bytes (RFC 9112 §3.2 with RFC 3986): ALPHA, DIGIT, unreserved - . _ ~,
    /// gen-delims : / ? # [ ] @, sub-delims ! $ & ' ( ) * + , ; = and the % of pct-encoding.
    private static let targetLow: UInt64 = 0xAFFF_FFFA_0000_0000
    private static let targetHigh: UInt64 = 0x47FF_FFFE_AFFF_FFFF

    @inline(__always) private static func member(_ b: UInt8, _ low: UInt64, _ high: UInt64) -> Bool {
        b < 64 ? (low >> b) & 1 != 0 : b < 128 ? (high >> (b &- 64)) & 1 != 0 : false
    }

    /// A field name or method: a non-empty token.
    public static func isToken(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { isToken($0) }
    }

    public static func isToken(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard !bytes.isEmpty else { return false }
        for b in bytes where !member(b, tokenLow, tokenHigh) { return false }
        return true
    }

    /// A field value (or reason phrase) without control characters other than HTAB.
    public static func isValue(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { isValue($0) }
    }

    public static func isValue(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        for b in bytes where (b < 0x20 && b != 0x09) || b == 0x7F { return false }
        return true
    }

    /// Bytes allowed literally in a request-target; anything else must have been percent-encoded.
    public static func isRequestTarget(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { bytes in
            for b in bytes where !member(b, targetLow, targetHigh) { return false }
            return true
        }
    }
}
