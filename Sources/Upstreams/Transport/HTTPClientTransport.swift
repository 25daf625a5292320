import AsyncHTTPClient
import NIOConcurrencyHelpers
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Connection settings of one tool's upstream client.
public struct UpstreamClientSettings: Sendable, Hashable {
    public var connectTimeout: Duration
    /// PEM bundle of CAs to trust instead of the system store (tests, private upstreams).
    public var caBundlePath: String?
    /// Offer HTTP/2 through ALPN (HTTP/1.1 is used when the upstream does not select h2).
    public var http2: Bool
    public var maxConnectionsPerHost: Int
    public var idleTimeout: Duration
    /// The HTTP proxy calls leave through (`upstream.proxy`); nil: straight to the upstream.
    public var proxy: UpstreamProxy?

    public init(
        connectTimeout: Duration = .seconds(5), caBundlePath: String? = nil, http2: Bool = true,
        maxConnectionsPerHost: Int = 256, idleTimeout: Duration = .seconds(60)
    ) {
        self.connectTimeout = connectTimeout
        self.caBundlePath = caBundlePath
        self.http2 = http2
        self.maxConnectionsPerHost = maxConnectionsPerHost
        self.idleTimeout = idleTimeout
    }
}

/// The live transport: one pooled async-http-client per tool (keep-alive, TLS, HTTP/2 via ALPN).
///
/// AHC's async API asks its event-loop group for `any()` loop, which is the *current* loop when the
/// caller runs on one. The proxy runs each connection's work on that connection's event loop, so
/// upstream connections are taken from (and created on) the inbound connection's loop: no thread hops.
public final class HTTPClientTransport: UpstreamTransport {
    private let clients: [Tool: HTTPClient]
    private let logger: Logger
    private let eventLoopGroup: any EventLoopGroup

    public init(
        settings: [Tool: UpstreamClientSettings], eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "upstream")
    ) throws {
        var clients: [Tool: HTTPClient] = [:]
        for tool in Tool.allCases {
            let s = settings[tool] ?? UpstreamClientSettings()
            var tls = TLSConfiguration.makeClientConfiguration()
            if let path = s.caBundlePath { tls.trustRoots = .file(path) }
            var config = HTTPClient.Configuration(
                tlsConfiguration: tls, redirectConfiguration: .disallow,
                timeout: .init(connect: TimeAmount(s.connectTimeout), read: nil),
                connectionPool: .init(idleTimeout: TimeAmount(s.idleTimeout)),
                proxy: s.proxy?.clientProxy, ignoreUncleanSSLShutdown: false, decompression: .disabled)
            config.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = s.maxConnectionsPerHost
            // Our own retry layer decides about retries; a refused connect must fail fast.
            config.connectionPool.retryConnectionEstablishment = false
            config.httpVersion = s.http2 ? .automatic : .http1Only
            clients[tool] = HTTPClient(eventLoopGroup: eventLoopGroup, configuration: config, backgroundActivityLogger: logger)
        }
        self.clients = clients
        self.logger = logger
        self.eventLoopGroup = eventLoopGroup
    }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        let outgoing: HTTPClient.Request
        do {
            outgoing = try HTTPClient.Request(
                url: request.url.description, method: request.method, headers: request.headers,
                body: request.body.map { .byteBuffer($0) })
        } catch {
            throw UpstreamError(.unreachable, beforeSend: true, detail: "invalid upstream URL")
        }
        // The delegate API (rather than AHC's async one) lets the response be consumed without a task
        // switch per part, and pins the upstream connection to this event loop explicitly.
        let eventLoop = MultiThreadedEventLoopGroup.currentEventLoop ?? eventLoopGroup.any()
        let delegate = StreamingResponseDelegate(eventLoop: eventLoop)
        let task = clients[request.tool]!.execute(
            request: outgoing, delegate: delegate, eventLoop: .delegateAndChannel(on: eventLoop),
            deadline: request.deadline, logger: nil)
        delegate.attach(task)
        do {
            return try await withTaskCancellationHandler {
                try await delegate.head.futureResult.get()
            } onCancel: {
                task.cancel()
            }
        } catch {
            throw Self.classify(error)
        }
    }

    public func shutdown() async {
        for client in clients.values { try? await client.shutdown() }
    }

    /// Maps client errors to transport failure kinds, by type, never by message text.
    public static func classify(_ error: any Error) -> UpstreamError {
        if let e = error as? UpstreamError { return e }
        if let e = error as? HTTPClientError {
            switch e {
            case .connectTimeout, .tlsHandshakeTimeout, .getConnectionFromPoolTimeout:
                return UpstreamError(.unreachable, beforeSend: true, detail: "connect timeout")
            case .deadlineExceeded, .readTimeout, .writeTimeout:
                return UpstreamError(.timeout, beforeSend: false, detail: "deadline exceeded")
            case .cancelled, .requestStreamCancelled:
                return UpstreamError(.cancelled, beforeSend: false, detail: "cancelled")
            case .remoteConnectionClosed:
                return UpstreamError(.protocolError, beforeSend: false, detail: "connection closed by upstream")
            case .invalidURL, .emptyHost, .emptyScheme:
                return UpstreamError(.unreachable, beforeSend: true, detail: "invalid upstream URL")
            // The egress proxy (`upstream.proxy`) did not open the tunnel: nothing reached the upstream.
            case .proxyAuthenticationRequired:
                return UpstreamError(.unreachable, beforeSend: true, detail: "the egress proxy refused the sidecar's proxy credentials (407)")
            case .invalidProxyResponse:
                return UpstreamError(.unreachable, beforeSend: true, detail: "the egress proxy did not open a tunnel to the upstream")
            case .httpProxyHandshakeTimeout:
                return UpstreamError(.unreachable, beforeSend: true, detail: "the egress proxy did not answer CONNECT in time")
            default:
                return UpstreamError(.protocolError, beforeSend: false, detail: "client error \(e.shortDescription)")
            }
        }
        if error is CancellationError { return UpstreamError(.cancelled, beforeSend: false, detail: "cancelled") }
        if TLSFailure.isTLS(error) {
            // Said in words: an untrusted certificate (upstream.ca_bundle) or one for another name.
            return UpstreamError(.unreachable, beforeSend: true, detail: "TLS: \(TLSFailure.reason(error))")
        }
        if error is NIOConnectionError || error is SocketAddressError {
            return UpstreamError(.unreachable, beforeSend: true, detail: String(describing: type(of: error)))
        }
        if let e = error as? ChannelError {
            if case .connectTimeout = e { return UpstreamError(.unreachable, beforeSend: true, detail: "connect timeout") }
            return UpstreamError(.protocolError, beforeSend: false, detail: "channel error")
        }
        if let e = error as? IOError {
            return UpstreamError(.unreachable, beforeSend: true, detail: "io error \(e.errnoCode)")
        }
        if error is HTTPParserError {
            return UpstreamError(.protocolError, beforeSend: false, detail: "malformed upstream response")
        }
        return UpstreamError(.protocolError, beforeSend: false, detail: String(describing: type(of: error)))
    }
}

