import NIOCore
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
        /// The upstream's own id of the call (`X-Request-Id`), when it is an id (`HeaderRules.upstreamRequestID`).
        var upstreamRequestID: String?
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
        /// What the idempotency ledger decided for a side-effecting call (`proceed`, `replay`, ...).
        var idempotency: String?
        /// For the call's receipt (only when receipts are on): SHA-256 of the request (method, target,
        /// body) and of the answer's body as sent, and the policy that decided it.
        var requestDigest: SHA256Value?
        var responseDigest: SHA256Value?
        var policyHash: String?
        /// The approval the call spent or is waiting for.
        var approvalID: String?
        /// The chaos fault injected, if any.
        var chaos: String?
        var mock = false
        /// The run the call named, and its handle once the call is of a run (admission, kill switch).
        var runID: String?
        var runCall: RunCall?
        var bytesIn = 0
        var bytesOut = 0
        let start: MonotonicInstant
        var upstreamStart: MonotonicInstant?
        var upstreamDuration: Duration?
        var totalDuration: Duration?

        init(requestID: String, method: String, start: MonotonicInstant) {
            self.requestID = requestID
            self.method = method
            self.start = start
        }
    }

    private var fields: CopyOnWrite<Fields>

    init(requestID: String, method: String, start: MonotonicInstant) {
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

/// A monotonic instant as a plain count of nanoseconds (NIO's uptime clock).
///
/// `ContinuousClock.Instant` is a resilient standard-library type: a record holding one has a layout
/// known only at run time, so every copy and destroy of the record's fields went through the runtime's
/// generic value witnesses. This one is a `UInt64`.
struct MonotonicInstant: Sendable, Comparable {
    let nanoseconds: UInt64

    static var now: MonotonicInstant { MonotonicInstant(nanoseconds: NIODeadline.now().uptimeNanoseconds) }

    static func - (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Duration {
        .nanoseconds(Int64(lhs.nanoseconds) - Int64(rhs.nanoseconds))
    }

    static func < (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }
}
