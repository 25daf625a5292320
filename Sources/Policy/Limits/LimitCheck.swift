/// One stateful limit a request must pass, as the evaluator hands it to a `LimitStore`. Keys are
/// relative to the agent (the store puts them under the agent's hash tag), so every limit of a request
/// can be decided in one atomic step on one shard.
public struct LimitCheck: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case concurrency
        case rate
        case quota
        case budget
    }

    public enum Mode: String, Sendable, Hashable {
        case enforce
        /// Evaluated and reported (would-deny), never refused.
        case report
    }

    public var kind: Kind
    public var mode: Mode
    /// Agent-relative key, e.g. `r:serpapi:search`, `q:openai:chat`, `c`.
    public var key: String
    /// Rate: limit per period; quota/budget: the window allowance; concurrency: max in flight.
    public var limit: Int
    /// Rate: period and burst.
    public var periodMilliseconds: Double = 0
    public var burst: Int = 1
    /// Quota/budget: units this call takes (budget: the reservation).
    public var cost: Int = 1
    /// Quota/budget: the current and the next window (id and end in unix ms), so a store can choose by
    /// its own clock.
    public var window: WindowPair?

    public struct WindowPair: Sendable, Hashable {
        public var currentID: String
        public var currentEnd: Int64
        public var nextID: String
        public var nextEnd: Int64
        public var length: Int64 { max(1, nextEnd - currentEnd) }

        public init(currentID: String, currentEnd: Int64, nextID: String, nextEnd: Int64) {
            self.currentID = currentID
            self.currentEnd = currentEnd
            self.nextID = nextID
            self.nextEnd = nextEnd
        }
    }

    public init(kind: Kind, mode: Mode, key: String, limit: Int) {
        self.kind = kind
        self.mode = mode
        self.key = key
        self.limit = limit
    }

    public var gcra: GCRA { GCRA(limit: limit, periodMilliseconds: periodMilliseconds, burst: burst) }
}

/// A store's answer for one check.
public struct LimitResult: Sendable, Hashable {
    public var allowed: Bool
    public var remaining: Int
    /// Refused: milliseconds until a retry could pass (rate) or until the window resets (quota, budget).
    /// Allowed: milliseconds until the window resets (quota, budget), else 0.
    public var resetMilliseconds: Int64
    /// Quota/budget: which window the store counted in (0 current, 1 next) — needed to refund or settle.
    public var windowIndex: Int

    public init(allowed: Bool, remaining: Int, resetMilliseconds: Int64, windowIndex: Int = 0) {
        self.allowed = allowed
        self.remaining = remaining
        self.resetMilliseconds = resetMilliseconds
        self.windowIndex = windowIndex
    }
}

/// The outcome of admitting a request: every check's result, and whether the request may go ahead
/// (no enforce-mode check refused). When it may not, nothing was counted.
public struct Admission: Sendable, Hashable {
    public var admitted: Bool
    public var results: [LimitResult]
    /// Identifies this request's concurrency slot, to release it.
    public var leaseID: String
    /// Decided by the host's local limiter because the shared store was unavailable.
    public var local = false

    public init(admitted: Bool, results: [LimitResult], leaseID: String, local: Bool = false) {
        self.admitted = admitted
        self.results = results
        self.leaseID = leaseID
        self.local = local
    }
}

/// What happens after the call: the concurrency slot is released, budgets are corrected to the real
/// usage, and a call refused after admission (breaker open, upstream unreachable before sending) gets
/// its quota and budget back.
public struct Settlement: Sendable, Hashable {
    public enum Outcome: Sendable, Hashable {
        /// The call went upstream; `usage` is the real budget consumption when known.
        case completed(usage: Int?)
        /// Nothing reached the upstream: quota and budget are refunded.
        case refunded
    }

    public var checks: [LimitCheck]
    public var results: [LimitResult]
    public var leaseID: String
    public var outcome: Outcome
    public var local: Bool

    public init(checks: [LimitCheck], admission: Admission, outcome: Outcome) {
        self.checks = checks
        self.results = admission.results
        self.leaseID = admission.leaseID
        self.outcome = outcome
        self.local = admission.local
    }
}

/// Where the counters live: embedded (one host) or shared (Redis, a fleet). Time is the store's own:
/// the embedded store takes it from the host, the Redis store from Redis `TIME`.
///
/// Class-bound: a store is shared state, and the pipeline reads its store several times per request — an
/// existential of any type was copied through its type's value witnesses each time (~0.8 µs per request
/// in a profile), one of a class is a reference.
public protocol LimitStore: AnyObject, Sendable {
    /// Decides all checks of one request atomically for one agent.
    func admit(agent: String, checks: [LimitCheck], leaseID: String) async throws -> Admission
    func settle(agent: String, _ settlement: Settlement) async throws
    /// Extends the concurrency leases of calls still running (held longer than a third of the lease
    /// TTL): a slot held by a live sidecar stays held; one held by a dead sidecar frees within the TTL.
    func renew(agent: String, leaseIDs: [String]) async throws
}

extension LimitStore {
    /// Stores without expiring leases have nothing to renew.
    public func renew(agent: String, leaseIDs: [String]) async throws {}
}
