import Policy
import Prometheus
import Upstreams

/// The sidecar's Prometheus metrics, all created through the registry with HELP text (so
/// `promtool check metrics` passes) and with labels from closed sets only.
///
/// Every labelled series of the hot path is created up front and kept in immutable dictionaries, so
/// recording a request takes no registry lock.
public final class GatewayMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    public static let version = "0.4.0"

    private let requests: [String: Prometheus.Counter]
    private let outcomes: [String: Prometheus.Counter]
    private let requestDuration: [String: DurationHistogram]
    private let upstreamDuration: [String: DurationHistogram]
    let inFlight: Gauge
    private let tokenValidations: [String: Prometheus.Counter]
    private let tokenExpirations: Prometheus.Counter
    let tokenGenerations: Prometheus.Counter
    let agentCreations: Prometheus.Counter
    private let securityEvents: [String: Prometheus.Counter]
    private let stateFallbacks: [String: Prometheus.Counter]
    let policyReloadFailures: Prometheus.Counter
    private let policyDenials: [String: Prometheus.Counter]
    private let policyWouldDeny: [String: Prometheus.Counter]
    private let rateLimitDecisions: [String: Prometheus.Counter]
    private let redisErrors: Prometheus.Counter
    private let redisLatency: DurationHistogram
    static let denialKinds = PolicyDenial.Kind.allCases.map(\.rawValue)

    static let tokenResults = [
        "ok", "cached", "token_missing", "token_malformed", "token_invalid", "token_expired", "token_revoked",
        "agent_disabled", "agent_unknown", "provenance_mismatch",
    ]
    static let securityKinds = ["provenance_mismatch", "revoked_use", "forgery", "scope_violation", "admin_auth_failure"]

    static let toolLabels = Tool.allCases.map(\.rawValue) + ["none"]
    /// `ok`, every problem code, and `client_closed` (the agent went away mid-response).
    static let outcomes = ["ok", "client_closed"] + GatewayError.catalog.map(\.code)
    static let statusClasses = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"]
    static let buckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120),
    ]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var requests: [String: Prometheus.Counter] = [:]
        var outcomes: [String: Prometheus.Counter] = [:]
        var requestDuration: [String: DurationHistogram] = [:]
        var upstreamDuration: [String: DurationHistogram] = [:]
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
            let actions = (Tool(rawValue: tool)?.actions ?? []) + ["none"]
            for action in actions {
                for cls in Self.statusClasses {
                    requests["\(tool)|\(action)|\(cls)"] = registry.makeCounter(
                        descriptor: requestsName, labels: [("tool", tool), ("action", action), ("code", cls)])
                }
            }
            for outcome in Self.outcomes {
                outcomes["\(tool)|\(outcome)"] = registry.makeCounter(
                    descriptor: outcomesName, labels: [("tool", tool), ("outcome", outcome)])
            }
            requestDuration[tool] = registry.makeDurationHistogram(descriptor: durationName, labels: [("tool", tool)], buckets: Self.buckets)
            upstreamDuration[tool] = registry.makeDurationHistogram(descriptor: upstreamName, labels: [("tool", tool)], buckets: Self.buckets)
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
        tokenValidations = Dictionary(uniqueKeysWithValues: Self.tokenResults.map {
            ($0, registry.makeCounter(descriptor: validations, labels: [("result", $0)]))
        })
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
        securityEvents = Dictionary(uniqueKeysWithValues: Self.securityKinds.map {
            ($0, registry.makeCounter(descriptor: security, labels: [("kind", $0)]))
        })
        let fallback = MetricNameDescriptor(
            namespace: "gateway", metricName: "state_fallback", unitName: "total",
            helpText: "Limit decisions made under the failure policy because the shared state was unavailable, by limit class.")
        stateFallbacks = Dictionary(uniqueKeysWithValues: ["rate", "quota", "budget", "concurrency"].map {
            ($0, registry.makeCounter(descriptor: fallback, labels: [("class", $0)]))
        })
        policyReloadFailures = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "policy_reload_failures", unitName: "total",
                helpText: "Policy documents rejected on reload; the previous policy stayed active."))
        let denials = MetricNameDescriptor(
            namespace: "gateway", metricName: "policy_denials", unitName: "total", helpText: "Calls refused by policy, by kind.")
        policyDenials = Dictionary(uniqueKeysWithValues: Self.denialKinds.map { ($0, registry.makeCounter(descriptor: denials, labels: [("kind", $0)])) })
        let would = MetricNameDescriptor(
            namespace: "gateway", metricName: "policy_would_deny", unitName: "total",
            helpText: "Calls a report-mode rule would have refused (allowed), by kind.")
        policyWouldDeny = Dictionary(uniqueKeysWithValues: Self.denialKinds.map { ($0, registry.makeCounter(descriptor: would, labels: [("kind", $0)])) })
        let decisions = MetricNameDescriptor(
            namespace: "gateway", metricName: "ratelimit_decisions", unitName: "total",
            helpText: "Rate-limit decisions: allowed, limited, or would_limit (report mode).")
        rateLimitDecisions = Dictionary(uniqueKeysWithValues: ["allowed", "limited", "would_limit"].map {
            ($0, registry.makeCounter(descriptor: decisions, labels: [("result", $0)]))
        })
        redisErrors = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "redis_errors", unitName: "total", helpText: "Redis commands that failed or timed out."))
        redisLatency = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "redis_latency", unitName: "seconds", helpText: "Redis command round trips."),
            buckets: [.microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                      .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250)])
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "gateway", metricName: "build_info", unitName: "",
                helpText: "Build information; the value is always 1."),
            labels: [("version", Self.version)]
        ).set(to: 1.0)
    }

    /// Records a finished request.
    func record(_ r: RequestRecord) {
        let tool = r.toolLabel
        let action = r.tool?.actions.contains(r.actionLabel) == true ? r.actionLabel : "none"
        requests["\(tool)|\(action)|\(r.statusClass)"]?.increment()
        (outcomes["\(tool)|\(r.outcome)"] ?? outcomes["\(tool)|internal_error"])?.increment()
        if let total = r.totalDuration { requestDuration[tool]?.record(total) }
        if let up = r.upstreamDuration { upstreamDuration[tool]?.record(up) }
    }

    func tokenValidation(_ result: String) { tokenValidations[result]?.increment() }
    func stateFallback(_ kind: String) { stateFallbacks[kind]?.increment() }
    func policyDenied(_ kind: String) { policyDenials[kind]?.increment() }
    func policyWouldDeny(_ kind: String) { policyWouldDeny[kind]?.increment() }
    func rateLimitDecision(_ result: String) { rateLimitDecisions[result]?.increment() }

    /// Records one Redis command (latency nil when it failed).
    func redisCommand(_ latency: Duration?, failed: Bool) {
        if failed { redisErrors.increment() }
        if let latency { redisLatency.record(latency) }
    }
    func tokenExpired() { tokenExpirations.increment() }
    func securityEvent(_ kind: String) { securityEvents[kind]?.increment() }

    public func exposition() -> [UInt8] { registry.emitToBuffer() }
}
