import Hummingbird
import NIOCore
import Upstreams

/// The admin/control port (default 127.0.0.1:9090), kept apart from the data path as Envoy keeps its
/// admin port apart. Health, readiness and metrics are open; control routes require the admin token.
struct AdminRoutes: Sendable {
    let metrics: GatewayMetrics
    let readiness: Readiness
    var redis: RedisClient? = nil
    var identity: IdentityState? = nil
    /// The interception CA certificate(s), public: agents fetch it to trust intercepted tunnels.
    var caPEM: String? = nil

    func register(on router: Router<AdminContext>) {
        router.get("healthz") { _, _ in
            Self.json(["status": "ok"], status: .ok)
        }
        router.get("readyz") { _, _ in
            let ready = readiness.isReady
            var body: [String: JSONValue] = ["status": .string(ready ? "ready" : (readiness.isDraining ? "draining" : "starting"))]
            // Redis is reported but never makes the sidecar unready: without it the failure policy
            // answers (local limits or 503 state_unavailable), which is better than no sidecar at all.
            if let redis { body["redis"] = .string(await redis.ping() ? "up" : "down (failure policy active)") }
            // A store that lost its data is reported, not made a reason to be unready: the last good
            // snapshot keeps every revocation in force meanwhile.
            if let identity, redis != nil { body["identity_store"] = .string(identity.storeHealth.text) }
            return Self.json(.object(body), status: ready ? .ok : .serviceUnavailable)
        }
        router.get("ca.pem") { _, _ in
            guard let caPEM else {
                return AdminProblem.response(GatewayError(.routeNotFound, "interception is off (intercept.enabled: false)"))
            }
            return Response(
                status: .ok, headers: [.contentType: "application/x-pem-file", .cacheControl: "no-cache"],
                body: .init(byteBuffer: ByteBuffer(string: caPEM)))
        }
        router.get("metrics") { _, _ in
            let bytes = metrics.exposition()
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: value.serialized)))
    }
}
