import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Policy
import Synchronization

/// The admin port's request context: Hummingbird's, plus the client's address (for the per-address rate
/// limit) and when its connection closes (a long answer — a run's event stream — stops then, instead
/// of noticing at its next write and holding its place until then).
struct AdminContext: RequestContext, RemoteAddressRequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: SocketAddress?
    let connectionClosed: EventLoopFuture<Void>

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
        connectionClosed = source.channel.closeFuture
    }
}

/// `admin:` settings that guard the whole control plane.
struct AdminGateSettings: Sendable, Hashable {
    /// Requests per second per client address (GCRA), and the burst allowed at once.
    var ratePerSecond = 100
    var burst = 200
    /// Browser origins allowed to call the admin API (CORS); none by default.
    var corsOrigins: [String] = []
}

/// In front of every admin route but the probes (`/healthz`, `/readyz`, `/metrics`): a per-client-address
/// rate limit (429 `admin_rate_limited` with `Retry-After`), and CORS for the configured origins only —
/// a preflight from any other origin is 403 `origin_not_allowed`, and its answers carry no CORS headers,
/// so a browser page elsewhere cannot read them.
struct AdminGate<Context: RequestContext & RemoteAddressRequestContext>: RouterMiddleware {
    let settings: AdminGateSettings
    let limiter: AddressLimiter
    static var exempt: Set<String> { ["/healthz", "/readyz", "/metrics"] }

    init(settings: AdminGateSettings, now: @escaping @Sendable () -> Int64 = unixMillis) {
        self.settings = settings
        limiter = AddressLimiter(rate: settings.ratePerSecond, burst: settings.burst, now: now)
    }

    /// Every answer of this port that is not a route's own is a problem too: Hummingbird's router answers a
    /// path or method it has no route for with an empty 404, which a client cannot tell from a missing run.
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await gated(request, context: context, next: next)
        } catch let error as HTTPError where error.status == .notFound {
            return AdminProblem.response(Self.noRoute)
        }
    }

    static var noRoute: GatewayError {
        GatewayError(.routeNotFound, "no admin route for this method and path (/healthz, /readyz, /metrics, /ca.pem, /api/...)")
    }

    private func gated(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if Self.exempt.contains(request.uri.path) { return try await next(request, context) }
        let address = context.remoteAddress?.ipAddress ?? "unknown"
        if let retry = limiter.refusal(address) {
            return AdminProblem.response(
                GatewayError(.adminRateLimited, "too many admin requests from this address; retry in \(retry) s", headers: [("Retry-After", String(retry))]))
        }
        // Fields this port reads as one value, refused when repeated or (the agent's own) list-valued —
        // the proxy's rule (`SingleValuedFields`): a check of the first line must not pass what a second
        // contradicts.
        if let problem = SingleValuedFields.problem(
            in: request.headers.lazy.map { ($0.name.canonicalName, $0.value) }, authorization: true, contentType: true,
            others: ["last-event-id", "origin"])
        {
            return AdminProblem.response(problem)
        }
        let origin = request.headers[.origin]
        let allowed = origin.map { settings.corsOrigins.contains($0) } ?? false
        if request.method == .options, request.headers[.accessControlRequestMethod] != nil {
            guard allowed, let origin else {
                return AdminProblem.response(GatewayError(.originNotAllowed, "this origin may not call the admin API (admin.cors_origins)"))
            }
            var response = Response(status: .noContent)
            response.headers[.accessControlAllowMethods] = "GET, POST, PUT, OPTIONS"
            response.headers[.accessControlAllowHeaders] = "Authorization, Content-Type, Last-Event-ID"
            response.headers[.accessControlMaxAge] = "600"
            Self.allow(origin, &response)
            return response
        }
        var response = try await next(request, context)
        if allowed, let origin { Self.allow(origin, &response) }
        return response
    }

    static func allow(_ origin: String, _ response: inout Response) {
        response.headers[.accessControlAllowOrigin] = origin
        response.headers[.vary] = "Origin"
    }
}

/// One GCRA per client address, in memory; forgets addresses idle past their burst (bounded at 10 000).
final class AddressLimiter: Sendable {
    private let gcra: GCRA
    private let tats = Mutex<[String: Double]>([:])
    private let now: @Sendable () -> Int64

    init(rate: Int, burst: Int, now: @escaping @Sendable () -> Int64) {
        gcra = GCRA(limit: max(1, rate), periodMilliseconds: 1000, burst: max(1, burst))
        self.now = now
    }

    /// Seconds to wait, or nil when the request may pass.
    func refusal(_ address: String) -> Int? {
        let t = Double(now())
        return tats.withLock { tats in
            if tats.count > 10_000 { tats = tats.filter { $0.value > t } }
            let outcome = gcra.attempt(now: t, tat: tats[address])
            guard outcome.allowed else { return max(1, Int((outcome.retryAfter / 1000).rounded(.up))) }
            tats[address] = outcome.tat
            return nil
        }
    }
}
