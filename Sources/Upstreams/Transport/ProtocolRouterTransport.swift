import NIOCore

/// Picks the upstream client by what the origin can speak: TLS origins offered HTTP/2 go to
/// async-http-client (ALPN, multiplexing); every HTTP/1.1-only origin — cleartext, or TLS with
/// `upstream.http2: false` — goes to the sidecar's own per-loop keep-alive pool, which costs a fraction
/// of AHC's CPU per request. Through an egress proxy (`upstream.proxy`) every call goes to AHC, which
/// tunnels with `CONNECT` (HTTP/1.1 only unless `upstream.http2` is on).
public struct ProtocolRouterTransport: UpstreamTransport {
    private let http1: any UpstreamTransport
    private let http2Capable: any UpstreamTransport
    private let offerHTTP2: Bool
    private let proxied: Bool

    public init(http1: any UpstreamTransport, http2Capable: any UpstreamTransport, offerHTTP2: Bool, proxied: Bool = false) {
        self.http1 = http1
        self.http2Capable = http2Capable
        self.offerHTTP2 = offerHTTP2
        self.proxied = proxied
    }

    /// True when the request goes through the HTTP/1.1 pool.
    public func usesHTTP1Pool(_ url: TargetURL) -> Bool { !proxied && !(offerHTTP2 && url.scheme == "https") }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        usesHTTP1Pool(request.url) ? try await http1.send(request) : try await http2Capable.send(request)
    }

    public func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? {
        usesHTTP1Pool(request.url) ? http1.start(request, on: loop) : http2Capable.start(request, on: loop)
    }
}
