import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

extension ClientBootstrap {
    /// A pooled upstream connection: optional TLS, NIO's response decoder, then the pool's handler,
    /// which writes requests as bytes itself (`RequestHeadEncoder`).
    static func pooledHTTP1(
        on loop: any EventLoop, connectTimeout: Duration, tls: NIOSSLContext?, serverName: String?,
        handler: PooledConnectionHandler
    ) -> ClientBootstrap {
        upstream(on: loop, connectTimeout: connectTimeout, tls: tls, serverName: serverName) { sync in
            try sync.addHandler(ByteToMessageHandler(handler.responseDecoder))
            try sync.addHandler(handler)
        }
    }

    private static func upstream(
        on loop: any EventLoop, connectTimeout: Duration, tls: NIOSSLContext?, serverName: String?,
        handlers: @escaping @Sendable (ChannelPipeline.SynchronousOperations) throws -> Void
    ) -> ClientBootstrap {
        ClientBootstrap(group: loop)
            .connectTimeout(TimeAmount(connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls { try sync.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverName)) }
                    try handlers(sync)
                }
            }
    }
}
