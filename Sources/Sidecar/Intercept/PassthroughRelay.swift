import NIOCore
import NIOPosix
import Upstreams

/// A pass-through tunnel (`intercept.passthrough_hosts`): after the same checks as an intercepted one
/// and the ClientHello's server name, the agent's bytes are relayed unread to an address that was
/// resolved and checked before the `200` (no second lookup), with backpressure both ways. One
/// access-log line per tunnel when it closes, with the bytes each way.
enum PassthroughRelay {
    static func connect(
        _ plan: TunnelPlan, record: RequestRecord, agent: any Channel, guardHandler: TunnelGuard, shared: ProxyContext, interception: Interception
    ) -> EventLoopFuture<Void> {
        let loop = agent.eventLoop
        let addresses = plan.addresses.compactMap { try? SocketAddress(ipAddress: $0.description, port: plan.target.port) }
        guard !addresses.isEmpty else {
            guardHandler.refuse(result: "upstream_unreachable", alert: .internalError, reason: "no checked address")
            return loop.makeFailedFuture(ChannelError.connectPending)
        }
        let timeout = interception.connectTimeout
        // On `loop` throughout: the bootstrap connects on the agent's loop, so both channels share a thread.
        return connectFirst(addresses[...], on: loop, timeout: timeout).assumeIsolated().flatMapErrorThrowing { error in
            guardHandler.refuse(result: "upstream_unreachable", alert: .internalError, reason: "could not connect to the host")
            throw error
        }.flatMapThrowing { upstream in
            let (toAgent, toUpstream) = TunnelRelay.pair(record: record, host: plan.target.host, shared: shared)
            try upstream.pipeline.syncOperations.addHandler(toAgent)
            try agent.pipeline.syncOperations.addHandler(toUpstream)
            // Reading from the upstream starts now that both sides are joined.
            try upstream.syncOptions?.setOption(.autoRead, value: true)
            guardHandler.markOpened()
        }.nonisolated()
    }

    /// The first address that answers, in the order the resolver gave them.
    private static func connectFirst(_ addresses: ArraySlice<SocketAddress>, on loop: any EventLoop, timeout: Duration) -> EventLoopFuture<any Channel> {
        guard let first = addresses.first else { return loop.makeFailedFuture(ChannelError.connectTimeout(.zero)) }
        return ClientBootstrap(group: loop)
            .connectTimeout(TimeAmount(timeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false)
            .connect(to: first)
            .flatMapError { error in
                addresses.count > 1 ? connectFirst(addresses.dropFirst(), on: loop, timeout: timeout) : loop.makeFailedFuture(error)
            }
    }
}

/// One side of a relay: what it reads goes out of its partner's channel. Reads stop while the partner
/// cannot write (backpressure both ways); a close on either side closes both. The agent side writes the
/// tunnel's access-log line when it goes.
final class TunnelRelay: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: TunnelRelay?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Bytes read on this side (and sent to the partner).
    private var bytesRead = 0
    /// Only the agent's side logs.
    private var finish: ((_ fromAgent: Int, _ toAgent: Int) -> Void)?

    /// (upstream side, agent side), joined.
    static func pair(record: RequestRecord, host: String, shared: ProxyContext) -> (TunnelRelay, TunnelRelay) {
        let upstream = TunnelRelay()
        let agent = TunnelRelay()
        upstream.partner = agent
        agent.partner = upstream
        var record = record
        record.entry = .passthrough
        record.tool = .httpFetch
        record.upstreamHost = host
        record.status = 200
        agent.finish = { fromAgent, toAgent in
            record.bytesIn = fromAgent
            record.bytesOut = toAgent
            record.totalDuration = MonotonicInstant.now - record.start
            shared.finish(record)
        }
        return (upstream, agent)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytesRead += unwrapInboundIn(data).readableBytes
        // Flushed at once: the ClientHello reaches this handler outside a read cycle (as the hello reader
        // leaves), with no read-complete to flush it after.
        partner?.writeAndFlush(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        end()
        partner?.close()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.isWritable ?? true {
            context.read()
        } else {
            pendingRead = true
        }
    }

    private var isWritable: Bool { context?.channel.isWritable ?? false }

    private func writeAndFlush(_ data: NIOAny) { context?.writeAndFlush(data, promise: nil) }

    private func resumeReading() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }

    private func close() { context?.close(promise: nil) }

    private func end() {
        guard let finish = finish ?? partner?.finish else { return }
        let (fromAgent, toAgent) = self.finish != nil ? (bytesRead, partner?.bytesRead ?? 0) : (partner?.bytesRead ?? 0, bytesRead)
        self.finish = nil
        partner?.finish = nil
        finish(fromAgent, toAgent)
    }
}
