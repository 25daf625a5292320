import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Keep-alive HTTP/1.1 connections to upstream origins, kept per event loop: the sidecar's own upstream
/// client for every origin that is not offered HTTP/2 (cleartext upstreams, and TLS upstreams of tools
/// configured with `http2: false`).
///
/// Why not async-http-client for these: on this 2-core machine AHC's per-request machinery (request
/// validation, its connection-pool state machine, task, delegate and promise objects, a lock per part)
/// cost more CPU than the whole rest of the proxy. This pool does the minimum: take an idle connection
/// of the calling loop (or connect one on it), write the request, complete a promise with the head, feed
/// the body into a `BodyStream` with backpressure, and after the last byte put the connection back.
/// AHC stays the client for TLS origins that may speak HTTP/2.
///
/// A connection taken from the idle list can have been closed by the server a moment ago; if it dies
/// before any response byte arrives and the request is replayable (GET/HEAD), it is sent once more on a
/// fresh connection, as browsers and Go's client do. Anything else is reported, never silently repeated.
public final class HTTP1ConnectionPool: UpstreamTransport {
    struct Origin: Hashable, Sendable {
        let loop: ObjectIdentifier
        let tls: Bool
        let host: String
        let port: Int
        /// The checked address to connect to (`http_fetch`), or nil to connect by `host`.
        var address: IPAddress? = nil
    }

    private let connectTimeouts: [Tool: Duration]
    /// Idle connections older than this are closed instead of reused.
    private let idleTimeout: TimeAmount
    /// Idle connections kept per origin and event loop; more are closed after use.
    private let maxIdlePerOrigin: Int
    private let sslContext: NIOSSLContext
    private let group: any EventLoopGroup
    /// One idle list per event loop of `group`, fixed at init (so finding it takes no lock).
    private let idleByLoop: [ObjectIdentifier: IdleList]
    /// Lists of loops from other groups (tests), made on first use.
    private let strayIdle = NIOLockedValueBox<[ObjectIdentifier: IdleList]>([:])

    private let maxOriginsPerLoop: Int

    public init(
        connectTimeouts: [Tool: Duration], idleTimeout: Duration = .seconds(60), maxIdlePerOrigin: Int = 256, maxOriginsPerLoop: Int = .max,
        tls: TLSConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) throws {
        self.maxOriginsPerLoop = maxOriginsPerLoop
        self.connectTimeouts = connectTimeouts
        self.idleTimeout = TimeAmount(idleTimeout)
        self.maxIdlePerOrigin = maxIdlePerOrigin
        var tls = tls
        tls.applicationProtocols = ["http/1.1"]
        self.sslContext = try NIOSSLContext(configuration: tls)
        self.group = group
        var lists: [ObjectIdentifier: IdleList] = [:]
        for loop in group.makeIterator() { lists[ObjectIdentifier(loop)] = IdleList(maxOrigins: maxOriginsPerLoop) }
        self.idleByLoop = lists
    }

    private func idleList(_ loop: ObjectIdentifier) -> IdleList {
        if let list = idleByLoop[loop] { return list }
        return strayIdle.withLockedValue { lists in
            if let list = lists[loop] { return list }
            let list = IdleList(maxOrigins: maxOriginsPerLoop)
            lists[loop] = list
            return list
        }
    }

