import Logging
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The proxy listener as a lifecycle service.
///
/// On graceful shutdown (SIGTERM/SIGINT) it stops accepting at once, tells every connection to finish
/// its current request and close (`ChannelShouldQuiesceEvent`, handled by NIO's pipelining handler), and
/// waits up to the drain deadline before cutting what is left.
final class ProxyServer: Service {
    private let listen: HostPort
    private let context: ProxyContext
    private let readiness: Readiness
    private let logger: Logger
    private let onBound: @Sendable (SocketAddress) -> Void

    init(
        listen: HostPort, context: ProxyContext, readiness: Readiness, logger: Logger,
        onBound: @escaping @Sendable (SocketAddress) -> Void
    ) {
        self.listen = listen
        self.context = context
        self.readiness = readiness
        self.logger = logger
        self.onBound = onBound
    }

    func run() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let quiesce = ServerQuiescingHelper(group: group)
        let limits = context.limits
        let context = self.context
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
        decoderLimits.maxHeaderFieldSize = limits.maxHeaderBytes
        decoderLimits.maxHeaderFieldCount = 512
        let decoderLimitConfiguration = decoderLimits
        var encoderSettings = HTTPResponseEncoder.Configuration()
        encoderSettings.automaticallySetFramingHeaders = false
        let encoderConfiguration = encoderSettings
        let idle = TimeAmount(limits.idleTimeout)

        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .bind(host: listen.host, port: listen.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(IdleStateHandler(readTimeout: idle))
                    // Decoder, encoder and pipelining assistance wired by hand (not through
                    // configureHTTPServerPipeline) so the encoder is not paired with the decoder: it then
                    // leaves framing to ResponseFraming, which can answer a refused CONNECT with a body.
                    try sync.addHandler(HTTPResponseEncoder(configuration: encoderConfiguration))
                    try sync.addHandler(
                        ByteToMessageHandler(
                            HTTPRequestDecoder(
                                leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop,
                                limitConfiguration: decoderLimitConfiguration)))
                    try sync.addHandler(HTTPServerPipelineHandler())
                    try sync.addHandler(
                        ConnectionGuard(maxHeaderBytes: limits.maxHeaderBytes) { error, requestID in
                            var record = RequestRecord(requestID: requestID, method: "-", start: .now)
                            record.status = Int(error.status.code)
                            record.outcome = error.codeString
                            record.totalDuration = .zero
                            context.finish(record)
                        })
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        if let address = server.channel.localAddress { onBound(address) }
        readiness.markProxyBound()

        await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await server.executeThenClose { inbound in
                    try await withThrowingDiscardingTaskGroup { connections in
                        for try await channel in inbound {
                            connections.addTask { await ProxyConnection(channel: channel, context: context).serve() }
                        }
                    }
                }
            }
            // Wait for SIGTERM/SIGINT (or cancellation), then drain: closing the server channel ends
            // the accept loop, and the connection task group finishes once every connection has.
            try? await gracefulShutdown()
            logger.info("draining proxy listener", metadata: ["drain_timeout": "\(limits.drainTimeout)"])
            context.draining.startDraining()
            readiness.markDraining()
            quiesce.initiateShutdown(promise: nil)
            group.addTask {
                try await Task.sleep(for: limits.drainTimeout)
                throw DrainTimeout()
            }
            do {
                _ = try await group.next()
                logger.info("proxy listener drained")
            } catch is DrainTimeout {
                logger.warning("drain deadline passed; closing remaining connections")
            } catch {
                logger.error("proxy listener failed", metadata: ["error": "\(type(of: error))"])
            }
            group.cancelAll()
        }
    }

    struct DrainTimeout: Error {}
}
