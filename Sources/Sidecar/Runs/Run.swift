import Foundation
import Policy
import Upstreams

/// A run: the unit of an agent's work (README "Agent runs"). Every tool call that names it is an event
/// in it and is charged to its ledger; cancelling it stops the agent everywhere.
struct Run: Sendable, Hashable, Codable {
    /// `run_<hex>`; a child's id is its parent's followed by `.<hex>`, so the id names the whole family
    /// (`chain(of:)`) and every run of a family shares one Redis hash tag: a reservation against a run
    /// and all its ancestors is one atomic step on one shard.
    var id: String
    var agent: String
    /// `admin` or the agent that created it.
    var createdBy: String
    var name: String
    var input: JSONValue?
    var tags: [String]
    var status: RunStatus
    var budget: RunBudget
    var parent: String?
    /// The run and its ancestors, nearest first (a reservation is checked against each).
    var chain: [String]
    var createdAt: Int64
    var startedAt: Int64?
    var endedAt: Int64?
    /// Why it ended, or was paused (`cancelled by the API`, `max_duration`, `loop: …`).
    var reason: String?
    var spent = RunLedger()
    /// Charged to calls still in flight.
    var reserved = RunLedger()

    /// The root of the run's family (its own id for a root run).
    static func root(of id: String) -> String { String(id.prefix { $0 != "." }) }

    /// The run and its ancestors, nearest first, read from the id.
    static func chain(of id: String) -> [String] {
        var out = [id]
        var rest = Substring(id)
        while let dot = rest.lastIndex(of: ".") {
            rest = rest[..<dot]
            out.append(String(rest))
        }
        return out
    }

    /// How deep runs nest (a root and three generations of children): ids stay within 64 characters.
    static let maxDepth = 4

    /// 96 random bits for a root, 32 more per generation (the request-id generator's, seeded from the
    /// system CSPRNG: ids are neither guessable nor colliding).
    static func newRootID() -> String { "run_" + RequestID.generate().prefix(24) }
    static func newChildID(parent: String) -> String { parent + "." + RequestID.generate().prefix(8) }

    /// A run id as this sidecar makes them: `run_` and lowercase hex, then `.`-separated hex for each
    /// generation of children. Anything else is not looked up at all.
    static func isValidID(_ id: String) -> Bool {
        id.utf8.withContiguousStorageIfAvailable(Self.isValidID) ?? Array(id.utf8).withUnsafeBufferPointer(Self.isValidID)
    }

    private static func isValidID(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        guard b.count > 4, b.count <= 64, b[0] == 0x72, b[1] == 0x75, b[2] == 0x6E, b[3] == 0x5F else { return false }
        var parts = 1
        var partLength = 0
        for c in b[4...] {
            if c == 0x2E {
                guard partLength > 0 else { return false }
                parts += 1
                partLength = 0
            } else if (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) {
                partLength += 1
            } else {
                return false
            }
        }
        return partLength > 0 && parts <= maxDepth
    }

    var json: JSONValue {
        var o: [String: JSONValue] = [
            "id": .string(id), "run_id": .string(id), "agent_id": agent.isEmpty ? .null : .string(agent), "created_by": .string(createdBy), "name": .string(name),
            "tags": .array(tags.map { .string($0) }), "status": .string(status.rawValue), "created_at": .number(Double(createdAt) / 1000),
            "ledger": Self.ledgerJSON(spent), "reserved": Self.ledgerJSON(reserved), "budget": Self.budgetJSON(budget),
        ]
        if let input { o["input"] = input }
        if let parent { o["parent_run_id"] = .string(parent) }
        if let startedAt { o["started_at"] = .number(Double(startedAt) / 1000) }
        if let endedAt { o["ended_at"] = .number(Double(endedAt) / 1000) }
        if let reason { o["reason"] = .string(reason) }
        return .object(o)
    }

    static func ledgerJSON(_ l: RunLedger) -> JSONValue {
        [
            "calls": .number(Double(l.calls)), "openai_tokens": .number(Double(l.openAITokens)), "serpapi_searches": .number(Double(l.searches)),
            "emails": .number(Double(l.emails)), "fetch_bytes": .number(Double(l.fetchBytes)), "cost_usd": .number(l.costUSD),
        ]
    }

    static func budgetJSON(_ b: RunBudget) -> JSONValue {
        var o: [String: JSONValue] = [:]
        if let v = b.maxCalls { o["max_calls"] = .number(Double(v)) }
        if let v = b.maxOpenAITokens { o["max_openai_tokens"] = .number(Double(v)) }
        if let v = b.maxSearches { o["max_serpapi_searches"] = .number(Double(v)) }
        if let v = b.maxEmails { o["max_emails"] = .number(Double(v)) }
        if let v = b.maxFetchBytes { o["max_fetch_bytes"] = .number(Double(v)) }
        if let v = b.maxCostMicros { o["max_cost_usd"] = .number(Double(v) / 1_000_000) }
        if let v = b.maxDurationSeconds { o["max_duration"] = .number(Double(v)) }
        return .object(o)
    }
}

