import Codecs
import Foundation

/// base64url without padding (RFC 7515 §2), the encoding of every JOSE segment.
public enum Base64URL {
    /// Through the shared encoder (`Codecs`), URL alphabet, no padding.
    public static func encode<D: DataProtocol>(_ bytes: D) -> String { Base64Encoder.encode(bytes, alphabet: Base64Encoder.url, pad: false) }

    public static func encode(_ string: String) -> String { encode(Array(string.utf8)) }

    /// Strict: only the URL-safe alphabet, no padding, no whitespace, canonical trailing bits.
    public static func decode<S: StringProtocol>(_ s: S) -> [UInt8]? {
        guard s.utf8.count % 4 != 1 else { return nil }
        for b in s.utf8 {
            let ok = (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2D || b == 0x5F
            if !ok { return nil }
        }
        var t = String(s).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while t.utf8.count % 4 != 0 { t += "=" }
        guard let data = Data(base64Encoded: t) else { return nil }
        // Reject non-canonical encodings (different strings decoding to the same bytes).
        guard encode(data) == s else { return nil }
        return [UInt8](data)
    }
}
