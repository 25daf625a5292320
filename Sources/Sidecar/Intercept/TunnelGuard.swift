import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// Watches a tunnel from the `200` to its end: the handshake must finish within
/// `intercept.handshake_timeout` (a ClientHello that never comes, or a handshake that stalls, closes
/// the connection), a TLS failure (a client that does not trust the CA answers with an alert; garbage
/// instead of TLS) ends in one log line, a metric and a closed connection — never in a fallback to an
/// unintercepted tunnel — and an open tunnel is counted while it lasts.
final class TunnelGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// TLS alert descriptions (RFC 8446 §6) the sidecar sends before any TLS of its own exists.
    enum Alert: UInt8 {
        case handshakeFailure = 40
        case internalError = 80
        case unrecognizedName = 112
        case noApplicationProtocol = 120
    }

    private let mode: String
    private let handshakeTimeout: Duration
    private let metrics: GatewayMetrics
    private let logger: Logger
    /// For the log line only: the CONNECT host (never a path, a header or a token).
    private let host: String
    private var context: ChannelHandlerContext?
    private var deadline: Scheduled<Void>?
    private var opened = false
    private var ended = false

    init(mode: String, handshakeTimeout: Duration, metrics: GatewayMetrics, logger: Logger, host: String) {
        self.mode = mode
        self.handshakeTimeout = handshakeTimeout
        self.metrics = metrics
        self.logger = logger
        self.host = host
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Strong capture: the timer is cancelled when the tunnel opens or the channel goes away.
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(handshakeTimeout)) {
            self.refuse(result: "handshake_timeout", alert: nil, reason: "no TLS handshake within \(self.handshakeTimeout)")
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        self.context = nil
    }

    /// The tunnel carries traffic: counted open until the connection closes.
    func markOpened() {
        guard !opened, !ended else { return }
        opened = true
        deadline?.cancel()
        metrics.tunnel(mode, "opened")
        metrics.tunnelsOpen.increment()
    }

    /// Ends a tunnel that never opened: the metric, one log line, a TLS alert when one is due, the close.
    func refuse(result: String, alert: Alert?, reason: String) {
        guard !opened, !ended, let context else { return }
        ended = true
        deadline?.cancel()
        metrics.tunnel(mode, result)
        logger.info("tunnel refused", metadata: ["mode": "\(mode)", "host": "\(host)", "result": "\(result)", "reason": "\(reason)"])
        guard let alert else {
            context.close(promise: nil)
            return
        }
        // A fatal alert record as TLS 1.2/1.3 frame it: content type 21, version 3.3, length 2, level 2.
        var record = context.channel.allocator.buffer(capacity: 7)
        record.writeBytes([21, 3, 3, 0, 2, 2, alert.rawValue])
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(record)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !ended else { return }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSUserEvent { markOpened() }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is NIOSSLError || error is BoringSSLError else { return context.fireErrorCaught(error) }
        if opened {
            // After the handshake: the agent closed without close_notify, or broke the record layer.
            context.close(promise: nil)
        } else if !ended {
            ended = true
            deadline?.cancel()
            metrics.tunnel(mode, "handshake_failed")
            // BoringSSL's reason (e.g. TLSV1_ALERT_UNKNOWN_CA: the agent does not trust the sidecar's CA).
            logger.info("tunnel handshake failed", metadata: ["mode": "\(mode)", "host": "\(host)", "error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        if opened { metrics.tunnelsOpen.decrement() }
        context.fireChannelInactive()
    }
}
