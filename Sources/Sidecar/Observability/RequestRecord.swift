import Upstreams

/// Everything the access log line and the request metrics say about one request.
///
/// Filled in as the request moves through the stages; it holds no URL path or query, no body, no header
/// value and no credential, so nothing secret can reach a log line through it.
struct RequestRecord: Sendable {
    var requestID: String
    var entry: Entry?
    var method: String
    var tool: Tool?
    var action: String?
    var status: Int = 0
    /// `ok`, or the problem code of the refusal or failure.
    var outcome: String = "ok"
    var upstreamStatus: Int?
    var upstreamHost: String?
    /// The authenticated agent and token id (never the token).
    var agentID: String?
    var tokenID: String?
    /// Set when the token is near expiry: the response then recommends rotation.
    var tokenExpiresAt: Int64?
    /// `HIT`, `MISS` or `STALE` for cacheable calls.
    var cache: String?
    var retries = 0
    /// `open` when an open breaker answered.
    var breaker: String?
    /// The chaos fault injected, if any.
    var chaos: String?
    var mock = false
    var bytesIn = 0
    var bytesOut = 0
    let start: ContinuousClock.Instant
    var upstreamStart: ContinuousClock.Instant?
    var upstreamDuration: Duration?
    var totalDuration: Duration?

    init(requestID: String, method: String, start: ContinuousClock.Instant) {
        self.requestID = requestID
        self.method = method
        self.start = start
    }

    var toolLabel: String { tool?.rawValue ?? "none" }
    var actionLabel: String { action ?? "none" }
    var statusClass: String { status == 0 ? "none" : "\(status / 100)xx" }
}
