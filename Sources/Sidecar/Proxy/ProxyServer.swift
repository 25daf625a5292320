import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The proxy listener as a lifecycle service.
///
/// On graceful shutdown (SIGTERM/SIGINT) it stops accepting at once, tells every connection to finish
/// its current request and close (`ChannelShouldQuiesceEvent`, handled by `ProxyHTTPHandler`), and
/// waits up to the drain deadline before cutting what is left.
final class ProxyServer: Service {
    private let quiesce: ServerQuiescingHelper
    private let connections: ConnectionRegistry
    private let context: ProxyContext
    private let readiness: Readiness
    private let logger: Logger

    private init(
        quiesce: ServerQuiescingHelper, connections: ConnectionRegistry, context: ProxyContext, readiness: Readiness,
        logger: Logger
    ) {
        self.quiesce = quiesce
        self.connections = connections
        self.context = context
        self.readiness = readiness
        self.logger = logger
    }

    /// Binds the listener before any other service starts: a port already in use is a start-up error
    /// with nothing else begun (no admin server to cancel half-way, no noise from it in the log). The
    /// listening channel is closed by the quiescing helper when `run` drains.
    static func bind(
        listen: HostPort, context: ProxyContext, cap: ConnectionCap, readiness: Readiness, logger: Logger, onBound: @Sendable (SocketAddress) -> Void
    ) async throws -> ProxyServer {
        let group = MultiThreadedEventLoopGroup.singleton
        let quiesce = ServerQuiescingHelper(group: group)
        let connections = ConnectionRegistry()
        let limits = context.limits
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 256 * 1024))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    connections.add(channel)
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(ConnectionCap.Handler(cap))
                    // NIO's decoder (llhttp) and one handler, which also encodes the answers, queues
                    // pipelined requests, quiesces, times out idle connections and answers parse errors.
                    // Bytes after a CONNECT (an eager ClientHello) are kept for the tunnel that replaces the decoder.
                    try sync.addHandler(InputMeter())
                    try sync.addHandler(Self.requestDecoder(limits: limits, leftOverBytes: .forwardBytes))
                    try sync.addHandler(ProxyHTTPHandler(shared: context))
                }
            }
        let server: any Channel
        do {
            server = try await bootstrap.bind(host: listen.host, port: listen.port).get()
        } catch {
            throw StartupError("cannot listen on \(listen) (proxy): \(error)")
        }
        if let address = server.localAddress { onBound(address) }
        readiness.markProxyBound()
        return ProxyServer(quiesce: quiesce, connections: connections, context: context, readiness: readiness, logger: logger)
    }

    func run() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let quiesce = self.quiesce
        let connections = self.connections
        let limits = context.limits
        let context = self.context

        // Wait for SIGTERM/SIGINT (or cancellation), then drain.
        try? await gracefulShutdown()
        logger.info("draining proxy listener", metadata: ["drain_timeout": "\(limits.drainTimeout)"])
        context.draining.startDraining()
        readiness.markDraining()
        let drained = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        // true: drained; false: the deadline passed; nil: cancelled — another part of the sidecar failed
        // (at start, a listener that cannot bind), so there is no drain to wait for.
        let drainedInTime = await withTaskGroup(of: Bool?.self) { race in
            race.addTask { (try? await drained.futureResult.get()) != nil }
            race.addTask {
                do { try await Task.sleep(for: limits.drainTimeout) } catch { return nil }
                return false
            }
            let first = await race.next() ?? nil
            if first != true {
                if first == false {
                    logger.warning("drain deadline passed; closing remaining connections", metadata: ["connections": "\(connections.count)"])
                } else if connections.count > 0 {
                    logger.warning("stopping without a drain (the sidecar is stopping on a failure); closing connections",
                        metadata: ["connections": "\(connections.count)"])
                }
                // Cutting the connections completes `drained`, which lets the group finish.
                connections.closeAll()
            }
            race.cancelAll()
            return first == true
        }
        if drainedInTime { logger.info("proxy listener drained") }
    }
}

extension ProxyServer {
    /// NIO's request decoder (llhttp) with the listener's limits on the head. Its buffer is bounded too:
    /// the decoder keeps only an unfinished head, and after an `Upgrade` request it stops parsing — input
    /// that keeps coming then would otherwise pile up unread.
    static func requestDecoder(limits: ListenerLimits, leftOverBytes: RemoveAfterUpgradeStrategy) -> ByteToMessageHandler<HTTPRequestDecoder> {
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
        decoderLimits.maxHeaderFieldSize = limits.maxHeaderBytes
        decoderLimits.maxHeaderFieldCount = 512
        return ByteToMessageHandler(
            HTTPRequestDecoder(leftOverBytesStrategy: leftOverBytes, informationalResponseStrategy: .drop, limitConfiguration: decoderLimits),
            maximumBufferSize: 2 * limits.maxHeaderBytes + 128 * 1024)
    }
}

/// Every open agent connection, so the drain deadline can cut what is left.
final class ConnectionRegistry: Sendable {
    private let channels = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

    func add(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        channels.withLockedValue { $0[id] = channel }
        channel.closeFuture.whenComplete { _ in _ = self.channels.withLockedValue { $0.removeValue(forKey: id) } }
    }

    var count: Int { channels.withLockedValue { $0.count } }

    func closeAll() {
        for channel in channels.withLockedValue({ Array($0.values) }) { channel.close(promise: nil) }
    }
}
