import NIOCore
import NIOHTTP1

/// The last handler of a pooled upstream connection: carries one `Exchange` at a time, hands the
/// response head to its promise, streams the body into its `BodyStream` (pausing reads while the
/// consumer is behind) and returns the connection to the pool after a complete keep-alive response.
///
/// It writes requests as bytes (`RequestHeadEncoder`); NIO's response decoder below it learns each
/// request's method from `responseDecoder` (a response to HEAD has no body).
final class PooledConnectionHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let pool: HTTP1ConnectionPool
    private let origin: HTTP1ConnectionPool.Origin
    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    /// The current exchange was sent on a connection that had served others before.
    private var reused = false
    /// A byte of the current response has arrived (after which nothing is replayed).
    private var answered = false
    /// The current response's head, until it is handed over.
    private var pendingHead: UpstreamResponse?
    private let deferredFlush = DeferredFlush()
    private var writeBuffer = ReusableBuffer()
    private var keepAlive = true
    private let readPause = ReadPause()
    /// Watches the deadline of the exchange in flight. It is not re-armed per request: exchanges on a
    /// keep-alive connection have ever later deadlines, so it fires about once per deadline span and
    /// re-arms for whichever exchange is current then.
    private var deadlineTimer: Scheduled<Void>?
    private var deadlineTimerAt = NIODeadline.distantFuture
    /// The decoder of this connection's responses (added below this handler by `ClientBootstrap.pooledHTTP1`).
    let responseDecoder = UpstreamResponseDecoder()

    init(pool: HTTP1ConnectionPool, origin: HTTP1ConnectionPool.Origin) {
        self.pool = pool
        self.origin = origin
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        deadlineTimer?.cancel()
        self.context = nil
    }

    /// Writes the exchange's request (on the loop).
    func run(_ exchange: Exchange, reused: Bool) {
        guard let context, context.channel.isActive else {
            return reused && exchange.replayable
                ? pool.replay(exchange, origin: origin)
                : exchange.fail(UpstreamError(.unreachable, beforeSend: true, detail: "connection closed before use"))
        }
        let request = exchange.request
        let allocator = context.channel.allocator
        guard let encoded = RequestHeadEncoder.encode(request, buffer: { writeBuffer.take(capacity: $0, allocator: allocator) }) else {
            // Nothing was written, so the connection is as clean as it was.
            pool.release(PooledConnection(channel: context.channel, handler: self), origin: origin)
            return exchange.fail(
                UpstreamError(.invalidRequest, beforeSend: true, detail: "a control character, or a name that is not a token"))
        }
        self.exchange = exchange
        self.reused = reused
        answered = false
        keepAlive = true
        exchange.connection = self
        watchDeadline(request.deadline, context: context)
        responseDecoder.expectResponse(to: request.method)
        context.write(wrapOutboundOut(encoded.head), promise: nil)
        writeBuffer.keep(encoded.head)
        if let body = encoded.body { context.write(wrapOutboundOut(body), promise: nil) }
        // The requests of one round of events reach the upstream in a burst.
        deferredFlush.flush(context)
    }

    private func watchDeadline(_ deadline: NIODeadline, context: ChannelHandlerContext) {
        if deadlineTimer != nil, deadlineTimerAt <= deadline { return }
        deadlineTimer?.cancel()
        deadlineTimerAt = deadline
        // A strong capture: the timer is cancelled when the channel goes inactive. A weak one would give
        // the handler a side table, and every retain and release of it (several per request) would
        // take the runtime's slow path.
        deadlineTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { self.deadlineTimerFired() }
    }

    private func deadlineTimerFired() {
        deadlineTimer = nil
        guard let exchange, let context else { return }
        if exchange.request.deadline <= .now() {
            exchange.abort(UpstreamError(.timeout, beforeSend: false, detail: "deadline exceeded"))
        } else {
            watchDeadline(exchange.request.deadline, context: context)
        }
    }

    /// The exchange was given up mid-flight: the connection is in an unknown state, so it goes.
    func closeAfterAbort() {
        exchange = nil
        pendingHead = nil
        keepAlive = false
        context?.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        guard let exchange else {
            // Bytes nobody asked for (a late answer to an abandoned exchange): the connection is unusable.
            context.close(promise: nil)
            return
        }
        answered = true
        switch part {
        case .head(let h):
            // NIO's decoder drops interim 1xx answers itself; the one it hands over is 101, after which it
            // parses nothing more on this connection. No request the pool sends asks for an upgrade, so
            // a 101 is the upstream's protocol error like any status outside 200...599: skipped as
            // interim, it left the agent waiting for a head that never came and put a connection that
            // would never parse again back in the pool.
            if let invalid = UpstreamError.invalidStatus(h.status) {
                lost(invalid)
                return context.close(promise: nil)
            }
            keepAlive = h.isKeepAlive
            // Handed over at the end of the message or of this read, whichever comes first: a small
            // answer then arrives with its whole body, which the proxy writes in one go.
            pendingHead = UpstreamResponse(status: h.status, headers: h.headers, body: .stream(exchange.body))
        case .body(let chunk):
            readPause.feed(chunk, to: exchange.body, context: context)
        case .end:
            // Back in the pool before the consumer can see the end of the body.
            self.exchange = nil
            let head = pendingHead
            pendingHead = nil
            if keepAlive, context.channel.isActive {
                pool.release(PooledConnection(channel: context.channel, handler: self), origin: origin)
            } else {
                context.close(promise: nil)
            }
            exchange.finished()
            if let head { exchange.head.succeed(head) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let exchange, let head = pendingHead {
            pendingHead = nil
            exchange.head.succeed(head)
        }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        readPause.read(context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadlineTimer?.cancel()
        lost(UpstreamError(.protocolError, beforeSend: false, detail: "connection closed by upstream"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        lost(HTTPClientTransport.classify(error))
        context.close(promise: nil)
    }

    /// The connection broke under the current exchange: replay it if that is safe, else report.
    private func lost(_ error: UpstreamError) {
        pendingHead = nil
        guard let exchange else { return }
        self.exchange = nil
        exchange.connection = nil
        if reused, !answered, exchange.replayable {
            pool.replay(exchange, origin: origin)
        } else {
            exchange.fail(error)
        }
    }
}
