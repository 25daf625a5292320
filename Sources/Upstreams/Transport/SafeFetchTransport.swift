import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// Resolves host names. A protocol so the SSRF tests can feed it any answer.
public protocol HostResolver: Sendable {
    func resolve(host: String, port: Int) async throws -> [IPAddress]
}

/// `getaddrinfo` on NIO's blocking thread pool.
public struct SystemResolver: HostResolver {
    public init() {}

    public func resolve(host: String, port: Int) async throws -> [IPAddress] {
        try await NIOThreadPool.singleton.runIfActive {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var result: UnsafeMutablePointer<addrinfo>?
            let rc = getaddrinfo(host, String(port), &hints, &result)
            guard rc == 0, let first = result else {
                throw UpstreamError(.unreachable, beforeSend: true, detail: "cannot resolve host")
            }
            defer { freeaddrinfo(first) }
            var out: [IPAddress] = []
            var p: UnsafeMutablePointer<addrinfo>? = first
            while let info = p {
                if info.pointee.ai_family == AF_INET, let sa = info.pointee.ai_addr {
                    let v4 = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
                    out.append(.v4(UInt32(bigEndian: v4)))
                } else if info.pointee.ai_family == AF_INET6, let sa = info.pointee.ai_addr {
                    let bytes = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { ptr in
                        withUnsafeBytes(of: ptr.pointee.sin6_addr) { Array($0) }
                    }
                    out.append(.v6(bytes))
                }
                p = info.pointee.ai_next
            }
            var seen = Set<IPAddress>()
            return out.filter { seen.insert($0).inserted }
        }
    }
}

/// The `http_fetch` transport: resolves the destination itself, checks every address with the
/// `EgressGuard`, and connects to a checked address (SNI and certificate checks still use the name), so
/// no second lookup can swap in an internal address. Redirects are not followed unless configured;
/// each hop is then checked again. One connection per fetch (no pooling: arbitrary destinations, low
/// volume, and nothing to reuse across agents safely).
public final class SafeFetchTransport: UpstreamTransport {
    let egress: EgressGuard
    let resolver: any HostResolver
    let sslContext: NIOSSLContext
    let connectTimeout: Duration
    let maxRedirects: Int

    public init(egress: EgressGuard, resolver: any HostResolver = SystemResolver(), tls: TLSConfiguration, connectTimeout: Duration, maxRedirects: Int = 0) throws {
        self.egress = egress
        self.resolver = resolver
        self.sslContext = try NIOSSLContext(configuration: tls)
        self.connectTimeout = connectTimeout
        self.maxRedirects = maxRedirects
    }

