import NIOCore
import NIOHTTP1
import Upstreams

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

    /// A response head as it goes on the wire: the message's fields with the proxy's framing applied
    /// (`ResponseFraming.Decision.keeps`), then the framing and connection fields it decided.
    struct Head: Sendable {
        var version: HTTPVersion
        var status: HTTPResponseStatus
        var headers: HTTPHeaders
        var framing: ResponseFraming.Decision
        /// The connection ends after this answer (`Connection: close`).
        var close: Bool
    }

    /// Bytes the head will take (exact for valid fields), so its buffer is allocated once.
    static func headSize(_ head: Head) -> Int {
        var n = 96 + head.status.reasonPhrase.utf8.count
        for (name, value) in head.headers { n += name.utf8.count + value.utf8.count + 4 }
        return n
    }

    /// Status line, fields, blank line. A field whose name or value could break the message framing
    /// (a control character, or a name that is not a token) is left out rather than written: no input
    /// may split a response.
    static func writeHead(_ head: Head, into buffer: inout ByteBuffer) {
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
        if FieldSyntax.isValue(reason) { buffer.writeString(reason) }
        buffer.writeStaticString("\r\n")
        for (name, value) in head.headers where head.framing.keeps(name) {
            buffer.writeFieldIfValid(name, value)
        }
        if let length = head.framing.length { buffer.writeField("Content-Length", String(length)) }
        if head.framing.chunked { buffer.writeStaticString("Transfer-Encoding: chunked\r\n") }
        if head.close { buffer.writeStaticString("Connection: close\r\n") }
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
}
