import Logging
import Synchronization

/// Set once graceful shutdown begins: responses then carry `Connection: close`.
final class DrainState: Sendable {
    private let flag = Atomic<Bool>(false)
    var isDraining: Bool { flag.load(ordering: .relaxed) }
    func startDraining() { flag.store(true, ordering: .relaxed) }
}

/// What every proxy connection shares: the pipeline, limits, metrics and the access log.
final class ProxyContext: Sendable {
    let pipeline: Pipeline
    let limits: ListenerLimits
    let metrics: GatewayMetrics
    let accessLog: AccessLog
    let draining = DrainState()
    /// Request bodies held across connections.
    let bodies: RequestBodyBudget
    let logger: Logger
    /// The warning for a TLS handshake sent to this plain-HTTP port (`HTTPS_PROXY=https://…`).
    let tlsOnPlainPort = LogThrottle()

    init(pipeline: Pipeline, limits: ListenerLimits, metrics: GatewayMetrics, accessLog: AccessLog, logger: Logger) {
        self.pipeline = pipeline
        self.logger = logger
        self.limits = limits
        self.bodies = RequestBodyBudget(limit: limits.maxBufferedRequestBytes)
        self.metrics = metrics
        self.accessLog = accessLog
    }

    /// Records a finished request: one access log line and the request metrics; for a call of a run, its
    /// settlement and its event on the run's stream.
    func finish(_ record: RequestRecord) {
        if let receipts = pipeline.receipts, record.tool != nil || record.entry == .compat { receipts.record(Self.draft(record)) }
        guard let run = record.runID, let runs = pipeline.runs else {
            metrics.record(record)
            accessLog.write(record)
            return
        }
        var record = record
        if record.runCall?.killed == true { record.outcome = GatewayError.Code.runCancelled.rawValue }
        metrics.record(record)
        accessLog.write(record)
        runs.finish(record.runCall, runID: run, agent: record.agentID, record: record)
    }

    /// A finished call as its receipt's draft.
    static func draft(_ r: RequestRecord) -> ReceiptDraft {
        ReceiptDraft(
            at: unixMillis(), requestID: r.requestID, entry: r.entry?.rawValue, agent: r.agentID,
            token: r.tokenID, run: r.runID, tool: r.tool?.rawValue, action: r.action, requestDigest: r.requestDigest,
            responseDigest: r.responseDigest, status: r.status, outcome: r.outcome, upstreamStatus: r.upstreamStatus, policy: r.policyHash,
            credential: nil, approval: r.approvalID, idempotency: r.idempotency, upstreamContacted: r.upstreamStart != nil && !r.mock)
    }
}
