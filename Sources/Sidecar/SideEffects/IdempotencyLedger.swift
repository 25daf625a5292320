import Logging
import NIOHTTP1
import Upstreams

/// The exactly-once ledger as the pipeline uses it: which calls it covers, the store, the settings and
/// the metric of its decisions. (The rule itself is `IdempotencyDecision.decide`; the storage is the
/// store's.)
struct IdempotencyLedger: Sendable {
    let store: any IdempotencyStore
    /// The same store when it answers without a task (the loop path can then carry side effects).
    let callbacks: (any CallbackIdempotencyStore)?
    let settings: IdempotencySettings
    let metrics: GatewayMetrics?
    let logger: Logger

    init(store: any IdempotencyStore, settings: IdempotencySettings, metrics: GatewayMetrics?, logger: Logger) {
        self.store = store
        self.callbacks = store as? any CallbackIdempotencyStore
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
    }

    /// The agent's own key, checked: 1–255 visible ASCII characters (as Stripe and the IETF draft allow).
    static func clientKey(in headers: HTTPHeaders) -> Result<String?, GatewayError> {
        guard let value = headers.first(name: "idempotency-key") else { return .success(nil) }
        guard (1...255).contains(value.utf8.count), value.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            return .failure(GatewayError(.invalidParameter, "Idempotency-Key must be 1 to 255 visible ASCII characters"))
        }
        return .success(value)
    }

    /// What a completed side effect's answer is kept as.
    func stored(status: Int, headers: HTTPHeaders, body: ByteBuffer?) -> StoredAnswer {
        let kept = headers.filter { StoredAnswer.keptHeaders.contains($0.name.lowercased()) }.map { [$0.name, $0.value] }
        let bytes = body.flatMap { $0.readableBytes <= settings.maxStoredBytes ? Data($0.readableBytesView) : nil }
        return StoredAnswer(status: status, headers: kept, body: bytes)
    }

    /// A stored answer as the agent's response, marked as a replay.
    static func replay(_ answer: StoredAnswer, requestID: String) -> ProxyResponse {
        var headers = HTTPHeaders(answer.headers.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil })
        let body = ByteBuffer(bytes: answer.body ?? Data())
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "X-Request-Id", value: requestID)
        headers.add(name: "X-Idempotent-Replay", value: "true")
        if answer.body == nil { headers.add(name: "X-Idempotent-Replay-Body", value: "omitted") }
        return ProxyResponse(status: HTTPResponseStatus(statusCode: answer.status), headers: headers, body: .buffer(body))
    }

    func count(_ label: String) { metrics?.idempotencyDecision(label) }

    /// A claim the store could not decide, counted and logged: the call is refused, since without the
    /// ledger a duplicate cannot be told apart (like a security limit).
    func unavailable(_ error: any Error) -> GatewayError {
        count("store_error")
        logger.warning("idempotency ledger unavailable; side-effecting call refused", metadata: ["error": "\(error)"])
        return GatewayError(.stateUnavailable, "the idempotency ledger is unavailable; the side-effecting call was not sent")
    }

    /// An outcome the store could not record, counted and logged. The call itself is done; a later
    /// identical call may find the key still in flight (until `in_flight` passes) rather than replayed.
    func notRecorded(_ error: any Error) {
        count("store_error")
        logger.warning("idempotency ledger: the outcome of a call could not be recorded", metadata: ["error": "\(error)"])
    }
}

import Foundation
import NIOCore
