/// The one base64 encoder (RFC 4648 §4 and §5): the policy's JOSE segments (URL-safe, unpadded) and the
/// adapters' Gmail `raw` field and OpenAI embeddings (either alphabet) share it. A leaf module, so the
/// policy (no NIO) and the upstream adapters (no policy) can both use it.
///
/// Byte by byte into the string's own storage: the Foundation round trip it replaced (standard base64,
/// then `replacingOccurrences` for the URL alphabet) cost 6.6 µs for a 64-byte signature (`-O`).
public enum Base64Encoder {
    public static let standard = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    public static let url = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// `bytes` in `alphabet`'s digits, with `=` padding to a multiple of four when `pad`.
    public static func encode<C: Collection<UInt8>>(_ bytes: C, alphabet: [UInt8], pad: Bool) -> String {
        let input = Array(bytes)
        let full = input.count / 3
        let rest = input.count % 3
        let length = 4 * full + (rest == 0 ? 0 : pad ? 4 : rest + 1)
        return String(unsafeUninitializedCapacity: length) { out in
            var o = 0
            func put(_ sextet: UInt32) {
                out[o] = alphabet[Int(sextet & 63)]
                o += 1
            }
            var i = 0
            for _ in 0..<full {
                let v = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8 | UInt32(input[i + 2])
                put(v >> 18)
                put(v >> 12)
                put(v >> 6)
                put(v)
                i += 3
            }
            if rest > 0 {
                let v = UInt32(input[i]) << 16 | (rest == 2 ? UInt32(input[i + 1]) << 8 : 0)
                put(v >> 18)
                put(v >> 12)
                if rest == 2 { put(v >> 6) }
                if pad {
                    for _ in rest..<3 {
                        out[o] = UInt8(ascii: "=")
                        o += 1
                    }
                }
            }
            return o
        }
    }
}
