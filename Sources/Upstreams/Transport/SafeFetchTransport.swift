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
/// each hop is then checked again.
///
/// Connections are kept alive and reused (its own `HTTP1ConnectionPool`), keyed by scheme, host, port
/// *and the checked address*: a reused connection goes to an address this request's own check just
/// passed, so pooling cannot carry a request past the guard or to an address another agent's grant
/// allowed. What a connection carries is the request's own fields only (credentials are per request),
/// as in any forward proxy's upstream pool. The pool remembers a bounded number of origins per event
/// loop (`maxOrigins`), few idle connections per origin (`maxIdlePerOrigin`), and closes idle ones
/// after `idleTimeout`.
public final class SafeFetchTransport: UpstreamTransport {
    let egress: EgressGuard
    let resolver: any HostResolver
    let pool: HTTP1ConnectionPool
    let maxRedirects: Int

    public init(
        egress: EgressGuard, resolver: any HostResolver = SystemResolver(), tls: TLSConfiguration, connectTimeout: Duration, maxRedirects: Int = 0,
        idleTimeout: Duration = .seconds(30), maxIdlePerOrigin: Int = 32, maxOrigins: Int = 256,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) throws {
        self.egress = egress
        self.resolver = resolver
        self.pool = try HTTP1ConnectionPool(
            connectTimeouts: [.httpFetch: connectTimeout], idleTimeout: idleTimeout, maxIdlePerOrigin: maxIdlePerOrigin, maxOriginsPerLoop: maxOrigins,
            tls: tls, group: group)
        self.maxRedirects = maxRedirects
    }

    /// Closes the idle connections.
    public func shutdown() { pool.shutdown() }

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
        try check(addresses, port: url.port, granted: granted)
        return addresses
    }

    /// Refuses if any address is refused: picking the "good" one would let a name mix internal targets in.
    private func check(_ addresses: [IPAddress], port: Int, granted: [CIDR]) throws(UpstreamError) {
        for ip in addresses {
            if let why = egress.refusal(ip, port: port, granted: granted) {
                throw UpstreamError(.egressDenied, beforeSend: true, detail: "destination is \(why)")
            }
        }
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

    /// A fetch of an IP-literal URL with no redirects to follow starts on the loop: its check needs no
    /// lookup, so no task is needed. (A name is resolved first, in `send`.)
    public func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? {
        guard maxRedirects == 0, let literal = IPAddress.parse(request.url.host) else { return nil }
        do { try check([literal], port: request.url.port, granted: request.egressAllow) } catch {
            return StartedCall(response: loop.makeFailedFuture(error), cancel: {})
        }
        return pool.start(request, on: loop, connectingTo: literal)
    }

    /// Sends on a pooled connection to the first checked address that takes one; a failure to connect
    /// (nothing sent) moves on to the next address, as the one-connection-per-fetch client did.
    private func exchange(_ request: UpstreamRequest, addresses: [IPAddress]) async throws(UpstreamError) -> UpstreamResponse {
        var last = UpstreamError(.unreachable, beforeSend: true, detail: "connect failed")
        for ip in addresses {
            do { return try await pool.send(request, connectingTo: ip) } catch {
                guard error.kind == .unreachable, error.beforeSend else { throw error }
                last = error
            }
        }
        throw last
    }
}
