import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

extension ClientBootstrap {
    /// An upstream HTTP/1.1 connection: optional TLS (SNI and certificate checks by `serverName`), NIO's
    /// client codec, then `handler`. Used by the pool and by the SSRF-checked fetch transport.
    static func upstreamHTTP1(
        on loop: any EventLoop, connectTimeout: Duration, tls: NIOSSLContext?, serverName: String?,
        handler: any ChannelHandler & Sendable
    ) -> ClientBootstrap {
        ClientBootstrap(group: loop)
            .connectTimeout(TimeAmount(connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls { try sync.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverName)) }
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(handler)
                }
            }
    }
}