/// One event on a run's stream. Ids are unique and increase within the run (the embedded store counts;
/// Redis Streams gives `<ms>-<seq>`): `Last-Event-ID` resumes exactly after one.
struct RunEvent: Sendable, Hashable {
    var id: String
    var type: String
    /// Unix ms.
    var at: Int64
    /// The event's data: a JSON object, serialized (as it is stored and sent: a call's event is written
    /// once as text and never parsed on its way to the streams).
    var json: String

    init(id: String, type: String, at: Int64, json: String) {
        self.id = id
        self.type = type
        self.at = at
        self.json = json
    }

    init(id: String, type: String, at: Int64, data: JSONValue) {
        self.init(id: id, type: type, at: at, json: data.serialized)
    }

    var data: JSONValue { JSONValue.parse(Array(json.utf8)) ?? .null }

    /// The run's last event: its terminal status.
    var isFinal: Bool { type == "run.completed" || type == "run.failed" || type == "run.cancelled" }

    /// The Server-Sent Events form: `id`, `event`, one `data` line (JSON never holds a raw newline), the
    /// data with its time and id in front.
    var sse: String {
        var out = "id: \(id)\nevent: \(type)\ndata: {\"at\":"
        JSONValue.number(Double(at) / 1000).write(into: &out)
        out += ",\"run_event_id\":"
        JSONValue.writeString(id, into: &out)
        if json.utf8.count > 2 { out += "," + json.dropFirst() } else { out += "}" }
        out += "\n\n"
        return out
    }

    /// Whether event id `a` comes after `b` (numeric ids of the embedded store, `ms-seq` of Redis).
    static func isAfter(_ a: String, _ b: String) -> Bool {
        let pa = a.split(separator: "-").map { Int($0) ?? 0 }
        let pb = b.split(separator: "-").map { Int($0) ?? 0 }
        return pa.lexicographicallyPrecedes(pb) == false && pa != pb
    }
}

/// Who asks the runs API: the admin, or an agent for its own runs (with a token bound to a run: that run
/// and the runs below it).
enum RunCaller: Sendable, Hashable {
    case admin
    case agent(String, run: String?)

    var name: String {
        switch self {
        case .admin: return "admin"
        case .agent(let id, _): return id
        }
    }

    func may(access run: Run) -> Bool {
        switch self {
        case .admin: return true
        case .agent(let id, let bound): return run.agent == id && (bound.map { run.chain.contains($0) } ?? true)
        }
    }
}

/// The result of asking a store to create a run under an idempotency key.
enum RunCreation: Sendable {
    case created(Run)
    /// The same caller sent the same key with the same body within the window: the run it made then.
    case existing(Run)
    /// The same key with another body.
    case conflict
}

/// The result of reserving a call's charge on a run and its ancestors.
enum RunReservation: Sendable, Equatable {
    /// Reserved on the run and every ancestor (`chain`, nearest first): `ledger`, with the fetch bytes
    /// granted.
    case reserved(RunLedger, chain: [String])
    /// The run, or an ancestor (`run`), is not running: its status and why.
    case notRunning(run: String, RunStatus, reason: String?)
    /// Past `max_duration`: the store has failed the run (and put it on its stream).
    case expired(run: String)
    /// A dimension of this run's or an ancestor's budget would be exceeded.
    case exhausted(run: String, dimension: RunBudget.Dimension)
    /// The run belongs to another agent.
    case forbidden
    case unknown
}

