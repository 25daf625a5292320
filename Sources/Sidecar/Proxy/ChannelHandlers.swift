import NIOCore
import NIOHTTP1

/// Guards each proxy connection, in one handler to keep the per-request pipeline short:
///
/// - answers HTTP parse errors with a problem+json response instead of a bare 400, then closes (it sits
///   where NIO's `HTTPServerProtocolErrorHandler` would; a parse error means the byte stream can no longer
///   be trusted). If a response for the current request has already started, it only closes.
/// - closes connections that are idle between requests or stall while sending one (slowloris), but never
///   a connection that is waiting for, or streaming, its response.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let maxHeaderBytes: Int
    private let onParseError: @Sendable (GatewayError, String) -> Void
    private var responseStarted = false
    private var awaitingResponse = false

    /// - Parameter onParseError: Called with the mapped error and the generated request id (logs, metrics).
    init(maxHeaderBytes: Int, onParseError: @escaping @Sendable (GatewayError, String) -> Void) {
        self.maxHeaderBytes = maxHeaderBytes
        self.onParseError = onParseError
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head: responseStarted = false
        case .end: awaitingResponse = true
        case .body: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200: responseStarted = true
        case .end: awaitingResponse = false
        default: break
        }
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            if !awaitingResponse { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        let requestID = RequestID.generate()
        let mapped = GatewayError(parserError: parserError, maxHeaderBytes: maxHeaderBytes)
        onParseError(mapped, requestID)
        guard !responseStarted else {
            context.close(promise: nil)
            return
        }
        responseStarted = true
        let problem = ResponseMapper.problem(mapped, requestID: requestID)
        var headers = problem.headers
        headers.replaceOrAdd(name: "Connection", value: "close")
        if case .buffer(let body) = problem.body { headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes)) }
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: problem.status, headers: headers))), promise: nil)
        if case .buffer(let body) = problem.body {
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        // Lingering close: shut our side, keep reading (the decoder discards) until the client closes or
        // two seconds pass. Closing at once with unread input would make the kernel send a reset, and the
        // client could lose the answer it is owed.
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
    }
}