/// Receives one upstream response on the connection's event loop: resolves `head` with an
/// `UpstreamResponse` whose body is a `BodyStream` fed by the following parts.
final class StreamingResponseDelegate: HTTPClientResponseDelegate, @unchecked Sendable {
    typealias Response = Void

    let head: EventLoopPromise<UpstreamResponse>
    let body: BodyStream
    private let canceller = TaskCanceller()

    /// Aborts the upstream call when the body's consumer gives up (agent gone, size limit). It holds
    /// only the task, so the body does not keep the delegate alive.
    private final class TaskCanceller: BodyStreamOwner, @unchecked Sendable {
        let task = NIOLockedValueBox<HTTPClient.Task<Void>?>(nil)
        func bodyCancelled() { task.withLockedValue { $0?.cancel() } }
    }

    init(eventLoop: any EventLoop) {
        head = eventLoop.makePromise(of: UpstreamResponse.self)
        body = BodyStream()
        body.attach(canceller)
    }

    func attach(_ task: HTTPClient.Task<Void>) {
        canceller.task.withLockedValue { $0 = task }
    }

    func didReceiveHead(task: HTTPClient.Task<Void>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        if let invalid = UpstreamError.invalidStatus(head.status) {
            // Failing the returned future makes async-http-client abandon the request and its connection.
            return task.eventLoop.makeFailedFuture(invalid)
        }
        self.head.succeed(UpstreamResponse(status: head.status, headers: head.headers, body: .stream(body)))
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Void>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        body.append(buffer, on: task.eventLoop)
    }

    func didReceiveError(task: HTTPClient.Task<Void>, _ error: any Error) {
        head.fail(error)
        body.fail(HTTPClientTransport.classify(error))
    }

    func didFinishRequest(task: HTTPClient.Task<Void>) throws {
        body.finish()
    }
}

extension UpstreamProxy {
    /// The proxy as async-http-client takes it (its credentials as `Proxy-Authorization: Basic`).
    public var clientProxy: HTTPClient.Configuration.Proxy {
        .server(host: host, port: port, authorization: username.map { .basic(username: $0, password: password ?? "") })
    }
}