    private var allIdleLists: [IdleList] { Array(idleByLoop.values) + strayIdle.withLockedValue { Array($0.values) } }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        try await send(request, connectingTo: nil)
    }

    /// Sends `request` on a connection to `address` (one already checked by the caller, e.g. the egress
    /// guard), reusing an idle one made to the same address for the same host, port and scheme.
    public func send(_ request: UpstreamRequest, connectingTo address: IPAddress?) async throws(UpstreamError) -> UpstreamResponse {
        let started = begin(request, on: MultiThreadedEventLoopGroup.currentEventLoop ?? group.any(), address: address)
        do {
            return try await withTaskCancellationHandler {
                try await started.response.get()
            } onCancel: {
                started.cancel()
            }
        } catch {
            throw HTTPClientTransport.classify(error)
        }
    }

    public func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? { begin(request, on: loop, address: nil) }

    /// `start` on a connection to `address` (checked by the caller), as `send(_:connectingTo:)`.
    public func start(_ request: UpstreamRequest, on loop: any EventLoop, connectingTo address: IPAddress) -> StartedCall {
        begin(request, on: loop, address: address)
    }

    private func begin(_ request: UpstreamRequest, on loop: any EventLoop, address: IPAddress?) -> StartedCall {
        let exchange = Exchange(request: request, loop: loop)
        let origin = Origin(
            loop: ObjectIdentifier(loop), tls: request.url.scheme == "https", host: request.url.host, port: request.url.port, address: address)
        if loop.inEventLoop {
            start(exchange, origin: origin)
        } else {
            loop.execute { self.start(exchange, origin: origin) }
        }
        return StartedCall(response: exchange.head.futureResult, cancel: { exchange.bodyCancelled() })
    }

    /// Closes every idle connection (in-flight ones finish or fail on their own).
    public func shutdown() {
        for connection in allIdleLists.flatMap({ $0.removeAll() }) { connection.channel.close(promise: nil) }
    }

    /// Number of idle connections (tests).
    public var idleCount: Int { allIdleLists.reduce(0) { $0 + $1.count } }

    /// Number of origins remembered across loops (tests: bounded by `maxOriginsPerLoop`).
    public var originCount: Int { allIdleLists.reduce(0) { $0 + $1.originCount } }

    // MARK: On the loop

    private func start(_ exchange: Exchange, origin: Origin) {
        exchange.loop.preconditionInEventLoop()
        guard !exchange.isDone else { return }
        if let connection = takeIdle(origin) {
            // The connection's own timer watches the deadline (no timer per request).
            connection.handler.run(exchange, reused: true)
            return
        }
        // Connecting can take until the connect timeout: the exchange watches its deadline meanwhile.
        exchange.armDeadline()
        let handler = PooledConnectionHandler(pool: self, origin: origin)
        let ssl = origin.tls ? sslContext : nil
        let serverName = IPAddress.parse(origin.host) == nil ? origin.host : nil
        let bootstrap = ClientBootstrap.pooledHTTP1(
            on: exchange.loop, connectTimeout: connectTimeouts[exchange.request.tool] ?? .seconds(5), tls: ssl, serverName: serverName,
            handler: handler)
        let connecting: EventLoopFuture<any Channel>
        if let address = origin.address {
            do {
                connecting = bootstrap.connect(to: try SocketAddress(ipAddress: address.description, port: origin.port))
            } catch {
                return exchange.fail(UpstreamError(.unreachable, beforeSend: true, detail: "unusable address"))
            }
        } else {
            connecting = bootstrap.connect(host: origin.host, port: origin.port)
        }
        connecting.whenComplete { result in
            switch result {
            case .success(let channel):
                if exchange.isDone {
                    // Nobody waits any more (deadline or cancel while connecting): keep it for the next.
                    self.release(PooledConnection(channel: channel, handler: handler), origin: origin)
                } else {
                    handler.run(exchange, reused: false)
                }
            case .failure(let error):
                exchange.fail(Self.connectFailure(error))
            }
        }
    }

    static func connectFailure(_ error: any Error) -> UpstreamError {
        let classified = HTTPClientTransport.classify(error)
        // Every failure to set up a connection happened before the request was written.
        return classified.beforeSend ? classified : UpstreamError(.unreachable, beforeSend: true, detail: classified.detail)
    }

    /// A reused connection closed before answering: send a replayable request again on a new one.
    func replay(_ exchange: Exchange, origin: Origin) {
        exchange.replayed = true
        start(exchange, origin: origin)
    }

    private func takeIdle(_ origin: Origin) -> PooledConnection? {
        let now = NIODeadline.now()
        let list = idleList(origin.loop)
        while true {
            guard let candidate = list.take(origin) else { return nil }
            if candidate.channel.isActive, candidate.since + idleTimeout > now { return candidate }
            candidate.channel.close(promise: nil)
        }
    }

    func release(_ connection: PooledConnection, origin: Origin) {
        var connection = connection
        connection.since = .now()
        for closing in idleList(origin.loop).put(connection, origin: origin, max: maxIdlePerOrigin) { closing.channel.close(promise: nil) }
    }
}

struct PooledConnection: Sendable {
    let channel: any Channel
    let handler: PooledConnectionHandler
    var since = NIODeadline.now()
}

/// One request and its answer. Confined to its event loop after creation.
final class Exchange: BodyStreamOwner, @unchecked Sendable {
    let request: UpstreamRequest
    let loop: any EventLoop
    let head: EventLoopPromise<UpstreamResponse>
    let body: BodyStream
    /// The connection carrying it, while it does.
    var connection: PooledConnectionHandler?
    var replayed = false
    private(set) var isDone = false
    private var deadline: Scheduled<Void>?

    init(request: UpstreamRequest, loop: any EventLoop) {
        self.request = request
        self.loop = loop
        self.head = loop.makePromise(of: UpstreamResponse.self)
        self.body = BodyStream()
        // The consumer giving up on the body (agent gone, size limit, retry) aborts the exchange; the
        // link is dropped when the exchange ends, so the two do not keep each other alive.
        body.attach(self)
    }

    /// From any thread: the caller or the body's consumer gave up.
    func bodyCancelled() { loop.execute { self.cancel() } }

    /// A request may be sent again after a reused connection closed unanswered only if repeating it
    /// cannot do anything twice.
    var replayable: Bool { !replayed && (request.method == .GET || request.method == .HEAD) }

    func armDeadline() {
        guard deadline == nil else { return }
        // Strong, not weak (a weak reference gives the exchange a side table: slow-path retains for
        // the rest of its life); the timer is cancelled when the exchange finishes or fails, which
        // ends the cycle, and if it fires the exchange fails.
        deadline = loop.scheduleTask(deadline: request.deadline) {
            self.abort(UpstreamError(.timeout, beforeSend: false, detail: "deadline exceeded"))
        }
    }

    /// The whole response has arrived.
    func finished() {
        isDone = true
        connection = nil
        deadline?.cancel()
        body.detach()
        body.finish()
    }

    func fail(_ error: UpstreamError) {
        guard !isDone else { return }
        isDone = true
        connection = nil
        deadline?.cancel()
        body.detach()
        head.fail(error)
        body.fail(error)
    }

    /// Ends the exchange early and closes its connection (which cannot be reused mid-response).
    func abort(_ error: UpstreamError) {
        guard !isDone else { return }
        let c = connection
        fail(error)
        c?.closeAfterAbort()
    }

    func cancel() { abort(UpstreamError(.cancelled, beforeSend: false, detail: "cancelled")) }
}
