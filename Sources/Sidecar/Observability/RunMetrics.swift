import Policy
import Prometheus

/// The metrics of agent runs (README "Agent runs"). Labels come from closed sets only — never a run id.
struct RunMetrics: Sendable {
    private let runs: [String: Prometheus.Counter]
    let active: Gauge
    let sseConnections: Gauge
    let sseEvents: Prometheus.Counter
    let idempotencyHits: Prometheus.Counter
    private let cancellations: [String: Prometheus.Counter]
    let killswitchAborts: Prometheus.Counter
    private let budgetExhausted: [String: Prometheus.Counter]
    private let loops: [String: Prometheus.Counter]

    /// Why a run was stopped by the kill switch.
    static let cancellationReasons = ["api", "max_duration", "loop", "parent"]

    init(registry: PrometheusCollectorRegistry) {
        let total = MetricNameDescriptor(
            namespace: "gateway", metricName: "runs", unitName: "total",
            helpText: "Runs entering each state on this sidecar: created, running, paused, completed, failed, cancelled.")
        runs = Self.counters(registry, total, label: "state", values: RunStatus.allCases.map(\.rawValue))
        active = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "gateway", metricName: "runs_active", unitName: "",
            helpText: "Runs created, running or paused, in the store this sidecar uses (fleet-wide with Redis); refreshed every 10 s."))
        sseConnections = registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "gateway", metricName: "sse_connections", unitName: "",
            helpText: "Run event streams (Server-Sent Events) open on this sidecar."))
        sseEvents = registry.makeCounter(descriptor: MetricNameDescriptor(
            namespace: "gateway", metricName: "sse_events", unitName: "total",
            helpText: "Run events written to event stream clients (a replayed event counts again)."))
        idempotencyHits = registry.makeCounter(descriptor: MetricNameDescriptor(
            namespace: "gateway", metricName: "idempotency_hits", unitName: "total",
            helpText: "Run creations answered with the run an earlier request with the same client_token made."))
        let cancelled = MetricNameDescriptor(
            namespace: "gateway", metricName: "run_cancellations", unitName: "total",
            helpText: "Runs stopped by the kill switch, by reason: api, max_duration, loop (the loop breaker's cancel), parent.")
        cancellations = Self.counters(registry, cancelled, label: "reason", values: Self.cancellationReasons)
        killswitchAborts = registry.makeCounter(descriptor: MetricNameDescriptor(
            namespace: "gateway", metricName: "killswitch_aborts", unitName: "total",
            helpText: "In-flight tool calls aborted on this sidecar because their run was cancelled or failed."))
        let exhausted = MetricNameDescriptor(
            namespace: "gateway", metricName: "run_budget_exhausted", unitName: "total",
            helpText: "Tool calls refused because a run's budget (or an ancestor's) would be exceeded, by dimension.")
        budgetExhausted = Self.counters(registry, exhausted, label: "dimension", values: RunBudget.Dimension.allCases.map(\.rawValue))
        let loop = MetricNameDescriptor(
            namespace: "gateway", metricName: "run_loops_detected", unitName: "total",
            helpText: "Runaway loops detected by the loop breaker, by the action taken: pause, cancel or report.")
        loops = Self.counters(registry, loop, label: "action", values: LoopDetector.Action.allCases.map(\.rawValue))
    }

    /// One counter per value of a closed label set, made up front.
    private static func counters(
        _ registry: PrometheusCollectorRegistry, _ descriptor: MetricNameDescriptor, label: String, values: [String]
    ) -> [String: Prometheus.Counter] {
        Dictionary(uniqueKeysWithValues: values.map { ($0, registry.makeCounter(descriptor: descriptor, labels: [(label, $0)])) })
    }

    func entered(_ status: RunStatus) { runs[status.rawValue]?.increment() }
    func cancelled(_ reason: String) { cancellations[reason]?.increment() }
    func exhausted(_ d: RunBudget.Dimension) { budgetExhausted[d.rawValue]?.increment() }
    func loopDetected(_ a: LoopDetector.Action) { loops[a.rawValue]?.increment() }
}
