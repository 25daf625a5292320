import Logging
import NIOHTTP1
import Upstreams

/// The exactly-once ledger as the pipeline uses it: which calls it covers, the store, the settings and
/// the metric of its decisions. (The rule itself is `IdempotencyDecision.decide`; the storage is the
/// store's.)
struct IdempotencyLedger: Sendable {
    let store: any IdempotencyStore
    let settings: IdempotencySettings
    let metrics: GatewayMetrics?
    let logger: Logger

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
}

import Foundation
import NIOCore
