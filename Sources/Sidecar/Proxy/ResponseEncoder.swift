import NIOCore
import NIOHTTP1

/// Serializes responses to the agent's connection (RFC 9112). Pure.
///
/// The proxy writes bytes itself instead of going through NIO's `HTTPResponseEncoder`: one buffer per
/// answer (status line, fields and a small body together) is one `write(2)` and no per-part trip
/// through another channel handler — on this data path that is a measurable share of the CPU per
/// request. Framing (length, chunked, close-delimited) is decided beforehand by `ResponseFraming`.
enum ResponseEncoder {
    /// Bodies up to this size are copied behind the head, so the whole answer goes out in one write.
    static let coalesceLimit = 16 * 1024

    static let continueLine: StaticString = "HTTP/1.1 100 Continue\r\n\r\n"
    static let lastChunk: StaticString = "0\r\n\r\n"

    /// Bytes the head will take (exact for valid fields), so its buffer is allocated once.
    static func headSize(_ head: HTTPResponseHead) -> Int {
        var n = 32 + head.status.reasonPhrase.utf8.count
        for (name, value) in head.headers { n += name.utf8.count + value.utf8.count + 4 }
        return n
    }

    /// Status line, fields, blank line. A field whose name or value could break the message framing
    /// (CR, LF, NUL, or a bad name) is left out rather than written: no input may split a response.
    static func writeHead(_ head: HTTPResponseHead, into buffer: inout ByteBuffer) {
        switch (head.version.major, head.version.minor) {
        case (1, 0): buffer.writeStaticString("HTTP/1.0 ")
        default: buffer.writeStaticString("HTTP/1.1 ")
        }
        let code = Int(head.status.code)
        buffer.writeInteger(UInt8(ascii: "0") + UInt8(code / 100 % 10))
        buffer.writeInteger(UInt8(ascii: "0") + UInt8(code / 10 % 10))
        buffer.writeInteger(UInt8(ascii: "0") + UInt8(code % 10))
        buffer.writeInteger(UInt8(ascii: " "))
        let reason = head.status.reasonPhrase
        if Self.isSafeValue(reason) { buffer.writeString(reason) }
        buffer.writeStaticString("\r\n")
        for (name, value) in head.headers where Self.isSafeName(name) && Self.isSafeValue(value) {
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
    }

    /// One chunk of a `Transfer-Encoding: chunked` body (empty chunks are skipped: an empty chunk
    /// would end the body).
    static func writeChunk(_ chunk: ByteBuffer, into buffer: inout ByteBuffer) {
        guard chunk.readableBytes > 0 else { return }
        writeHex(chunk.readableBytes, into: &buffer)
        buffer.writeStaticString("\r\n")
        var chunk = chunk
        buffer.writeBuffer(&chunk)
        buffer.writeStaticString("\r\n")
    }

    static func writeHex(_ value: Int, into buffer: inout ByteBuffer) {
        let digits: StaticString = "0123456789abcdef"
        var shift = (Int.bitWidth - value.leadingZeroBitCount + 3) / 4 * 4 - 4
        if shift < 0 { shift = 0 }
        while shift >= 0 {
            buffer.writeInteger(digits.utf8Start[(value >> shift) & 0xF])
            shift -= 4
        }
    }

    /// A field name must be a non-empty token (RFC 9110 §5.6.2).
    static func isSafeName(_ name: String) -> Bool {
        guard !name.isEmpty else { return false }
        for b in name.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"),
                UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "^"),
                UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
                continue
            default:
                return false
            }
        }
        return true
    }

    /// A field value must not contain CR, LF or NUL.
    static func isSafeValue(_ value: String) -> Bool {
        for b in value.utf8 where b == 13 || b == 10 || b == 0 { return false }
        return true
    }
}
