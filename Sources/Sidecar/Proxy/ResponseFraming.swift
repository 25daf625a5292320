import NIOHTTP1
import Upstreams

/// Decides how a response is framed on the agent's connection (RFC 9112 §6). Pure.
///
/// The proxy frames its answers itself (`ResponseEncoder`) rather than leaving it to NIO's automatic
/// framing, which would drop the body of every response to `CONNECT` — and a refused `CONNECT` is owed
/// a problem+json body explaining why.
///
/// The decision says which framing fields to write and which of the message's own to leave out; the
/// encoder applies it while writing, so no copy of the fields is made per answer.
enum ResponseFraming {
    struct Decision: Equatable, Sendable {
        /// The `Content-Length` the encoder writes, replacing the message's own; nil writes none.
        var length: Int?
        /// The message's own `Content-Length` field is written (the answer's length is the upstream's,
        /// and `length` is nil then: exactly one source of the field).
        var keepsOwnLength: Bool
        /// False for responses that must not carry a body (HEAD, 1xx, 204, 304).
        var sendBody: Bool
        /// The body is delimited by closing the connection (HTTP/1.0 without Content-Length).
        var closeAfter: Bool
        /// The body goes out with `Transfer-Encoding: chunked` (a stream of unknown length on HTTP/1.1).
        var chunked = false

        /// Whether the encoder writes the message's field `name`: its `Transfer-Encoding` never (the
        /// proxy frames the body), `Connection` never (the proxy decides the connection), its
        /// `Content-Length` unless replaced or dropped.
        func keeps(_ name: String) -> Bool {
            switch name.utf8.count {
            case 10: !HeaderName.named(name, "connection")
            case 14: keepsOwnLength || !HeaderName.named(name, "content-length")
            case 17: !HeaderName.named(name, "transfer-encoding")
            default: true
            }
        }
    }

    static func decide(
        headers: HTTPHeaders, requestMethod: HTTPMethod, status: HTTPResponseStatus, version: HTTPVersion,
        bufferedLength: Int?
    ) -> Decision {
        let code = status.code
        let lengths = headers.count { HeaderName.named($0.name, "content-length") }
        let bodyless = requestMethod == .HEAD || (100..<200).contains(code) || code == 204 || code == 304
        if bodyless {
            // A HEAD or 304 answer may still say how long the body would be; 1xx and 204 must not.
            if (100..<200).contains(code) || code == 204 { return Decision(length: nil, keepsOwnLength: false, sendBody: false, closeAfter: false) }
            // The message's own length when it has one, else (HEAD) the length the body would have.
            let length = requestMethod == .HEAD && lengths == 0 ? bufferedLength : nil
            return Decision(length: length, keepsOwnLength: length == nil, sendBody: false, closeAfter: false)
        }
        if let length = bufferedLength { return Decision(length: length, keepsOwnLength: false, sendBody: true, closeAfter: false) }
        if lengths == 1 { return Decision(length: nil, keepsOwnLength: true, sendBody: true, closeAfter: false) }
        if version.major > 1 || (version.major == 1 && version.minor >= 1) {
            return Decision(length: nil, keepsOwnLength: false, sendBody: true, closeAfter: false, chunked: true)
        }
        return Decision(length: nil, keepsOwnLength: false, sendBody: true, closeAfter: true)
    }
}
