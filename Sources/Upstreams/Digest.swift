import Crypto

/// SHA-256 of some strings as lowercase hex: cache keys, idempotency keys, request digests. The parts are
/// joined with a separator no text part holds (U+001F), so `["ab", "c"]` and `["a", "bc"]` differ.
public enum Digest {
    public static func sha256Hex(_ parts: [String]) -> String {
        hex(SHA256.hash(data: Array(parts.joined(separator: "\u{1F}").utf8)))
    }

    /// SHA-256 of raw bytes as lowercase hex (bodies that are not text).
    public static func sha256Hex<Bytes: Sequence>(bytes: Bytes) -> String where Bytes.Element == UInt8 {
        // Over contiguous storage where there is one (a body's `ByteBufferView`): no copy of the bytes.
        if let digest = bytes.withContiguousStorageIfAvailable({ buffer -> String in
            var hash = SHA256()
            hash.update(bufferPointer: UnsafeRawBufferPointer(buffer))
            return hex(hash.finalize())
        }) {
            return digest
        }
        return hex(SHA256.hash(data: Array(bytes)))
    }

    /// Lowercase hex of bytes (written directly: no formatter per byte).
    public static func hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
