// relay-floor: the least a reverse proxy built on SwiftNIO's HTTP/1.1 codec does per request — parse the
// request, send it on a kept-alive upstream connection of the same event loop, parse the answer, write
// it back — with no classification, policy, credential, header rules, resilience, logging or metrics.
// bench/run.sh runs it beside nginx and the sidecar against the same backend: the distance from this
// floor to the sidecar is what the sidecar's own work costs; the distance from nginx to this floor is
// what the Swift/NIO stack itself costs on this machine.
//
//   relay-floor LISTEN_PORT UPSTREAM_PORT [EVENT_LOOPS] [--tls CERT_CHAIN_PEM KEY_PEM]
//
// With `--tls` it terminates TLS first (swift-nio-ssl, as the sidecar's intercepted tunnels do):
// bench/intercept.sh runs it beside nginx terminating TLS, for the floor of an HTTPS proxy on this stack.
//
// Requests to /serpapi/<path> go upstream as /<path> (the sidecar's reverse route), answers are written
// as bytes in one write (as the sidecar writes them), the NIO request encoder and its header validation
// are used upstream (as the sidecar's pool does).
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

var arguments = CommandLine.arguments
var tls: NIOSSLContext?
if let flag = arguments.firstIndex(of: "--tls"), flag + 2 < arguments.count {
    let chain = try NIOSSLCertificate.fromPEMFile(arguments[flag + 1]).map { NIOSSLCertificateSource.certificate($0) }
    let key = try NIOSSLPrivateKey(file: arguments[flag + 2], format: .pem)
    tls = try NIOSSLContext(configuration: .makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key)))
    arguments.removeSubrange(flag...(flag + 2))
}
guard arguments.count >= 3, let listenPort = Int(arguments[1]), let port = Int(arguments[2]) else {
    print("usage: relay-floor LISTEN_PORT UPSTREAM_PORT [EVENT_LOOPS] [--tls CERT_CHAIN_PEM KEY_PEM]")
    exit(2)
}
let upstreamPort = port
let loops = arguments.count > 3 ? Int(arguments[3]) ?? System.coreCount : System.coreCount
let serverTLS = tls
let group = MultiThreadedEventLoopGroup(numberOfThreads: loops)

/// One kept-alive upstream connection; it goes back to its loop's idle list after each answer.
/// Confined to its event loop (`@unchecked Sendable` only so the channel initializer can add it).
final class UpstreamConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    let pool: LoopPool
    var channel: (any Channel)?
    var onPart: ((HTTPClientResponsePart) -> Void)?

    init(pool: LoopPool) { self.pool = pool }

    func handlerAdded(context: ChannelHandlerContext) { channel = context.channel }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = Self.unwrapInboundIn(data)
        onPart?(part)
        if case .end = part {
            onPart = nil
            pool.idle.append(self)
        }
    }
}

/// The idle upstream connections of one event loop (touched only on that loop).
final class LoopPool {
    let loop: any EventLoop
    var idle: [UpstreamConnection] = []

    init(loop: any EventLoop) { self.loop = loop }

    func connection(_ use: @escaping (UpstreamConnection) -> Void) {
        if let c = idle.popLast() { return use(c) }
        let c = UpstreamConnection(pool: self)
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(c)
                }
            }
            .connect(host: "127.0.0.1", port: upstreamPort)
            .assumeIsolated().whenSuccess { _ in use(c) }
    }
}

/// Read-only after start; each pool is touched only on its own loop.
nonisolated(unsafe) let pools = Dictionary(uniqueKeysWithValues: group.makeIterator().map { (ObjectIdentifier($0), LoopPool(loop: $0)) })

final class Relay: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer
    private var head: HTTPRequestHead?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end: if let head { forward(head, context: context) }
        }
    }

    private func forward(_ request: HTTPRequestHead, context: ChannelHandlerContext) {
        let pool = pools[ObjectIdentifier(context.eventLoop)]!
        pool.connection { upstream in
            var answer = context.channel.allocator.buffer(capacity: 512)
            upstream.onPart = { part in
                switch part {
                case .head(let h):
                    answer.writeString("HTTP/1.1 \(h.status.code) \(h.status.reasonPhrase)\r\n")
                    for (name, value) in h.headers {
                        answer.writeString(name)
                        answer.writeStaticString(": ")
                        answer.writeString(value)
                        answer.writeStaticString("\r\n")
                    }
                    answer.writeStaticString("\r\n")
                case .body(var b): answer.writeBuffer(&b)
                case .end: context.writeAndFlush(Self.wrapOutboundOut(answer), promise: nil)
                }
            }
            var headers = HTTPHeaders()
            for (name, value) in request.headers where name.lowercased() != "host" { headers.add(name: name, value: value) }
            headers.add(name: "Host", value: "127.0.0.1:\(upstreamPort)")
            let uri = request.uri.hasPrefix("/serpapi/") ? String(request.uri.dropFirst("/serpapi".count)) : request.uri
            let channel = upstream.channel!
            channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: request.method, uri: uri, headers: headers)), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
    }
}

let server = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 1024)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            if let serverTLS { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverTLS)) }
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder()))
            try channel.pipeline.syncOperations.addHandler(Relay())
        }
    }
    .bind(host: "127.0.0.1", port: listenPort).wait()
print("relay-floor on 127.0.0.1:\(listenPort)\(serverTLS == nil ? "" : " (TLS)") -> 127.0.0.1:\(upstreamPort), \(loops) event loops")
try server.closeFuture.wait()
