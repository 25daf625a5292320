import NIOCore
import NIOHTTP1

/// NIO's HTTP/1 response decoder, without its watch on outbound writes.
///
/// `HTTPResponseDecoder` learns each request's method by observing the `HTTPClientRequestPart`s written
/// past it, so it must sit below an `HTTPRequestEncoder`. The pool writes requests as bytes, so it tells
/// the decoder the method directly instead (`expectResponse(to:)`); everything else — parsing, limits,
/// the 1xx / 204 / 304 / HEAD body rules — is NIO's.
final class UpstreamResponseDecoder: ByteToMessageDecoder {
    typealias InboundOut = HTTPClientResponsePart

    private let http = HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop)
    /// The last request head handed over, reused while the method repeats: the decoder reads only
    /// the method, and building a head allocates.
    private var last: HTTPRequestHead?

    /// Call before writing each request, in order.
    func expectResponse(to method: HTTPMethod) {
        if last?.method != method { last = HTTPRequestHead(version: .http1_1, method: method, uri: "/") }
        http.write(data: .head(last!))
    }

    func decoderAdded(context: ChannelHandlerContext) { http.decoderAdded(context: context) }
    func decoderRemoved(context: ChannelHandlerContext) { http.decoderRemoved(context: context) }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        try http.decode(context: context, buffer: &buffer)
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try http.decodeLast(context: context, buffer: &buffer, seenEOF: seenEOF)
    }
}

@available(*, unavailable)
extension UpstreamResponseDecoder: Sendable {}
