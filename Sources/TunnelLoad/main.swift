// tunnel-load: HTTPS load through a CONNECT proxy, or straight to a TLS server, for bench/intercept.sh.
// wrk cannot open a CONNECT tunnel before its TLS handshake; this does, so the sidecar's interception
// and nginx terminating TLS are driven by the same client, on the same loops, the same way.
//
//   tunnel-load HOST:PORT [--connect AUTHORITY --proxy-token TOKEN] --sni NAME --ca FILE
//               [--path /search?q=bench] [--connections 64] [--seconds 10] [--mode keepalive|handshake]
//
//   keepalive  each connection opens once (CONNECT, TLS) and sends requests back to back
//   handshake  each connection opens, sends one request and closes, again and again: a new tunnel and
//              a full TLS handshake per request (no session resumption)
//   --names N  with --mode handshake and --connect: every new tunnel goes to a name of its own,
//              n<i>.<the --connect host>, for the first N tunnels (the leaf-cache memory check)
//
// Prints one JSON line: requests, seconds, rps, p50_us, p99_us, errors.
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

struct Options {
    var target = ""
    var connect: String?
    var token: String?
    var sni = ""
    var ca = ""
    var path = "/"
    var connections = 64
    var seconds = 10.0
    var handshake = false
    var names = 0
}

func parseOptions() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst()
    guard let target = args.popFirst() else {
        FileHandle.standardError.write(Data("usage: tunnel-load HOST:PORT [--connect A --proxy-token T] --sni N --ca F [options]\n".utf8))
        exit(2)
    }
    o.target = target
    while let flag = args.popFirst() {
        let value = args.popFirst() ?? ""
        switch flag {
        case "--connect": o.connect = value
        case "--proxy-token": o.token = value
        case "--sni": o.sni = value
        case "--ca": o.ca = value
        case "--path": o.path = value
        case "--connections": o.connections = Int(value) ?? 64
        case "--seconds": o.seconds = Double(value) ?? 10
        case "--mode": o.handshake = value == "handshake"
        case "--names": o.names = Int(value) ?? 0
        default:
            FileHandle.standardError.write(Data("unknown option \(flag)\n".utf8))
            exit(2)
        }
    }
    return o
}

/// Reads the proxy's answer to CONNECT (up to the blank line), then hands the connection on.
final class ConnectReply: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<Void>
    var seen = ByteBuffer()

    init(promise: EventLoopPromise<Void>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        seen.writeBuffer(&chunk)
        let text = String(buffer: seen)
        guard text.contains("\r\n\r\n") else { return }
        guard text.hasPrefix("HTTP/1.1 200") else { return promise.fail(ChannelError.inputClosed) }
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
        promise.succeed(())
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { promise.fail(error) }
    func channelInactive(context: ChannelHandlerContext) { promise.fail(ChannelError.inputClosed) }
}

/// Sends requests one after another on a connection and records each one's latency.
final class RequestLoop: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    let head: HTTPRequestHead
    let deadline: NIODeadline
    let once: Bool
    let done: EventLoopPromise<Void>
    let record: (UInt64?) -> Void
    var sent = NIODeadline.now()
    var status: HTTPResponseStatus?
    /// The last answer arrived and the connection is being closed: what TLS says about the close (nginx
    /// and BoringSSL differ on close_notify) is no failed request.
    var finished = false

    init(head: HTTPRequestHead, deadline: NIODeadline, once: Bool, done: EventLoopPromise<Void>, record: @escaping (UInt64?) -> Void) {
        self.head = head
        self.deadline = deadline
        self.once = once
        self.done = done
        self.record = record
    }

    func send(context: ChannelHandlerContext) {
        sent = .now()
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): status = h.status
        case .body: break
        case .end:
            let now = NIODeadline.now()
            record(status == .ok ? UInt64((now - sent).nanoseconds / 1000) : nil)
            if once || now >= deadline {
                finished = true
                context.close(promise: nil)
                done.succeed(())
            } else {
                send(context: context)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !finished { record(nil) }
        finished = true
        context.close(promise: nil)
        done.succeed(())
    }

    func channelInactive(context: ChannelHandlerContext) { done.succeed(()) }
}

