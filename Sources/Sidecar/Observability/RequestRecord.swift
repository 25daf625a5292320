import Upstreams

/// Everything the access log line and the request metrics say about one request.
///
/// Filled in as the request moves through the stages; it holds no URL path or query, no body, no header
/// value and no credential, so nothing secret can reach a log line through it.
///
/// Copy-on-write over one box: the record is handed from stage to stage and captured by the callbacks
/// between them (the pipeline's, the resilience call's, the handler's), and a copy of its two dozen
/// fields was a 300-byte move and a retain and release per string in it; the box is one. A stage that
/// changes a record another still holds gets its own copy, so it behaves as the plain struct it was.
struct RequestRecord: Sendable {
    private final class Fields: @unchecked Sendable {  // changed only while uniquely referenced
        var requestID: String
        var entry: Entry? = nil
        var method: String
        var tool: Tool? = nil
        var action: String? = nil
        var status: Int = 0
        var outcome: String = "ok"
        var upstreamStatus: Int? = nil
        var upstreamHost: String? = nil
        var agentID: String? = nil
        var tokenID: String? = nil
        var tokenExpiresAt: Int64? = nil
        var cache: String? = nil
        var retries: Int = 0
        var breaker: String? = nil
        var chaos: String? = nil
        var mock: Bool = false
        var bytesIn: Int = 0
        var bytesOut: Int = 0
        var upstreamStart: ContinuousClock.Instant? = nil
        var upstreamDuration: Duration? = nil
        var totalDuration: Duration? = nil
        let start: ContinuousClock.Instant

        init(requestID: String, method: String, start: ContinuousClock.Instant) {
            self.requestID = requestID
            self.method = method
            self.start = start
        }

        func copy() -> Fields {
            let c = Fields(requestID: requestID, method: method, start: start)
            c.entry = entry
            c.tool = tool
            c.action = action
            c.status = status
            c.outcome = outcome
            c.upstreamStatus = upstreamStatus
            c.upstreamHost = upstreamHost
            c.agentID = agentID
            c.tokenID = tokenID
            c.tokenExpiresAt = tokenExpiresAt
            c.cache = cache
            c.retries = retries
            c.breaker = breaker
            c.chaos = chaos
            c.mock = mock
            c.bytesIn = bytesIn
            c.bytesOut = bytesOut
            c.upstreamStart = upstreamStart
            c.upstreamDuration = upstreamDuration
            c.totalDuration = totalDuration
            return c
        }
    }

    private var fields: Fields

    private mutating func unshare() {
        if !isKnownUniquelyReferenced(&fields) { fields = fields.copy() }
    }

    var requestID: String {
        get { fields.requestID }
        _modify { unshare(); yield &fields.requestID }
    }
    var entry: Entry? {
        get { fields.entry }
        _modify { unshare(); yield &fields.entry }
    }
    var method: String {
        get { fields.method }
        _modify { unshare(); yield &fields.method }
    }
    var tool: Tool? {
        get { fields.tool }
        _modify { unshare(); yield &fields.tool }
    }
    var action: String? {
        get { fields.action }
        _modify { unshare(); yield &fields.action }
    }
    var status: Int {
        get { fields.status }
        _modify { unshare(); yield &fields.status }
    }
    /// `ok`, or the problem code of the refusal or failure.
    var outcome: String {
        get { fields.outcome }
        _modify { unshare(); yield &fields.outcome }
    }
    var upstreamStatus: Int? {
        get { fields.upstreamStatus }
        _modify { unshare(); yield &fields.upstreamStatus }
    }
    var upstreamHost: String? {
        get { fields.upstreamHost }
        _modify { unshare(); yield &fields.upstreamHost }
    }
    /// The authenticated agent and token id (never the token).
    var agentID: String? {
        get { fields.agentID }
        _modify { unshare(); yield &fields.agentID }
    }
    var tokenID: String? {
        get { fields.tokenID }
        _modify { unshare(); yield &fields.tokenID }
    }
    /// Set when the token is near expiry: the response then recommends rotation.
    var tokenExpiresAt: Int64? {
        get { fields.tokenExpiresAt }
        _modify { unshare(); yield &fields.tokenExpiresAt }
    }
    /// `HIT`, `MISS` or `STALE` for cacheable calls.
    var cache: String? {
        get { fields.cache }
        _modify { unshare(); yield &fields.cache }
    }
    var retries: Int {
        get { fields.retries }
        _modify { unshare(); yield &fields.retries }
    }
    /// `open` when an open breaker answered.
    var breaker: String? {
        get { fields.breaker }
        _modify { unshare(); yield &fields.breaker }
    }
    /// The chaos fault injected, if any.
    var chaos: String? {
        get { fields.chaos }
        _modify { unshare(); yield &fields.chaos }
    }
    var mock: Bool {
        get { fields.mock }
        _modify { unshare(); yield &fields.mock }
    }
    var bytesIn: Int {
        get { fields.bytesIn }
        _modify { unshare(); yield &fields.bytesIn }
    }
    var bytesOut: Int {
        get { fields.bytesOut }
        _modify { unshare(); yield &fields.bytesOut }
    }
    var upstreamStart: ContinuousClock.Instant? {
        get { fields.upstreamStart }
        _modify { unshare(); yield &fields.upstreamStart }
    }
    var upstreamDuration: Duration? {
        get { fields.upstreamDuration }
        _modify { unshare(); yield &fields.upstreamDuration }
    }
    var totalDuration: Duration? {
        get { fields.totalDuration }
        _modify { unshare(); yield &fields.totalDuration }
    }
    var start: ContinuousClock.Instant { fields.start }

    init(requestID: String, method: String, start: ContinuousClock.Instant) {
        fields = Fields(requestID: requestID, method: method, start: start)
    }

    var toolLabel: String { tool?.rawValue ?? "none" }
    var actionLabel: String { action ?? "none" }
    var statusClass: String { status == 0 ? "none" : "\(status / 100)xx" }
}
