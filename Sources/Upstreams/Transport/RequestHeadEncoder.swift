import NIOCore
import NIOHTTP1

/// Serializes an upstream request (RFC 9112) for the connection pool. Pure.
///
/// The pool writes bytes itself instead of sending parts through NIO's `HTTPRequestEncoder` and
/// `NIOHTTPRequestHeadersValidator`: one buffer per request (request line, fields, a small body) is one
/// trip down the pipeline and one `write(2)`, with no copy of the headers to add `Content-Length`. It
/// checks what NIO's validator checks — method and field names are tokens, field values carry no
/// control characters, the request-target only bytes RFC 3986 allows literally — and refuses the whole
/// request rather than write a part of it.
enum RequestHeadEncoder {
    /// Bodies up to this size are copied behind the head, so the request goes out in one write.
    static let coalesceLimit = 16 * 1024

    struct Encoded {
        var head: ByteBuffer
        /// A body too large to copy behind the head; written after it.
        var body: ByteBuffer?
    }

    /// The request's bytes in a buffer from `buffer(capacity)`, or nil if some part of it is not valid
    /// HTTP (nothing may be written then).
    static func encode(_ request: UpstreamRequest, buffer make: (Int) -> ByteBuffer) -> Encoded? {
        let method = request.method.rawValue
        let url = request.url
        guard FieldSyntax.isToken(method), FieldSyntax.isRequestTarget(url.path),
            url.query.map(FieldSyntax.isRequestTarget) ?? true
        else { return nil }
        var size = method.utf8.count + url.path.utf8.count + (url.query?.utf8.count ?? 0) + 40
        for (name, value) in request.headers { size += name.utf8.count + value.utf8.count + 4 }
        let length: Int? =
            if let body = request.body { body.readableBytes } else if request.method.carriesBody { 0 } else { nil }
        let coalesce = (request.body?.readableBytes ?? 0) <= coalesceLimit
        if coalesce { size += request.body?.readableBytes ?? 0 }

        var buffer = make(size)
        buffer.writeString(method)
        buffer.writeInteger(UInt8(ascii: " "))
        buffer.writeString(url.path)
        if let query = url.query {
            buffer.writeInteger(UInt8(ascii: "?"))
            buffer.writeString(query)
        }
        buffer.writeStaticString(" HTTP/1.1\r\n")
        // Each field is checked on the bytes it is copied from; one that is not valid HTTP refuses the
        // whole request (the buffer is dropped, nothing has been sent). The framing fields are the
        // encoder's own to write, but are checked too.
        for (name, value) in request.headers {
            if isFraming(name) {
                guard FieldSyntax.isToken(name), FieldSyntax.isValue(value) else { return nil }
            } else {
                guard buffer.writeFieldIfValid(name, value) else { return nil }
            }
        }
        if let length { buffer.writeField("Content-Length", String(length)) }
        buffer.writeStaticString("\r\n")
        guard var body = request.body, body.readableBytes > 0 else { return Encoded(head: buffer, body: nil) }
        if coalesce {
            buffer.writeBuffer(&body)
            return Encoded(head: buffer, body: nil)
        }
        return Encoded(head: buffer, body: body)
    }

    /// `Content-Length` and `Transfer-Encoding` are the encoder's to write: the body is always sent
    /// with a length.
    private static func isFraming(_ name: String) -> Bool {
        let n = name.utf8.count
        guard n == 14 || n == 17 else { return false }
        return HeaderName.named(name, "content-length") || HeaderName.named(name, "transfer-encoding")
    }
}

extension HTTPMethod {
    /// Methods whose requests frame a body even when it is empty (`Content-Length: 0`).
    var carriesBody: Bool { self == .POST || self == .PUT || self == .PATCH }
}