let options = parseOptions()
// Two loops, as wrk -t2 in the other benchmarks.
let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
var tls = TLSConfiguration.makeClientConfiguration()
tls.trustRoots = .file(options.ca)
tls.applicationProtocols = ["http/1.1"]
let sslContext = try NIOSSLContext(configuration: tls)
let parts = options.target.split(separator: ":")
let host = String(parts[0])
let port = Int(parts[1]) ?? 443
let deadline = NIODeadline.now() + .milliseconds(Int64(options.seconds * 1000))
let tunnels = NIOLockedValueBox(0)

/// The name the next tunnel goes to: the configured one, or with --names a new one for each tunnel.
func nextName() -> (authority: String?, sni: String) {
    guard options.names > 0, let authority = options.connect else { return (options.connect, options.sni) }
    let i = tunnels.withLockedValue { n in
        n += 1
        return n
    }
    guard i <= options.names else { return (options.connect, options.sni) }
    let name = "n\(i).\(authority.split(separator: ":")[0])"
    return ("\(name):443", name)
}
let samples = NIOLockedValueBox<[UInt64]>([])
let errors = NIOLockedValueBox(0)
let recordSample: @Sendable (UInt64?) -> Void = { sample in
    if let sample { samples.withLockedValue { $0.append(sample) } } else { errors.withLockedValue { $0 += 1 } }
}

/// One connection: TCP, the CONNECT (when proxied), TLS, then requests until the deadline (or one).
func connection(on loop: any EventLoop) -> EventLoopFuture<Void> {
    let (connectTo, sni) = nextName()
    // With --names every request asks past the response cache: the memory measured is the tunnels'.
    let requestHead = HTTPRequestHead(
        version: .http1_1, method: .GET, uri: options.path, headers: options.names > 0 ? ["Host": sni, "Cache-Control": "no-cache"] : ["Host": sni])
    let done = loop.makePromise(of: Void.self)
    let tunnel = loop.makePromise(of: Void.self)
    ClientBootstrap(group: loop)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .connect(host: host, port: port)
        .whenComplete { result in
            guard case .success(let channel) = result else {
                recordSample(nil)
                return done.succeed(())
            }
            if let authority = connectTo {
                let credentials = Data("agent:\(options.token ?? "")".utf8).base64EncodedString()
                try! channel.pipeline.syncOperations.addHandler(ConnectReply(promise: tunnel))
                channel.writeAndFlush(
                    ByteBuffer(string: "CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\nProxy-Authorization: Basic \(credentials)\r\n\r\n"),
                    promise: nil)
            } else {
                tunnel.succeed(())
            }
            tunnel.futureResult.whenComplete { result in
                guard case .success = result else {
                    recordSample(nil)
                    channel.close(promise: nil)
                    return done.succeed(())
                }
                do {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: sni))
                    try sync.addHTTPClientHandlers()
                    let loopHandler = RequestLoop(head: requestHead, deadline: deadline, once: options.handshake, done: done, record: recordSample)
                    try sync.addHandler(loopHandler)
                    loopHandler.send(context: try sync.context(handler: loopHandler))
                } catch {
                    recordSample(nil)
                    done.succeed(())
                }
            }
        }
    return done.futureResult
}

/// Keeps one connection slot busy until the deadline: one long connection, or one after another.
func slot(on loop: any EventLoop) -> EventLoopFuture<Void> {
    connection(on: loop).flatMap {
        let namesLeft = options.names == 0 || tunnels.withLockedValue { $0 } < options.names
        return options.handshake && namesLeft && NIODeadline.now() < deadline ? slot(on: loop) : loop.makeSucceededVoidFuture()
    }
}

let started = Date()
let slots = (0..<options.connections).map { _ in slot(on: group.next()) }
// With --names: stop once every name has had its tunnel (or at the deadline).
try EventLoopFuture.andAllSucceed(slots, on: group.next()).wait()
let elapsed = Date().timeIntervalSince(started)
let sorted = samples.withLockedValue { $0 }.sorted()
func percentile(_ p: Double) -> UInt64 { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
print(
    "{\"requests\":\(sorted.count),\"seconds\":\(String(format: "%.2f", elapsed)),\"rps\":\(String(format: "%.0f", Double(sorted.count) / elapsed)),"
        + "\"p50_us\":\(percentile(0.5)),\"p99_us\":\(percentile(0.99)),\"errors\":\(errors.withLockedValue { $0 })}")
try group.syncShutdownGracefully()
