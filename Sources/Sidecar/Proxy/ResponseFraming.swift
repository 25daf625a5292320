import NIOHTTP1

/// Decides how a response is framed on the agent's connection (RFC 9112 §6). Pure.
///
/// The proxy frames its answers itself (`ResponseEncoder`) rather than leaving it to NIO's automatic
/// framing, which would drop the body of every response to `CONNECT` — and a refused `CONNECT` is owed
/// a problem+json body explaining why.
enum ResponseFraming {
    struct Decision: Equatable {
        var headers: HTTPHeaders
        /// False for responses that must not carry a body (HEAD, 1xx, 204, 304).
        var sendBody: Bool
        /// The body is delimited by closing the connection (HTTP/1.0 without Content-Length).
        var closeAfter: Bool
        /// The body goes out with `Transfer-Encoding: chunked` (a stream of unknown length on HTTP/1.1).
        var chunked = false
    }

    static func decide(
        headers: HTTPHeaders, requestMethod: HTTPMethod, status: HTTPResponseStatus, version: HTTPVersion,
        bufferedLength: Int?
    ) -> Decision {
        var headers = headers
        headers.remove(name: "transfer-encoding")
        let code = status.code
        let bodyless = requestMethod == .HEAD || (100..<200).contains(code) || code == 204 || code == 304
        if bodyless {
            // A HEAD or 304 answer may still say how long the body would be; 1xx and 204 must not.
            if (100..<200).contains(code) || code == 204 { headers.remove(name: "content-length") }
            if requestMethod == .HEAD, let length = bufferedLength, headers["content-length"].isEmpty {
                headers.add(name: "Content-Length", value: String(length))
            }
            return Decision(headers: headers, sendBody: false, closeAfter: false)
        }
        if let length = bufferedLength {
            headers.replaceOrAdd(name: "Content-Length", value: String(length))
            return Decision(headers: headers, sendBody: true, closeAfter: false)
        }
        if headers["content-length"].count == 1 { return Decision(headers: headers, sendBody: true, closeAfter: false) }
        headers.remove(name: "content-length")
        if version.major > 1 || (version.major == 1 && version.minor >= 1) {
            headers.add(name: "Transfer-Encoding", value: "chunked")
            return Decision(headers: headers, sendBody: true, closeAfter: false, chunked: true)
        }
        return Decision(headers: headers, sendBody: true, closeAfter: true)
    }
}
