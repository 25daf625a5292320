import NIOCore
import NIOHTTP1

/// Replaces credential values an upstream echoes back (in a header or anywhere in the body) before the
/// agent sees them. Streaming-safe: a secret split across chunks is still caught, and only a chunk's
/// tail that could be the start of a secret is held back, so SSE events are not delayed.
///
/// Every answer of a brokered tool passes through it, and almost none contains a secret: each form first
/// searches (`ByteSearch`) and hands the input back untouched (no copy) when there is nothing to replace.
public struct SecretScrubber: Sendable {
    public static let replacement: [UInt8] = Array("[REDACTED]".utf8)
    let secrets: [[UInt8]]

    /// Values shorter than 8 bytes are ignored: too likely to occur by chance.
    public init(_ secrets: [String]) { self.init(bytes: secrets.map { Array($0.utf8) }) }

    /// For one credential: its search form was built when it was loaded, so this allocates nothing.
    public init(credential: Credential) { secrets = credential.scrubbed }

    init(bytes: [[UInt8]]) { self.secrets = bytes.filter { $0.count >= 8 } }

    public var isEmpty: Bool { secrets.isEmpty }

    public func scrub(_ headers: HTTPHeaders) -> HTTPHeaders {
        guard !isEmpty, headers.contains(where: { occurs(in: $0.value) }) else { return headers }
        var out = HTTPHeaders()
        for (name, value) in headers {
            let bytes = Array(value.utf8)
            let (clean, _) = replace(bytes, holdBack: false)
            out.add(name: name, value: clean == bytes ? value : String(decoding: clean, as: UTF8.self))
        }
        return out
    }

    public func scrub(_ buffer: ByteBuffer) -> ByteBuffer {
        guard !isEmpty, buffer.withUnsafeReadableBytes({ occurs(in: $0) }) else { return buffer }
        let (clean, _) = replace(Array(buffer.readableBytesView), holdBack: false)
        return ByteBuffer(bytes: clean)
    }

    /// Scrubs one chunk of a stream. `carry` holds back bytes that may begin a secret; pass `final` for
    /// the last call (an empty chunk flushes the carry).
    public func scrub(chunk: ByteBuffer, carry: inout [UInt8], final: Bool) -> ByteBuffer {
        guard !isEmpty else { return chunk }
        if carry.isEmpty, !chunk.withUnsafeReadableBytes({ occurs(in: $0) || (!final && endsWithPartialSecret($0)) }) {
            return chunk
        }
        let data = carry + Array(chunk.readableBytesView)
        let (clean, held) = replace(data, holdBack: !final)
        carry = held
        return ByteBuffer(bytes: clean)
    }

    /// Whether any secret occurs in `bytes`.
    func occurs(in bytes: UnsafeRawBufferPointer) -> Bool {
        secrets.contains { s in s.withUnsafeBytes { ByteSearch.contains($0, in: bytes) } }
    }

    func occurs(in value: String) -> Bool {
        var value = value
        return value.withUTF8 { occurs(in: UnsafeRawBufferPointer($0)) }
    }

    /// Whether some tail of `bytes` is a proper prefix of a secret (which the next chunk may complete).
    func endsWithPartialSecret(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let longest = min(bytes.count, (secrets.map(\.count).max() ?? 1) - 1)
        return longest > 0 && (1...longest).contains { isPartialSecret(bytes[(bytes.count - $0)...]) }
    }

    /// Replaces every occurrence; optionally splits off the longest tail that is a proper prefix of a secret.
    func replace(_ data: [UInt8], holdBack: Bool) -> (out: [UInt8], held: [UInt8]) {
        var out: [UInt8] = []
        out.reserveCapacity(data.count)
        var i = 0
        outer: while i < data.count {
            for s in secrets where data[i] == s[0] && i + s.count <= data.count {
                if data[i..<(i + s.count)].elementsEqual(s) {
                    out.append(contentsOf: Self.replacement)
                    i += s.count
                    continue outer
                }
            }
            if holdBack, isPartialSecret(data[i...]) { return (out, Array(data[i...])) }
            out.append(data[i])
            i += 1
        }
        return (out, [])
    }

    /// Whether `tail` is a proper prefix of a secret.
    private func isPartialSecret<Tail: Collection<UInt8>>(_ tail: Tail) -> Bool {
        secrets.contains { s in tail.count < s.count && tail.first == s[0] && s.starts(with: tail) }
    }
}
