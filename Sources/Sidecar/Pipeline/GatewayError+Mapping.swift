import NIOHTTP1
import Upstreams

/// How failures of the other modules become gateway errors. Pure, table-tested.
extension GatewayError {
    init(_ e: ToolRequestError) {
        switch e.kind {
        case .unknownAction: self.init(.unknownAction, e.detail)
        case .invalidBody: self.init(.invalidBody, e.detail)
        case .invalidParameter: self.init(.invalidParameter, e.detail)
        case .unsupportedMediaType: self.init(.unsupportedMediaType, e.detail)
        case .ambiguousParameter: self.init(.ambiguousParameter, e.detail)
        }
    }

    init(_ e: ClassificationError) {
        switch e {
        case .routeNotFound: self = .routeNotFound()
        case .methodNotAllowed(let allowed): self = .methodNotAllowed(allowed)
        case .invalidTarget(let reason): self = .invalidTarget(reason)
        case .misdirected(let reason): self.init(.misdirectedRequest, reason)
        }
    }

    init(_ e: UpstreamError) {
        defer {
            nothingSent = e.beforeSend
            fromUpstream = e.kind != .egressDenied && e.kind != .invalidRequest
            if let kind = e.chaos { headers.append(("X-Chaos-Injected", kind)) }
        }
        switch e.kind {
        case .unreachable: self.init(.upstreamUnreachable, "could not connect to the upstream (\(e.detail))")
        case .timeout: self.init(.upstreamTimeout, "the upstream did not answer within the deadline")
        case .protocolError, .cancelled: self.init(.upstreamProtocolError, "the upstream connection failed (\(e.detail))")
        case .responseTooLarge: self.init(.upstreamResponseTooLarge, "the upstream response exceeded the size limit")
        case .egressDenied: self.init(.egressDenied, "the destination is not allowed for http_fetch (\(e.detail))")
        case .invalidRequest: self = .malformed("the request cannot be forwarded as valid HTTP (\(e.detail))")
        }
    }

    /// HTTP parse errors from the request decoder. None of them is ever a 5xx.
    init(parserError e: HTTPParserError, maxHeaderBytes: Int) {
        switch e {
        case .headerOverflow: self = .headersTooLarge(limit: maxHeaderBytes)
        case .invalidContentLength, .unexpectedContentLength:
            self = .framing("Content-Length is invalid, duplicated, or combined with Transfer-Encoding")
        case .invalidChunkSize:
            self = .framing("invalid chunk size in chunked body")
        default:
            self = .malformed("the request is not valid HTTP/1.1 (bad syntax, or ambiguous framing such as Content-Length together with Transfer-Encoding)")
        }
    }
}