/// Runs, their events, ledgers and idempotency keys. The embedded implementation keeps them in memory
/// and SQLite; the Redis one shares them across a fleet. Both pass the same contract tests
/// (`RunStoreContractTests`).
protocol RunStore: Sendable {
    /// Creates `run` unless (`caller`, `clientToken`) already made one within 24 h with the same `digest`
    /// of its body (then `.existing`) or another (then `.conflict`). Atomic: concurrent identical creates
    /// make one run. Appends the run's `run.created` event.
    func create(_ run: Run, caller: String, clientToken: String?, digest: String) async throws -> RunCreation
    /// What `create` would answer for a repeated (`caller`, `clientToken`) without creating anything:
    /// `.existing` or `.conflict`, nil when the key is unknown in the window. Asked when a create is about
    /// to be refused (the open-run cap): a replay of a run already made is answered, not refused.
    func previous(caller: String, clientToken: String, digest: String, now: Int64) async throws -> RunCreation?
    func run(_ id: String) async throws -> Run?
    /// Newest first; `cursor` is the last id of the previous page.
    func list(status: RunStatus?, agent: String?, cursor: String?, limit: Int) async throws -> (runs: [Run], next: String?)
    /// Applies a command atomically, with its event (`run.<status>`) in the same step (nil: no such run).
    func apply(_ command: RunStatus.Command, to id: String, reason: String?, now: Int64) async throws -> Result<Run, RunStatus.Refusal>?
    /// Charges a call to the run and every ancestor at once, or to none (`RunBudget.reserve`); refused
    /// past a budget, when any of them is not running, when `agent` is not the run's, or past
    /// `max_duration` (which fails the run).
    func reserve(_ id: String, agent: String, charge: RunCharge, now: Int64) async throws -> RunReservation
    /// Moves a call's charge from reserved to spent at what it really used, on every run of `chain`.
    func settle(chain: [String], reserved: RunLedger, actual: RunLedger) async throws
    /// Appends an event (nil: no such run, or not `agent`'s when one is named). Past `max_events` the
    /// oldest tenth is trimmed and a `run.events_trimmed` marker says so.
    func append(_ id: String, agent: String?, type: String, json: String, now: Int64) async throws -> RunEvent?
    /// Events after `after` (all from the start when nil), oldest first.
    func events(_ id: String, after: String?, limit: Int) async throws -> [RunEvent]
    /// Removes finished runs that ended before `cutoff` (`runs.retention`), with their events and keys.
    func purge(endedBefore cutoff: Int64) async throws -> Int
    /// Running runs whose `max_duration` has passed at `now` (the sweep fails them).
    func expired(now: Int64) async throws -> [String]
    /// Runs created, running or paused.
    func activeCount() async throws -> Int
    /// `agent`'s runs created, running or paused, for the cap `runs.max_open_per_agent` (`cap`: a store
    /// whose count may be stale re-checks it once it reaches the cap).
    func openCount(agent: String, cap: Int) async throws -> Int
    /// Whether `id` has the form of this store's event ids (a `Last-Event-ID` that does not is a 400).
    func validEventID(_ id: String) -> Bool
}

/// What of a run changes after its creation: status, times, owner, ledger. The embedded store writes this
/// alone on every change (the description, with its input, only once).
struct RunState: Codable, Sendable {
    var agent: String
    var status: RunStatus
    var startedAt: Int64?
    var endedAt: Int64?
    var reason: String?
    var spent: RunLedger
    var reserved: RunLedger

    init(_ run: Run) {
        agent = run.agent
        status = run.status
        startedAt = run.startedAt
        endedAt = run.endedAt
        reason = run.reason
        spent = run.spent
        reserved = run.reserved
    }

    func apply(to run: inout Run) {
        run.agent = agent
        run.status = status
        run.startedAt = startedAt
        run.endedAt = endedAt
        run.reason = reason
        run.spent = spent
        run.reserved = reserved
    }
}

extension RunStore {
    func append(_ id: String, agent: String?, type: String, data: JSONValue, now: Int64) async throws -> RunEvent? {
        try await append(id, agent: agent, type: type, json: data.serialized, now: now)
    }
}

extension Run {
    /// The first event of every run's stream.
    static func createdEvent(_ run: Run) -> (type: String, data: JSONValue) {
        ("run.created", ["status": .string(run.status.rawValue), "name": .string(run.name)])
    }

    /// The event a status change puts on the run's stream: `run.running`, `run.cancelled`, …
    static func statusEvent(_ run: Run, command: RunStatus.Command) -> (type: String, data: JSONValue) {
        var data: [String: JSONValue] = ["status": .string(run.status.rawValue), "command": .string(command.rawValue)]
        if let reason = run.reason { data["reason"] = .string(reason) }
        if run.status.isTerminal {
            data["final"] = .bool(true)
            data["ledger"] = ledgerJSON(run.spent)
        }
        return ("run.\(run.status.rawValue)", .object(data))
    }

    /// The fields a status change sets (both stores).
    static func transition(_ run: inout Run, to status: RunStatus, command: RunStatus.Command, reason: String?, now: Int64) {
        let changed = run.status != status
        run.status = status
        if status == .running, run.startedAt == nil { run.startedAt = now }
        if status.isTerminal, changed { run.endedAt = now }
        if changed, let reason { run.reason = reason }
        if command == .resume { run.reason = nil }
    }

    /// Whether `max_duration` has passed at `now`.
    func expired(at now: Int64) -> Bool {
        guard let max = budget.maxDurationSeconds, let started = startedAt else { return false }
        return now - started >= Int64(max) * 1000
    }

    var holding: RunBudget.Holding { RunBudget.Holding(budget: budget, held: spent + reserved) }
}
