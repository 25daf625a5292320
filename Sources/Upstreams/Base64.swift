import Codecs
import Foundation

/// Base64 and base64url (RFC 4648 §4, §5), accepting input with or without padding, because Gmail's
/// `raw` field and OpenAI's embeddings use different conventions.
///
/// Byte-wise (a Gmail send decodes its whole message on every call; going through `NSString` and
/// `Data(base64Encoded:)` cost more than the rest of the adapter), with the original Foundation path
/// deciding whatever is irregular.
enum Base64 {
    /// Sextet per byte: 0–63 a digit of either alphabet, 64 ASCII whitespace, 65 padding, 255 anything
    /// else (every non-ASCII byte).
    private static let sextets: [UInt8] = {
        var t = [UInt8](repeating: 255, count: 256)
        for (i, c) in Base64Encoder.standard.enumerated() { t[Int(c)] = UInt8(i) }
        t[Int(UInt8(ascii: "-"))] = 62
        t[Int(UInt8(ascii: "_"))] = 63
        for c in [0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D] { t[c] = 64 }
        t[Int(UInt8(ascii: "="))] = 65
        return t
    }()

    static func encode(_ bytes: [UInt8]) -> String { Base64Encoder.encode(bytes, alphabet: Base64Encoder.standard, pad: true) }

    static func encodeURL(_ bytes: [UInt8]) -> String { Base64Encoder.encode(bytes, alphabet: Base64Encoder.url, pad: false) }

    /// Decodes standard or URL-safe base64 (the two alphabets may mix), padded or not, whitespace
    /// skipped; nil when it is not base64.
    ///
    /// Regular input — ASCII digits and whitespace, then at most the padding that completes the last
    /// quantum — is decoded here. Anything else (a non-ASCII byte, a character of neither alphabet,
    /// padding elsewhere or of another length) is decided by the original Foundation path, so what is
    /// accepted, and as which bytes, never changed (`Base64Tests` compares the two).
    static func decode(_ s: String) -> [UInt8]? {
        var string = s
        if let fast = string.withUTF8({ decodeRegular($0) }) { return fast }
        return foundationDecode(s)
    }

    /// The bytes of regular input, or nil for the slow path to decide.
    static func decodeRegular(_ input: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(input.count / 4 * 3 + 3)
        var acc: UInt32 = 0
        var digits = 0
        var padding = 0
        for byte in input {
            let v = sextets[Int(byte)]
            switch v {
            case 64: continue
            case 65: padding += 1
            case 255: return nil
            default:
                if padding > 0 { return nil }
                acc = acc << 6 | UInt32(v)
                digits += 1
                if digits == 4 {
                    out.append(UInt8(acc >> 16 & 0xFF))
                    out.append(UInt8(acc >> 8 & 0xFF))
                    out.append(UInt8(acc & 0xFF))
                    acc = 0
                    digits = 0
                }
            }
        }
        switch (digits, padding) {
        case (0, 0): break
        case (2, 0), (2, 2): out.append(UInt8(acc >> 4 & 0xFF))
        case (3, 0), (3, 1):
            out.append(UInt8(acc >> 10 & 0xFF))
            out.append(UInt8(acc >> 2 & 0xFF))
        default: return nil
        }
        return out
    }

    /// The original rules, for input with non-ASCII characters: every Unicode whitespace skipped, the
    /// rest decoded by Foundation (which refuses any other non-ASCII character).
    static func foundationDecode(_ s: String) -> [UInt8]? {
        var t = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        t = t.filter { !$0.isWhitespace }
        while t.count % 4 != 0 { t += "=" }
        guard let data = Data(base64Encoded: t) else { return nil }
        return [UInt8](data)
    }
}
