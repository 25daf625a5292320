import Policy
import Prometheus
import Synchronization
import Upstreams

/// The sidecar's Prometheus metrics, all created through the registry with HELP text (so
/// `promtool check metrics` passes) and with labels from closed sets only.
///
/// Every labelled series of the hot path is created up front and kept in immutable dictionaries, so
/// recording a request takes no registry lock.
public final class GatewayMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    public static let version = "0.4.0"

    /// Per request: indexed by tool (`toolLabels` order), then action, then status class.
    private let requests: [[[Prometheus.Counter]]]
    /// Indexed by tool, then keyed by outcome.
    private let outcomes: [[String: Prometheus.Counter]]
    private let requestDuration: [DurationHistogram]
    private let upstreamDuration: [DurationHistogram]
    let inFlight: Gauge
    private let tokenValidations: [String: Prometheus.Counter]
    private let tokenExpirations: Prometheus.Counter
    let tokenGenerations: Prometheus.Counter
    let agentCreations: Prometheus.Counter
    private let securityEvents: [String: Prometheus.Counter]
    private let stateFallbacks: [String: Prometheus.Counter]
    /// Limit admissions decided from leased units (`local`) or by a Redis round trip (`store`).
    let leaseLocal: Prometheus.Counter
    let leaseStore: Prometheus.Counter
    let policyReloadFailures: Prometheus.Counter
    private let idempotencyDecisions: [String: Prometheus.Counter]
    private let approvalOutcomes: [String: Prometheus.Counter]
    private let lowHeadroom: [String: Prometheus.Counter]
    private let policyDenials: [String: Prometheus.Counter]
    private let policyWouldDeny: [String: Prometheus.Counter]
    private let rateLimitDecisions: [String: Prometheus.Counter]
    private let redisErrors: Prometheus.Counter
    /// Access-log lines lost because the log output did not keep up (`BufferedLineWriter`).
    let accessLogDrops: Prometheus.Counter
    private let redisLatency: DurationHistogram
    static let denialKinds = PolicyDenial.Kind.allCases.map(\.rawValue)
    private let breakerStates: [String: Gauge]
    private let breakerTransitions: [String: Prometheus.Counter]
    private let breakerFastFails: [String: Prometheus.Counter]
    private let retries: [String: Prometheus.Counter]
    private let retrySuccesses: [String: Prometheus.Counter]
    private let retryBudgetExhaustions: [String: Prometheus.Counter]
    private let cacheHits: [String: Prometheus.Counter]
    private let cacheMisses: [String: Prometheus.Counter]
    private let cacheStales: [String: Prometheus.Counter]
    private let cacheSharedHits: [String: Prometheus.Counter]
    private let cacheUndecodables: [String: Prometheus.Counter]
    private let cacheBytesGauge: Gauge
    /// Request body bytes held across connections, read when the metrics are scraped.
    private let bufferedBodiesGauge: Gauge
    private let bufferedBodies = Mutex<(@Sendable () -> Int)?>(nil)
    private let bulkheadQueues: [String: Gauge]
    private let bulkheadRejections: [String: Prometheus.Counter]
    private let chaosInjected: [String: Prometheus.Counter]
    static let chaosKinds = ["error", "rate_limit", "timeout", "latency", "truncate"]
    /// The shared store lost its identity data (epoch gone or changed), and whether it is still being restored.
    let identityDataLoss: Prometheus.Counter
    let identityDegraded: Gauge
    private let tunnels: [String: Prometheus.Counter]
    let tunnelsOpen: Gauge
    /// Per listener (`proxy`, `admin`): connections open, and those closed at once for the cap.
    private let connectionsOpen: [String: Gauge]
    private let connectionsRefused: [String: Prometheus.Counter]
    let leafCertificates: Gauge
    let leavesMinted: Prometheus.Counter
    static let tunnelModes = ["intercept", "passthrough"]
    let runs: RunMetrics
    /// How a `CONNECT` ended up: opened, refused before the `200` (a problem answer), or failed after it.
    static let tunnelResults = ["opened", "refused", "sni_mismatch", "no_application_protocol", "handshake_failed", "handshake_timeout", "upstream_unreachable"]

    static let tokenResults = [
        "ok", "cached", "token_missing", "token_malformed", "token_invalid", "token_expired", "token_revoked",
        "agent_disabled", "agent_unknown", "provenance_mismatch",
    ]
    static let securityKinds = ["provenance_mismatch", "revoked_use", "forgery", "scope_violation", "admin_auth_failure", "exfiltration", "canary", "response_not_owned"]

    static let toolLabels = Tool.allCases.map(\.rawValue) + ["none"]
    /// `ok`, every problem code, and `client_closed` (the agent went away mid-response).
    static let outcomes = ["ok", "client_closed"] + GatewayError.catalog.map(\.code)
    static let statusClasses = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"]
    static let buckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120),
    ]

    /// The series a listener's connection cap keeps (`proxy` or `admin`).
    func connectionSeries(listener: String) -> (open: Gauge, refused: Prometheus.Counter) {
        (connectionsOpen[listener]!, connectionsRefused[listener]!)
    }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var requests: [[[Prometheus.Counter]]] = []
        var outcomes: [[String: Prometheus.Counter]] = []
        var requestDuration: [DurationHistogram] = []
        var upstreamDuration: [DurationHistogram] = []
        let requestsName = MetricNameDescriptor(
            namespace: "gateway", metricName: "requests", unitName: "total",
            helpText: "Requests handled by the proxy listener, by tool, action and status class.")
        let outcomesName = MetricNameDescriptor(
            namespace: "gateway", metricName: "outcomes", unitName: "total",
            helpText: "Requests by outcome: ok or the stable problem code of the refusal or failure.")
        let durationName = MetricNameDescriptor(
            namespace: "gateway", metricName: "request_duration", unitName: "seconds",
            helpText: "Time from the request head to the last response byte, by tool.")
        let upstreamName = MetricNameDescriptor(
            namespace: "gateway", metricName: "upstream_duration", unitName: "seconds",
            helpText: "Time from sending upstream to the last upstream byte, by tool.")
        for tool in Self.toolLabels {
            requests.append(Self.actionLabels(tool).map { action in
                Self.statusClasses.map { cls in
                    registry.makeCounter(descriptor: requestsName, labels: [("tool", tool), ("action", action), ("code", cls)])
                }
            })
            outcomes.append(Dictionary(uniqueKeysWithValues: Self.outcomes.map { outcome in
                (outcome, registry.makeCounter(descriptor: outcomesName, labels: [("tool", tool), ("outcome", outcome)]))
            }))
            requestDuration.append(registry.makeDurationHistogram(descriptor: durationName, labels: [("tool", tool)], buckets: Self.buckets))
            upstreamDuration.append(registry.makeDurationHistogram(descriptor: upstreamName, labels: [("tool", tool)], buckets: Self.buckets))
        }
        self.requests = requests
        self.outcomes = outcomes
        self.requestDuration = requestDuration
        self.upstreamDuration = upstreamDuration
        self.inFlight = registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "requests_in_flight", unitName: "",
                helpText: "Requests currently being handled by the proxy listener."))
        let validations = MetricNameDescriptor(
            namespace: "gateway", metricName: "token_validations", unitName: "total",
            helpText: "Agent token checks by result: ok (verified), cached, or the refusal code.")
        tokenValidations = Self.counters(registry, validations, label: "result", values: Self.tokenResults)
        tokenExpirations = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "token_expirations", unitName: "total",
                helpText: "Requests refused because the agent token had expired."))
        tokenGenerations = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "token_generations", unitName: "total",
                helpText: "Agent tokens minted by the control API."))
        agentCreations = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "agent_creations", unitName: "total",
                helpText: "Agents registered through the control API."))
        let security = MetricNameDescriptor(
            namespace: "gateway", metricName: "security_events", unitName: "total",
            helpText: "Security-relevant refusals: forged tokens, revoked-token use, provenance mismatches, scope violations, admin auth failures.")
        securityEvents = Self.counters(registry, security, label: "kind", values: Self.securityKinds)
        let fallback = MetricNameDescriptor(
            namespace: "gateway", metricName: "state_fallback", unitName: "total",
            helpText: "Limit decisions made under the failure policy because the shared state was unavailable, by limit class.")
        stateFallbacks = Self.counters(registry, fallback, label: "class", values: ["rate", "quota", "budget", "concurrency"])
        let leaseDecisions = MetricNameDescriptor(
            namespace: "gateway", metricName: "limit_lease_decisions", unitName: "total",
            helpText: "Requests with Redis-shared limits admitted from units this sidecar leased (where=local) or decided by a Redis round trip (where=store).")
        leaseLocal = registry.makeCounter(descriptor: leaseDecisions, labels: [("where", "local")])
        leaseStore = registry.makeCounter(descriptor: leaseDecisions, labels: [("where", "store")])
        let idempotency = MetricNameDescriptor(
            namespace: "gateway", metricName: "idempotency_decisions", unitName: "total",
            helpText: "Side-effecting calls by what the idempotency ledger decided (proceed, replay, in_flight, outcome_unknown, conflict, store_error).")
        idempotencyDecisions = Self.counters(registry, idempotency, label: "result", values: Self.idempotencyResults)
        let headroom = MetricNameDescriptor(
            namespace: "gateway", metricName: "limit_low_headroom", unitName: "total",
            helpText: "Calls admitted with under a tenth of their quota or token budget left (class=quota|budget): exhaustion is near.")
        lowHeadroom = Self.counters(registry, headroom, label: "class", values: ["quota", "budget"])
        let approvals = MetricNameDescriptor(
            namespace: "gateway", metricName: "approval_checks", unitName: "total",
            helpText: "Calls that needed approval, by what they met: granted, pending (held, then refused), denied, expired.")
        approvalOutcomes = Self.counters(registry, approvals, label: "result", values: ["granted", "pending", "denied", "expired", "too_many_pending"])
        policyReloadFailures = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "policy_reload_failures", unitName: "total",
                helpText: "Policy documents rejected on reload; the previous policy stayed active."))
        let denials = MetricNameDescriptor(
            namespace: "gateway", metricName: "policy_denials", unitName: "total", helpText: "Calls refused by policy, by kind.")
        policyDenials = Self.counters(registry, denials, label: "kind", values: Self.denialKinds)
        let would = MetricNameDescriptor(
            namespace: "gateway", metricName: "policy_would_deny", unitName: "total",
            helpText: "Calls a report-mode rule would have refused (allowed), by kind.")
        policyWouldDeny = Self.counters(registry, would, label: "kind", values: Self.denialKinds)
        let decisions = MetricNameDescriptor(
            namespace: "gateway", metricName: "ratelimit_decisions", unitName: "total",
            helpText: "Rate-limit decisions: allowed, limited, or would_limit (report mode).")
        rateLimitDecisions = Self.counters(registry, decisions, label: "result", values: ["allowed", "limited", "would_limit"])
        accessLogDrops = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "access_log_dropped_lines", unitName: "total",
                helpText: "Log lines (access lines and others) dropped because standard output did not keep up (its buffer was full)."))
        redisErrors = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "redis_errors", unitName: "total", helpText: "Redis commands that failed or timed out."))
        redisLatency = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "redis_latency", unitName: "seconds", helpText: "Redis command round trips."),
            buckets: [.microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                      .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250)])
        let tools = Tool.allCases.map(\.rawValue)
        func perTool<M>(_ make: (String) -> M) -> [String: M] { Dictionary(uniqueKeysWithValues: tools.map { ($0, make($0)) }) }
        let bState = MetricNameDescriptor(namespace: "gateway", metricName: "breaker_state", unitName: "",
            helpText: "Circuit breaker state per tool: 0 closed, 1 half-open, 2 open (http_fetch: the worst of its per-host breakers).")
        breakerStates = perTool { registry.makeGauge(descriptor: bState, labels: [("tool", $0)]) }
        let bTrans = MetricNameDescriptor(namespace: "gateway", metricName: "breaker_transitions", unitName: "total",
            helpText: "Circuit breaker transitions, by tool and new state.")
        var transitions: [String: Prometheus.Counter] = [:]
        for t in tools { for st in ["closed", "half_open", "open"] { transitions["\(t)|\(st)"] = registry.makeCounter(descriptor: bTrans, labels: [("tool", t), ("to", st)]) } }
        breakerTransitions = transitions
        let bFast = MetricNameDescriptor(namespace: "gateway", metricName: "breaker_fastfail", unitName: "total",
            helpText: "Calls refused by an open circuit breaker without touching the network.")
        breakerFastFails = perTool { registry.makeCounter(descriptor: bFast, labels: [("tool", $0)]) }
        let rTotal = MetricNameDescriptor(namespace: "gateway", metricName: "retries", unitName: "total", helpText: "Upstream retries, by tool and reason.")
        var r: [String: Prometheus.Counter] = [:]
        for t in tools { for reason in RetryPolicy.Reason.allCases { r["\(t)|\(reason.rawValue)"] = registry.makeCounter(descriptor: rTotal, labels: [("tool", t), ("reason", reason.rawValue)]) } }
        retries = r
        let rSuccess = MetricNameDescriptor(namespace: "gateway", metricName: "retry_success", unitName: "total", helpText: "Calls that succeeded after at least one retry.")
        retrySuccesses = perTool { registry.makeCounter(descriptor: rSuccess, labels: [("tool", $0)]) }
        let rBudget = MetricNameDescriptor(namespace: "gateway", metricName: "retry_budget_exhausted", unitName: "total",
            helpText: "Retries skipped because the retry budget was spent.")
        retryBudgetExhaustions = perTool { registry.makeCounter(descriptor: rBudget, labels: [("tool", $0)]) }
        let cHit = MetricNameDescriptor(namespace: "gateway", metricName: "cache_hits", unitName: "total", helpText: "Answers served from the response cache.")
        cacheHits = perTool { registry.makeCounter(descriptor: cHit, labels: [("tool", $0)]) }
        let cMiss = MetricNameDescriptor(namespace: "gateway", metricName: "cache_misses", unitName: "total", helpText: "Cacheable calls that went upstream.")
        cacheMisses = perTool { registry.makeCounter(descriptor: cMiss, labels: [("tool", $0)]) }
        let cStale = MetricNameDescriptor(namespace: "gateway", metricName: "cache_stale", unitName: "total",
            helpText: "Expired answers served because the upstream could not answer (breaker open or failing).")
        cacheStales = perTool { registry.makeCounter(descriptor: cStale, labels: [("tool", $0)]) }
        let cShared = MetricNameDescriptor(namespace: "gateway", metricName: "cache_shared_hits", unitName: "total",
            helpText: "Local cache misses answered from the fleet's shared cache in Redis (also counted as hits).")
        cacheSharedHits = perTool { registry.makeCounter(descriptor: cShared, labels: [("tool", $0)]) }
        let cUndecodable = MetricNameDescriptor(namespace: "gateway", metricName: "cache_undecodable", unitName: "total",
            helpText: "Cacheable answers not stored because their content coding could not be undone (corrupt or cut-off gzip).")
        cacheUndecodables = perTool { registry.makeCounter(descriptor: cUndecodable, labels: [("tool", $0)]) }
        cacheBytesGauge = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "gateway", metricName: "cache", unitName: "bytes",
            helpText: "Bytes held by the response cache."))
        bufferedBodiesGauge = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "gateway", metricName: "request_bodies_buffered",
            unitName: "bytes", helpText: "Request body bytes held across connections now (limits.max_buffered_request_bytes bounds them)."))
        let qLen = MetricNameDescriptor(namespace: "gateway", metricName: "bulkhead_queue", unitName: "",
            helpText: "Calls waiting for an upstream slot, by tool.")
        bulkheadQueues = perTool { registry.makeGauge(descriptor: qLen, labels: [("tool", $0)]) }
        let qRej = MetricNameDescriptor(namespace: "gateway", metricName: "bulkhead_rejections", unitName: "total",
            helpText: "Calls refused with tool_saturated (queue full or wait timed out).")
        bulkheadRejections = perTool { registry.makeCounter(descriptor: qRej, labels: [("tool", $0)]) }
        let chaos = MetricNameDescriptor(namespace: "gateway", metricName: "chaos_injected", unitName: "total",
            helpText: "Faults injected by chaos mode, by tool and kind.")
        var c: [String: Prometheus.Counter] = [:]
        for t in tools { for k in Self.chaosKinds { c["\(t)|\(k)"] = registry.makeCounter(descriptor: chaos, labels: [("tool", t), ("kind", k)]) } }
        chaosInjected = c
        identityDataLoss = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "gateway", metricName: "identity_store_data_loss", unitName: "total",
            helpText: "Times the shared store was found without this fleet's identity data (epoch gone or changed); each is restored from the last good snapshot."))
        identityDegraded = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "gateway", metricName: "identity_store_degraded", unitName: "",
            helpText: "1 while the shared store's identity data is being restored from the last good snapshot."))
        let tunnelName = MetricNameDescriptor(namespace: "gateway", metricName: "tunnels", unitName: "total",
            helpText: "CONNECT tunnels by mode (intercept or passthrough) and result: opened, refused before the 200, or failed after it.")
        var tunnels: [String: Prometheus.Counter] = [:]
        for m in Self.tunnelModes { for r in Self.tunnelResults { tunnels["\(m)|\(r)"] = registry.makeCounter(descriptor: tunnelName, labels: [("mode", m), ("result", r)]) } }
        self.tunnels = tunnels
        let connOpen = MetricNameDescriptor(namespace: "gateway", metricName: "connections_open", unitName: "",
            helpText: "Client connections open, by listener.")
        let connRefused = MetricNameDescriptor(namespace: "gateway", metricName: "connections_refused", unitName: "total",
            helpText: "Client connections closed as soon as accepted because the listener had max_connections open.")
        connectionsOpen = Dictionary(uniqueKeysWithValues: ["proxy", "admin"].map { ($0, registry.makeGauge(descriptor: connOpen, labels: [("listener", $0)])) })
        connectionsRefused = Dictionary(uniqueKeysWithValues: ["proxy", "admin"].map {
            ($0, registry.makeCounter(descriptor: connRefused, labels: [("listener", $0)]))
        })
        tunnelsOpen = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "gateway", metricName: "tunnels_open", unitName: "",
            helpText: "CONNECT tunnels currently open (intercepted and passed through)."))
        leafCertificates = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "gateway", metricName: "intercept_leaf_certificates", unitName: "",
            helpText: "Leaf certificates (TLS contexts) held by the interception cache."))
        leavesMinted = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "gateway", metricName: "intercept_leaves_minted", unitName: "total",
            helpText: "Leaf certificates minted for intercepted tunnels (a cache miss or a renewal)."))
        runs = RunMetrics(registry: registry)
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "build_info", unitName: "",
                helpText: "Build information; the value is always 1."),
            labels: [("version", Self.version)]
        ).set(to: 1.0)
    }

    /// Records a finished request.
    /// The actions of a tool label, then `none`.
    static func actionLabels(_ tool: String) -> [String] { (Tool(rawValue: tool)?.actions ?? []) + ["none"] }

    /// Records a finished request: array lookups and one dictionary lookup, no label strings built.
    func record(_ r: RequestRecord) {
        let tool = r.tool?.index ?? Tool.allCases.count
        let actions = r.tool?.actions ?? []
        let action = r.action.flatMap { actions.firstIndex(of: $0) } ?? actions.count
        let cls = (100..<600).contains(r.status) ? r.status / 100 - 1 : Self.statusClasses.count - 1
        requests[tool][action][cls].increment()
        (outcomes[tool][r.outcome] ?? outcomes[tool]["internal_error"])?.increment()
        if let total = r.totalDuration { requestDuration[tool].record(total) }
        if let up = r.upstreamDuration { upstreamDuration[tool].record(up) }
    }

    func tokenValidation(_ result: String) { tokenValidations[result]?.increment() }
    func stateFallback(_ kind: String) { stateFallbacks[kind]?.increment() }
    func policyDenied(_ kind: String) { policyDenials[kind]?.increment() }
    func policyWouldDeny(_ kind: String) { policyWouldDeny[kind]?.increment() }
    func rateLimitDecision(_ result: String) { rateLimitDecisions[result]?.increment() }

    func breakerState(_ tool: Tool, _ value: Int) { breakerStates[tool.rawValue]?.set(to: Double(value)) }
    func breakerTransition(_ tool: Tool, to state: String) { breakerTransitions["\(tool.rawValue)|\(state)"]?.increment() }
    func breakerFastFail(_ tool: Tool) { breakerFastFails[tool.rawValue]?.increment() }
    func retry(_ tool: Tool, reason: String) { retries["\(tool.rawValue)|\(reason)"]?.increment() }
    func retrySuccess(_ tool: Tool) { retrySuccesses[tool.rawValue]?.increment() }
    func retryBudgetExhausted(_ tool: Tool) { retryBudgetExhaustions[tool.rawValue]?.increment() }
    func cacheHit(_ tool: Tool) { cacheHits[tool.rawValue]?.increment() }
    func cacheMiss(_ tool: Tool) { cacheMisses[tool.rawValue]?.increment() }
    func cacheStale(_ tool: Tool) { cacheStales[tool.rawValue]?.increment() }
    func cacheSharedHit(_ tool: Tool) { cacheSharedHits[tool.rawValue]?.increment() }
    func cacheUndecodable(_ tool: Tool) { cacheUndecodables[tool.rawValue]?.increment() }
    func cacheBytes(_ bytes: Int) { cacheBytesGauge.set(to: Double(bytes)) }
    func bulkheadQueue(_ tool: Tool, _ n: Int) { bulkheadQueues[tool.rawValue]?.set(to: Double(n)) }
    func bulkheadRejection(_ tool: Tool) { bulkheadRejections[tool.rawValue]?.increment() }
    func tunnel(_ mode: String, _ result: String) { tunnels["\(mode)|\(result)"]?.increment() }
    func chaosInjected(_ tool: Tool, _ kind: String) { chaosInjected["\(tool.rawValue)|\(kind)"]?.increment() }

    /// Records one Redis command (latency nil when it failed).
    func redisCommand(_ latency: Duration?, failed: Bool) {
        if failed { redisErrors.increment() }
        if let latency { redisLatency.record(latency) }
    }
    func tokenExpired() { tokenExpirations.increment() }
    func securityEvent(_ kind: String) { securityEvents[kind]?.increment() }

    static let idempotencyResults = ["proceed", "replay", "in_flight", "outcome_unknown", "conflict", "store_error"]
    func idempotencyDecision(_ result: String) { idempotencyDecisions[result]?.increment() }

    func lowHeadroom(_ limitClass: String) { lowHeadroom[limitClass]?.increment() }

    func approval(_ claim: ApprovalClaim) {
        switch claim {
        case .granted: approvalOutcomes["granted"]?.increment()
        case .pending, .created: approvalOutcomes["pending"]?.increment()
        case .denied: approvalOutcomes["denied"]?.increment()
        case .expired: approvalOutcomes["expired"]?.increment()
        case .tooManyPending: approvalOutcomes["too_many_pending"]?.increment()
        }
    }

    public func exposition() -> [UInt8] {
        if let read = bufferedBodies.withLock({ $0 }) { bufferedBodiesGauge.set(to: Double(read())) }
        return registry.emitToBuffer()
    }

    /// Where `gateway_request_bodies_buffered_bytes` is read at each scrape (nothing per request).
    func watchBufferedBodies(_ read: @escaping @Sendable () -> Int) { bufferedBodies.withLock { $0 = read } }

    /// One counter per value of a closed label set, all made at start (recording takes no registry lock).
    private static func counters(
        _ registry: PrometheusCollectorRegistry, _ descriptor: MetricNameDescriptor, label: String, values: [String]
    ) -> [String: Prometheus.Counter] {
        Dictionary(uniqueKeysWithValues: values.map { ($0, registry.makeCounter(descriptor: descriptor, labels: [(label, $0)])) })
    }
}