    /// The checked addresses for a target, or the reason it is refused.
    public func checkedAddresses(for url: TargetURL, granted: [CIDR] = []) async throws(UpstreamError) -> [IPAddress] {
        let addresses: [IPAddress]
        if let literal = IPAddress.parse(url.host) {
            addresses = [literal]
        } else {
            if url.host.allSatisfy({ $0.isNumber || $0 == "." || $0 == "x" || $0 == "X" }) {
                throw UpstreamError(.egressDenied, beforeSend: true, detail: "unparseable numeric host")
            }
            do { addresses = try await resolver.resolve(host: url.host, port: url.port) } catch {
                throw (error as? UpstreamError) ?? UpstreamError(.unreachable, beforeSend: true, detail: "cannot resolve host")
            }
        }
        guard !addresses.isEmpty else { throw UpstreamError(.unreachable, beforeSend: true, detail: "no address for host") }
        // Refuse if any address is refused: picking the "good" one would let a name mix internal targets in.
        for ip in addresses {
            if let why = egress.refusal(ip, port: url.port, granted: granted) {
                throw UpstreamError(.egressDenied, beforeSend: true, detail: "destination is \(why)")
            }
        }
        return addresses
    }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        var current = request
        for hop in 0...maxRedirects {
            let addresses = try await checkedAddresses(for: current.url, granted: current.egressAllow)
            let response = try await exchange(current, addresses: addresses)
            let code = Int(response.status.code)
            guard hop < maxRedirects, [301, 302, 303, 307, 308].contains(code),
                let location = response.headers.first(name: "location"), let next = current.url.resolving(location)
            else { return response }
            response.body.cancel()
            if let why = current.hopCheck?(next) {
                throw UpstreamError(.egressDenied, beforeSend: false, detail: "a redirect led to a destination the policy does not allow (\(why))")
            }
            // Another origin gets none of the agent's credentials for the first one (as browsers and curl).
            if (next.scheme, next.host, next.port) != (current.url.scheme, current.url.host, current.url.port) {
                for name in ["authorization", "cookie", "proxy-authorization"] { current.headers.remove(name: name) }
            }
            current.url = next
            current.headers.replaceOrAdd(name: "Host", value: next.authority)
            if code == 303 || ((code == 301 || code == 302) && current.method == .POST) {
                current.method = .GET
                current.body = nil
            }
        }
        throw UpstreamError(.protocolError, beforeSend: false, detail: "too many redirects")
    }

    private func exchange(_ request: UpstreamRequest, addresses: [IPAddress]) async throws(UpstreamError) -> UpstreamResponse {
        let loop = MultiThreadedEventLoopGroup.currentEventLoop ?? MultiThreadedEventLoopGroup.singleton.any()
        var channel: (any Channel)?
        let handler = FetchResponseHandler(eventLoop: loop)
        for ip in addresses {
            let address: SocketAddress
            do { address = try SocketAddress(ipAddress: ip.description, port: request.url.port) } catch { continue }
            let sslContext = request.url.scheme == "https" ? self.sslContext : nil
            // SNI and certificate verification use the name, never the address we connect to.
            let serverName = IPAddress.parse(request.url.host) == nil ? request.url.host : nil
            let bootstrap = ClientBootstrap.upstreamHTTP1(
                on: loop, connectTimeout: connectTimeout, tls: sslContext, serverName: serverName, handler: handler)
            if let c = try? await bootstrap.connect(to: address).get() {
                channel = c
                break
            }
        }
        guard let channel else { throw UpstreamError(.unreachable, beforeSend: true, detail: "connect failed") }
        let deadline = channel.eventLoop.scheduleTask(deadline: request.deadline) {
            handler.fail(UpstreamError(.timeout, beforeSend: false, detail: "deadline exceeded"))
            channel.close(promise: nil)
        }
        handler.body.onEnd = { deadline.cancel() }
        var headers = request.headers
        headers.replaceOrAdd(name: "Connection", value: "close")
        if let body = request.body { headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes)) }
        let head = HTTPRequestHead(version: .http1_1, method: request.method, uri: request.url.pathAndQuery, headers: headers)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body = request.body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        do {
            return try await withTaskCancellationHandler {
                try await handler.head.futureResult.get()
            } onCancel: {
                channel.close(promise: nil)
            }
        } catch {
            deadline.cancel()
            channel.close(promise: nil)
            throw HTTPClientTransport.classify(error)
        }
    }
}

/// Delivers one HTTP response into a `BodyStream`, pausing reads while the consumer is behind.
///
/// It owns its body stream: when the consumer gives up (the agent went away, a size limit, a redirect
/// being followed) the fetch connection is closed at once instead of downloading on until its deadline.
/// The link is dropped when the response ends or fails, which ends the handler ↔ stream cycle.
final class FetchResponseHandler: ChannelDuplexHandler, BodyStreamOwner, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    let head: EventLoopPromise<UpstreamResponse>
    let body: FetchBody
    private let readPause = ReadPause()
    private var context: ChannelHandlerContext?

    final class FetchBody: @unchecked Sendable {
        let stream: BodyStream
        var onEnd: () -> Void = {}
        init(stream: BodyStream) { self.stream = stream }
    }

    private let eventLoop: any EventLoop

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        head = eventLoop.makePromise(of: UpstreamResponse.self)
        body = FetchBody(stream: BodyStream())
    }

    /// One handler serves the connection attempts to a name's addresses in turn: it links to the
    /// stream while it is in a live pipeline, and a failed attempt's pipeline letting go of it (which
    /// can come after the next attempt took it) does not unlink the current one.
    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        body.stream.attach(self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        guard context === self.context else { return }
        self.context = nil
        body.stream.detach()
    }

    /// From any thread: the body's consumer is gone, so nothing more of this response is wanted.
    func bodyCancelled() {
        eventLoop.execute {
            self.body.onEnd()
            self.context?.close(promise: nil)
        }
    }

    func fail(_ error: any Error) {
        head.fail(error)
        body.stream.detach()
        body.stream.fail(error)
        body.onEnd()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            if (100..<200).contains(h.status.code) { return }
            if let invalid = UpstreamError.invalidStatus(h.status) {
                fail(invalid)
                return context.close(promise: nil)
            }
            head.succeed(UpstreamResponse(status: h.status, headers: h.headers, body: .stream(body.stream)))
        case .body(let chunk):
            readPause.feed(chunk, to: body.stream, context: context)
        case .end:
            body.stream.detach()
            body.stream.finish()
            body.onEnd()
            context.close(promise: nil)
        }
    }

    func read(context: ChannelHandlerContext) {
        readPause.read(context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(UpstreamError(.protocolError, beforeSend: false, detail: "connection closed by upstream"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(HTTPClientTransport.classify(error))
        context.close(promise: nil)
    }
}
