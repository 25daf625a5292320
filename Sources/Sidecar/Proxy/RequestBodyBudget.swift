import Synchronization

/// The request-body bytes every connection holds at once, bounded (`limits.max_buffered_request_bytes`).
///
/// A body is read whole before its call is interpreted (the policy reads it), so each connection can
/// hold up to `max_request_body_bytes`; without a bound across connections, many large bodies at once
/// would take what memory there is. A connection takes bytes as its body's chunks arrive and gives them
/// back when its request is finished; a chunk that would go past the bound is refused instead (503
/// `sidecar_overloaded`, `Retry-After: 1`). One atomic add per chunk.
final class RequestBodyBudget: Sendable {
    let limit: Int
    private let held = Atomic<Int>(0)

    init(limit: Int) { self.limit = limit }

    /// Bytes held now, across connections.
    var current: Int { held.load(ordering: .relaxed) }

    /// Takes `bytes` if they fit under the limit.
    func take(_ bytes: Int) -> Bool {
        let now = held.wrappingAdd(bytes, ordering: .relaxed).newValue
        guard now > limit else { return true }
        held.wrappingSubtract(bytes, ordering: .relaxed)
        return false
    }

    func give(_ bytes: Int) {
        held.wrappingSubtract(bytes, ordering: .relaxed)
    }
}
