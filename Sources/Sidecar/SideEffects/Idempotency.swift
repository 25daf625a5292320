import Foundation
import Upstreams

/// `idempotency:` — which calls get the exactly-once ledger, and for how long an answer is kept.
struct IdempotencySettings: Sendable, Hashable {
    var enabled = true
    /// Scopes (`gmail_send:send`) or whole tools (`gmail_send`) whose calls are side effects.
    var calls: Set<String> = ["gmail_send:send"] {
        didSet { covered = Self.compile(calls) }
    }
    /// `calls` per tool: nil for none, an empty set for every action (compiled once: `covers` runs for
    /// every call).
    private var covered = Self.compile(["gmail_send:send"])
    /// How long a completed call's answer is replayed to an identical call.
    var window: Duration = .seconds(24 * 3600)
    /// How long a call may hold its key while in flight before the key is free again (a sidecar that
    /// died mid-call must not block the key for the whole window).
    var inFlight: Duration = .seconds(300)
    /// Answers up to this size are stored for replay; a bigger one is replayed as its status and headers.
    var maxStoredBytes = 65_536

    func covers(_ tool: Tool, action: String) -> Bool {
        guard enabled, let actions = covered[tool] else { return false }
        return actions.isEmpty || actions.contains(action)
    }

    private static func compile(_ calls: Set<String>) -> PerTool<Set<String>> {
        var out: [Tool: Set<String>] = [:]
        for call in calls {
            let parts = call.split(separator: ":", maxSplits: 1).map(String.init)
            guard let tool = Tool(rawValue: parts[0]) else { continue }
            if parts.count == 1 { out[tool] = [] } else if out[tool] != [] { out[tool, default: []].insert(parts[1]) }
        }
        return PerTool(out)
    }
}

/// The answer of a completed side effect, as an identical call gets it again.
struct StoredAnswer: Sendable, Hashable, Codable {
    var status: Int
    var headers: [[String]]
    /// nil when the answer was larger than `max_stored_bytes` (or broke off after its head).
    var body: Data?

    /// Headers worth replaying: what describes the body, never hop-by-hop or per-request ones.
    static let keptHeaders: Set<String> = ["content-type", "content-language", "location", "etag", "last-modified"]
}

/// What the ledger holds for a key.
enum LedgerEntry: Sendable, Hashable {
    /// A call is under way (its owner completes or releases it).
    case inFlight(digest: String)
    /// The call succeeded: its answer is replayed.
    case completed(digest: String, StoredAnswer)
    /// The call reached the upstream but its answer was lost: whether the side effect happened is unknown.
    case unknown(digest: String)

    var digest: String {
        switch self {
        case .inFlight(let d), .completed(let d, _), .unknown(let d): return d
        }
    }
}

/// What to do with a side-effecting call, given what the ledger holds for its key.
enum IdempotencyDecision: Sendable, Hashable {
    /// Nothing held: the call goes ahead and owns the key.
    case proceed
    case replay(StoredAnswer)
    case inFlight
    case outcomeUnknown
    /// The agent's own `Idempotency-Key` was used before for a different call.
    case conflict

    /// The ledger's rule, the same for every store (pure).
    static func decide(_ existing: LedgerEntry?, digest: String) -> Self {
        guard let existing else { return .proceed }
        guard existing.digest == digest else { return .conflict }
        switch existing {
        case .inFlight: return .inFlight
        case .completed(_, let answer): return .replay(answer)
        case .unknown: return .outcomeUnknown
        }
    }

    var label: String {
        switch self {
        case .proceed: return "proceed"
        case .replay: return "replay"
        case .inFlight: return "in_flight"
        case .outcomeUnknown: return "outcome_unknown"
        case .conflict: return "conflict"
        }
    }
}

/// How a side-effecting call that owned its key ended.
enum LedgerOutcome: Sendable, Hashable {
    /// A 2xx answer: kept for the window and replayed.
    case completed(StoredAnswer)
    /// The upstream refused it or it never left: the key is free again.
    case released
    /// Sent, answer lost: identical calls are refused for the window (never sent twice).
    case unknown
}

/// The ledger's storage: the embedded SQLite file, or Redis for a fleet. `begin` is atomic: of two
/// identical calls racing, exactly one gets `.proceed`.
protocol IdempotencyStore: Sendable {
    /// Claims `key` for a call with `digest` unless the ledger already holds it; returns the decision
    /// and, on `.proceed`, the owner token to finish with.
    func begin(key: String, digest: String, owner: String, inFlight: Duration) async throws -> IdempotencyDecision
    /// Records how the call that owns `key` ended (ignored when `owner` no longer holds it).
    func finish(key: String, owner: String, outcome: LedgerOutcome, window: Duration) async throws
}

/// A store that answers by callback, without a task (the embedded ledger), so a side effect can run on
/// the loop path. `then` runs once, on the calling thread when the store decides at once, else on the
/// store's own thread.
protocol CallbackIdempotencyStore: IdempotencyStore {
    func begin(
        key: String, digest: String, owner: String, inFlight: Duration, then: @escaping @Sendable (Result<IdempotencyDecision, any Error>) -> Void)
    func finish(key: String, owner: String, outcome: LedgerOutcome, window: Duration, then: @escaping @Sendable (Result<Void, any Error>) -> Void)
}

/// The ledger key of a call: the agent, the run, and the agent's own `Idempotency-Key` or else the
/// digest of the call's canonical parameters (so the same email composed twice is one email).
enum IdempotencyKey {
    static func make(agent: String, run: String?, clientKey: String?, digest: String) -> String {
        Digest.sha256Hex(["idem", agent, run ?? "", clientKey.map { "k:" + $0 } ?? "d:" + digest])
    }
}
