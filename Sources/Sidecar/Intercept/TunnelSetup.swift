import NIOCore
import NIOHTTP1
import NIOSSL
import NIOTLS
import Upstreams

/// Turns a connection whose `CONNECT` was accepted into a tunnel.
///
/// The HTTP decoder and the `ProxyHTTPHandler` leave; the ClientHello is read first (NIO's
/// `SNIHandler`, which parses it without answering anything) so its server name can be compared with
/// the `CONNECT` host before any TLS is spoken (and, for an intercepted tunnel, its ALPN offer must
/// include HTTP/1.x: `ClientHelloProtocolCheck`). Then, for an intercepted tunnel, TLS is terminated with
/// a leaf for that host and a fresh decoder and `ProxyHTTPHandler` read the decrypted requests, each of
/// which runs through the whole pipeline; for a pass-through host the bytes are relayed to an address
/// that was checked. A `TunnelGuard` behind them bounds the handshake in time and turns TLS failures
/// into a metric, a log line and a closed connection.
///
///     [ClientHello] → [ALPN check] → [NIOSSLServerHandler] → [TunnelGuard] → [InputMeter] → [HTTP decoder] → [ProxyHTTPHandler(tunnel)]
///     [ClientHello] → [TunnelGuard] → [TunnelRelay ⇄ upstream connection]
enum TunnelSetup {
    /// Replaces the connection's HTTP handlers (`context` is the `ProxyHTTPHandler`'s) with the tunnel's.
    static func install(_ plan: TunnelPlan, record: RequestRecord, replacing context: ChannelHandlerContext, shared: ProxyContext) throws {
        guard let interception = shared.pipeline.interception else { throw ChannelError.operationUnsupported }
        let channel = context.channel
        let sync = context.pipeline.syncOperations
        let mode = plan.passthrough ? "passthrough" : "intercept"
        let guardHandler = TunnelGuard(
            mode: mode, handshakeTimeout: interception.settings.handshakeTimeout, metrics: shared.metrics, logger: interception.logger,
            host: plan.target.host)
        if !plan.passthrough {
            // An intercepted tunnel speaks HTTP/1.x: a ClientHello offering only other protocols is refused.
            try sync.addHandler(
                ClientHelloProtocolCheck { offered in
                    guardHandler.refuse(
                        result: "no_application_protocol", alert: .noApplicationProtocol,
                        reason: "the ClientHello offers only \(offered) (the tunnel speaks http/1.1)")
                })
        }
        let hello = ByteToMessageHandler(
            SNIHandler { result in
                clientHello(result, plan: plan, record: record, channel: channel, guardHandler: guardHandler, shared: shared, interception: interception)
            })
        try sync.addHandler(hello)
        try sync.addHandler(guardHandler)
        let decoder = try sync.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self)
        let meter = try sync.context(handlerType: InputMeter.self)
        sync.removeHandler(context: context, promise: nil)
        sync.removeHandler(context: meter, promise: nil)
        // Whatever the agent sent after its CONNECT (an eager ClientHello) goes to `hello` as the decoder leaves.
        sync.removeHandler(context: decoder, promise: nil)
    }

    /// The ClientHello has arrived: its server name must name the tunnel's host (or be absent), then the
    /// tunnel's own handlers take over. A failed future leaves the hello handler waiting; the connection
    /// is closed by then.
    static func clientHello(
        _ result: SNIResult, plan: TunnelPlan, record: RequestRecord, channel: any Channel, guardHandler: TunnelGuard, shared: ProxyContext,
        interception: Interception
    ) -> EventLoopFuture<Void> {
        let loop = channel.eventLoop
        if case .hostname(let name) = result, !plan.target.matches(serverName: name) {
            guardHandler.refuse(result: "sni_mismatch", alert: .unrecognizedName, reason: "the ClientHello names another server than the CONNECT")
            return loop.makeFailedFuture(ChannelError.inputClosed)
        }
        // `.fallback`: no server name (an IP-literal target) — or no TLS at all, which the handshake refuses.
        if plan.passthrough {
            return PassthroughRelay.connect(plan, record: record, agent: channel, guardHandler: guardHandler, shared: shared, interception: interception)
        }
        do {
            let context = try interception.context(for: plan.target.host)
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(NIOSSLServerHandler(context: context), position: .before(guardHandler))
            try sync.addHandler(InputMeter())
            try sync.addHandler(ProxyServer.requestDecoder(limits: shared.limits, leftOverBytes: .dropBytes))
            try sync.addHandler(ProxyHTTPHandler(shared: shared, tunnel: plan))
            return loop.makeSucceededVoidFuture()
        } catch {
            guardHandler.refuse(result: "handshake_failed", alert: .internalError, reason: "no certificate could be made for the host")
            return loop.makeFailedFuture(error)
        }
    }
}
