import NIOCore
import NIOHTTP1

/// Answers HTTP parse errors with a problem+json response instead of a bare 400, then closes.
///
/// Sits where NIO's `HTTPServerProtocolErrorHandler` would. A parse error means the byte stream can no
/// longer be trusted, so the connection is always closed. If a response for the current request has
/// already started, nothing more is written.
final class ParseErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let maxHeaderBytes: Int
    private let onError: @Sendable (GatewayError, String) -> Void
    private var responseStarted = false

    /// - Parameter onError: Called with the mapped error and the generated request id, for logs and metrics.
    init(maxHeaderBytes: Int, onError: @escaping @Sendable (GatewayError, String) -> Void) {
        self.maxHeaderBytes = maxHeaderBytes
        self.onError = onError
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = Self.unwrapInboundIn(data) { responseStarted = false }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .head(let head) = Self.unwrapOutboundIn(data), head.status.code >= 200 { responseStarted = true }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        let requestID = RequestID.generate()
        let mapped = GatewayError(parserError: parserError, maxHeaderBytes: maxHeaderBytes)
        onError(mapped, requestID)
        guard !responseStarted else {
            context.close(promise: nil)
            return
        }
        responseStarted = true
        let problem = ResponseMapper.problem(mapped, requestID: requestID)
        var headers = problem.headers
        headers.replaceOrAdd(name: "Connection", value: "close")
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: problem.status, headers: headers))), promise: nil)
        if case .buffer(let body) = problem.body {
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let loopBound = context.loopBound
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }
}

/// Closes connections that are idle between requests or stall while sending one (slowloris), but
/// never a connection that is waiting for, or streaming, its response.
final class IdleConnectionCloser: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var awaitingResponse = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = Self.unwrapInboundIn(data) { awaitingResponse = true }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = Self.unwrapOutboundIn(data) { awaitingResponse = false }
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            if !awaitingResponse { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
