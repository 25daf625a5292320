import Foundation
import Logging
import Synchronization
import Upstreams

/// Which agents were handed which stored OpenAI responses. Every agent behind the sidecar calls OpenAI
/// with one key, so OpenAI cannot tell whose a response is; the sidecar records the id of every response
/// an answer of `POST /v1/responses` carried to an agent, and lets an agent retrieve, cancel, delete or
/// continue from (`previous_response_id`) only those. A response cached and answered to a second agent
/// is that agent's too: it was given the id (and the content).
protocol ResponseOwnerStore: Sendable {
    /// Records that `agent` was given response `id`, for `ttl` ms.
    func claim(_ id: String, agent: String, ttl: Int64, now: Int64) async throws
    /// Whether `agent` was given response `id` and the record has not expired.
    func owns(_ id: String, agent: String, now: Int64) async throws -> Bool
}

/// The records in front of the store: a claim is in memory at once — before the answer that carries the id
/// reaches the agent, so an agent polling its background response right away is never refused — and is
/// written to the store beside it. A lookup reads memory, then the store (another sidecar of the fleet, or
/// this one before a restart, gave the id).
final class ResponseOwners: Sendable {
    /// OpenAI keeps a stored response 30 days.
    static let ttl: Int64 = 30 * 86_400_000

    private let store: any ResponseOwnerStore
    private let recent = Mutex(LRUCache<Pair, Bool>(capacity: 16_384))
    private let now: @Sendable () -> Int64
    private let logger: Logger
    /// A store that is down fails every claim: one line per 10 s says how many.
    private let failures = LogThrottle()

    private struct Pair: Hashable {
        var id: String
        var agent: String
    }

    init(store: any ResponseOwnerStore, logger: Logger, now: @escaping @Sendable () -> Int64) {
        self.store = store
        self.logger = logger
        self.now = now
    }

    /// From the answer's observer, on the connection's loop: never waits.
    func claim(_ id: String, agent: String) {
        let known = recent.withLock { r in
            if r.contains(Pair(id: id, agent: agent)) { return true }
            r.set(Pair(id: id, agent: agent), true)
            return false
        }
        guard !known else { return }
        let (store, logger, failures, at) = (store, logger, failures, now())
        Task {
            do { try await store.claim(id, agent: agent, ttl: Self.ttl, now: at) } catch {
                guard let count = failures.admit() else { return }
                logger.warning(
                    "stored responses: owners could not be recorded; those responses stay readable through this sidecar while it remembers them",
                    metadata: ["failures": "\(count)", "error": "\(error)"])
            }
        }
    }

    func owns(_ id: String, agent: String) async throws -> Bool {
        if recent.withLock({ $0.get(Pair(id: id, agent: agent)) }) != nil { return true }
        guard try await store.owns(id, agent: agent, now: now()) else { return false }
        recent.withLock { _ = $0.set(Pair(id: id, agent: agent), true) }
        return true
    }
}
