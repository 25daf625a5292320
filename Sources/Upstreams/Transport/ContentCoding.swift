import CZlib
import NIOCore
import NIOHTTP1

/// A response's `Content-Encoding` as far as the sidecar can read through it.
public enum ContentCoding: Sendable, Hashable {
    case identity
    case gzip
    case deflate

    /// The coding a field value names; nil for anything the sidecar cannot decode — `br`, `zstd`,
    /// `compress`, an unknown token, or more than one coding (`gzip, gzip`).
    public init?(field: String?) {
        guard let field else { self = .identity; return }
        let codings = field.split(separator: ",").map { $0.trimmedOWS.lowercased() }.filter { !$0.isEmpty }
        guard codings.count <= 1 else { return nil }
        switch codings.first {
        case nil, "identity": self = .identity
        case "gzip", "x-gzip": self = .gzip
        case "deflate": self = .deflate
        default: return nil
        }
    }
}

extension ContentCoding {
    /// The coding of a response's `Content-Encoding` fields (nil: one the sidecar cannot decode).
    public init?(headers: HTTPHeaders) {
        let fields = headers[canonicalForm: "content-encoding"]
        self.init(field: fields.isEmpty ? nil : fields.joined(separator: ","))
    }

    /// Whether a whole body in this coding decodes completely to at most `limit` bytes — what a cache
    /// asks before it keeps an answer that every later hit would otherwise fail on.
    public func undoes(_ body: ByteBuffer, limit: Int) -> Bool {
        self == .identity || (try? Inflater.decodeWhole(body, coding: self, limit: limit)) != nil
    }
}

/// zlib inflate over a stream of buffers, with a bound on what it may produce: a decompression bomb
/// ends at `limit` bytes with `responseTooLarge`, never in memory. gzip (several members in a row
/// too), and deflate as RFC 9110 means it (zlib-wrapped) or as some servers send it (raw).
final class Inflater {
    private var stream = z_stream()
    private var open = false
    private let coding: ContentCoding
    private let limit: Int
    private var produced = 0
    private var triedRaw = false
    private var sawInput = false
    private(set) var finished = false

    init(_ coding: ContentCoding, limit: Int) throws(UpstreamError) {
        self.coding = coding
        self.limit = limit
        try start(windowBits: coding == .gzip ? 16 + MAX_WBITS : MAX_WBITS)
    }

    deinit { if open { inflateEnd(&stream) } }

    private func start(windowBits: Int32) throws(UpstreamError) {
        if open { inflateEnd(&stream) }
        stream = z_stream()
        guard inflateInit2_(&stream, windowBits, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw UpstreamError(.protocolError, beforeSend: false, detail: "cannot start decoding the response")
        }
        open = true
    }

    /// The decoded bytes of the next piece of the encoded body.
    func decode(_ input: ByteBuffer) throws(UpstreamError) -> ByteBuffer {
        var out = ByteBuffer()
        var input = input
        while input.readableBytes > 0 {
            if finished {
                // Another gzip member after the first (RFC 1952 allows several).
                guard coding == .gzip else { break }
                inflateReset(&stream)
                finished = false
            }
            let first = !sawInput
            sawInput = true
            let result = input.withUnsafeMutableReadableBytes { bytes -> (consumed: Int, status: Int32, chunk: [UInt8]) in
                stream.next_in = bytes.baseAddress?.assumingMemoryBound(to: Bytef.self)
                stream.avail_in = uInt(bytes.count)
                var chunk = [UInt8](repeating: 0, count: 16 * 1024)
                let status = chunk.withUnsafeMutableBytes { o -> Int32 in
                    stream.next_out = o.baseAddress?.assumingMemoryBound(to: Bytef.self)
                    stream.avail_out = uInt(o.count)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                let made = chunk.count - Int(stream.avail_out)
                chunk.removeLast(chunk.count - made)
                return (bytes.count - Int(stream.avail_in), status, chunk)
            }
            if result.status == Z_DATA_ERROR, first, coding == .deflate, !triedRaw {
                // "deflate" without the zlib wrapper, as some servers send it: start again, raw.
                triedRaw = true
                sawInput = false
                try start(windowBits: -MAX_WBITS)
                continue
            }
            guard result.status == Z_OK || result.status == Z_STREAM_END || result.status == Z_BUF_ERROR else {
                throw UpstreamError(.protocolError, beforeSend: false, detail: "the response's \(coding) encoding is corrupt")
            }
            input.moveReaderIndex(forwardBy: result.consumed)
            produced += result.chunk.count
            guard produced <= limit else {
                throw UpstreamError(.responseTooLarge, beforeSend: false, detail: "decoded body over \(limit) bytes")
            }
            out.writeBytes(result.chunk)
            if result.status == Z_STREAM_END { finished = true }
            if result.status == Z_BUF_ERROR, result.consumed == 0, result.chunk.isEmpty { break }
        }
        return out
    }

    /// Decodes a whole body at once, to at most `limit` bytes: `responseTooLarge` past it (thrown as soon
    /// as the limit is crossed, nothing more produced), the upstream's protocol error when it is corrupt
    /// or stops short of its end.
    static func decodeWhole(_ body: ByteBuffer, coding: ContentCoding, limit: Int) throws(UpstreamError) -> ByteBuffer {
        let inflater = try Inflater(coding, limit: limit)
        let out = try inflater.decode(body)
        guard inflater.finished else { throw UpstreamError(.protocolError, beforeSend: false, detail: "the response's \(coding) encoding is cut off") }
        return out
    }
}
