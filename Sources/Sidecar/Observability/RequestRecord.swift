import Upstreams

/// Everything the access log line and the request metrics say about one request.
///
/// Filled in as the request moves through the stages; it holds no URL path or query, no body, no header
/// value and no credential, so nothing secret can reach a log line through it.
///
/// Kept in one `CopyOnWrite` box: the record is handed from stage to stage and captured by the
/// callbacks between them, and a copy of its two dozen fields was a 300-byte move and a retain and
/// release per string in it. Stages hand it on with `consume` where it is changed next, so the box is
/// not copied on the common path.
@dynamicMemberLookup
struct RequestRecord: Sendable {
    struct Fields: Sendable {
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
    }

    private var fields: CopyOnWrite<Fields>

    init(requestID: String, method: String, start: ContinuousClock.Instant) {
        fields = CopyOnWrite(Fields(requestID: requestID, method: method, start: start))
    }

    subscript<T>(dynamicMember key: KeyPath<Fields, T>) -> T { fields.value[keyPath: key] }

    subscript<T>(dynamicMember key: WritableKeyPath<Fields, T>) -> T {
        get { fields.value[keyPath: key] }
        _modify { yield &fields.value[keyPath: key] }
    }

    var toolLabel: String { self.tool?.rawValue ?? "none" }
    var actionLabel: String { self.action ?? "none" }
    var statusClass: String { self.status == 0 ? "none" : "\(self.status / 100)xx" }
}
