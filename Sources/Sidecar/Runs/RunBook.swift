import Policy
import Upstreams

/// The embedded run store's working state, in memory: the runs in use, each run's next event number,
/// and what has changed since it was last written to SQLite. Pure (no I/O, time passed in), so the
/// decisions are table-tested; `EmbeddedRunStore` is the shell that loads and writes it.
///
/// Every decision about a run — a status change, a reservation against it and its ancestors, an event —
/// is one method call under the store's lock, which is what makes reservations exact.
struct RunBook: Sendable {
    struct Pending: Sendable {
        var runs: [Run] = []
        var events: [(run: String, event: RunEvent)] = []
        /// Per run: delete events before this sequence number (the trim of `max_events`).
        var trims: [(run: String, before: Int64)] = []
        var isEmpty: Bool { runs.isEmpty && events.isEmpty && trims.isEmpty }
    }

    private(set) var runs: [String: Run] = [:]
    /// Per run: the next event's number and how many events it has (one lookup per appended event).
    private var streams: [String: (next: Int64, count: Int)] = [:]
    private var dirty: Set<String> = []
    private var pending = Pending()
    let maxEvents: Int

    init(maxEvents: Int) { self.maxEvents = max(10, maxEvents) }

    // Presence is asked with `index(forKey:)`: `runs[id] != nil` copies the run out of the table (every
    // field retained, then released) to compare it with nil — on every call of a run.
    func contains(_ id: String) -> Bool { runs.index(forKey: id) != nil }

    /// Adds a run read from storage (or just created), unless a newer copy is already here.
    mutating func insert(_ run: Run, lastSeq: Int64, events: Int) {
        guard runs.index(forKey: run.id) == nil else { return }
        runs[run.id] = run
        streams[run.id] = (lastSeq + 1, events)
    }

    /// Running runs past their `max_duration`.
    func expired(now: Int64) -> [String] { runs.values.filter { $0.status == .running && $0.expired(at: now) }.map(\.id) }

    /// Runs not finished (all of them are in memory: loaded at start, kept until they finish).
    var activeCount: Int { runs.values.reduce(0) { $0 + ($1.status.isTerminal ? 0 : 1) } }

    /// `agent`'s runs not finished (a walk over the runs in memory: asked once per create).
    func openCount(agent: String) -> Int { runs.values.reduce(0) { $0 + ($1.agent == agent && !$1.status.isTerminal ? 1 : 0) } }

    /// The ids of `ids` that are not in memory.
    func missing(_ ids: [String]) -> [String] { ids.filter { runs.index(forKey: $0) == nil } }

    /// Whether every run of `ids` is in memory (without making the list of those that are not).
    func hasAll(_ ids: [String]) -> Bool { ids.allSatisfy { runs.index(forKey: $0) != nil } }

    var hasPending: Bool { !dirty.isEmpty || !pending.isEmpty }

    /// Events appended and not yet taken for writing.
    var backlog: Int { pending.events.count }

    /// What to write, and nothing changed since.
    mutating func take() -> Pending {
        var out = pending
        out.runs = dirty.compactMap { runs[$0] }
        dirty.removeAll(keepingCapacity: true)
        pending = Pending()
        return out
    }

    /// Puts back a batch that could not be written, ahead of what changed since (the runs themselves
    /// are still here: written again from their current state).
    mutating func restore(_ batch: Pending) {
        for run in batch.runs where runs.index(forKey: run.id) != nil { dirty.insert(run.id) }
        pending.events = batch.events + pending.events
        pending.trims = batch.trims + pending.trims
    }

    /// Forgets finished runs that have been written (memory stays bounded by the active runs).
    mutating func evict(keeping limit: Int) {
        guard runs.count > limit else { return }
        for (id, run) in runs where run.status.isTerminal && !dirty.contains(id) && run.reserved == RunLedger() {
            runs[id] = nil
            streams[id] = nil
            if runs.count <= limit / 2 { break }
        }
    }

    mutating func forget(_ ids: [String]) {
        for id in ids {
            runs[id] = nil
            streams[id] = nil
            dirty.remove(id)
        }
    }

    // MARK: Decisions

    mutating func apply(_ command: RunStatus.Command, to id: String, reason: String?, now: Int64) -> Result<Run, RunStatus.Refusal>? {
        guard var run = runs[id] else { return nil }
        switch run.status.applying(command) {
        case .failure(let refusal):
            return .failure(refusal)
        case .success(let status):
            let changed = status != run.status
            Run.transition(&run, to: status, command: command, reason: reason, now: now)
            runs[id] = run
            dirty.insert(id)
            if changed {
                let event = Run.statusEvent(run, command: command)
                _ = append(id, type: event.type, data: event.data, now: now)
            }
            return .success(run)
        }
    }

    /// `reserve` when the run and its ancestors are in memory; nil when one is not (load it first).
    mutating func reserveIfLoaded(_ id: String, agent: String, charge: RunCharge, now: Int64) -> RunReservation? {
        guard let first = runs.index(forKey: id) else { return nil }
        let ids = inPlace(first) { $0.chain }
        guard let slots = slots(of: ids, first: first) else { return nil }
        return reserve(id, slots: slots, ids: ids, agent: agent, charge: charge, now: now)
    }

    /// Requires the run and its ancestors in memory (`missing` first).
    mutating func reserve(_ id: String, agent: String, charge: RunCharge, now: Int64) -> RunReservation {
        guard let first = runs.index(forKey: id) else { return .unknown }
        let ids = inPlace(first) { $0.chain }
        guard let slots = slots(of: ids, first: first) else { return .unknown }
        return reserve(id, slots: slots, ids: ids, agent: agent, charge: charge, now: now)
    }

    /// Where each run of a chain is in the table (nil: one is not in memory). The chain starts with the
    /// run itself, whose place is known: each id of a call's chain is hashed once per step, not twice.
    private func slots(of ids: [String], first: Dictionary<String, Run>.Index) -> [Dictionary<String, Run>.Index]? {
        var slots: [Dictionary<String, Run>.Index] = []
        slots.reserveCapacity(ids.count)
        for (k, runID) in ids.enumerated() {
            guard let slot = k == 0 ? first : runs.index(forKey: runID) else { return nil }
            slots.append(slot)
        }
        return slots
    }

    private mutating func reserve(
        _ id: String, slots: [Dictionary<String, Run>.Index], ids: [String], agent: String, charge: RunCharge, now: Int64
    ) -> RunReservation {
        var claimed = false
        let mine = inPlace(slots[0]) { r -> Bool in
            // A run made without an agent belongs to the first agent that calls in it.
            if r.agent.isEmpty {
                r.agent = agent
                claimed = true
            }
            return r.agent == agent
        }
        if claimed { dirty.insert(id) }
        guard mine else { return .forbidden }
        var holdings: [RunBudget.Holding] = []
        holdings.reserveCapacity(slots.count)
        for slot in slots {
            switch inPlace(slot, { Look($0, now: now) }) {
            case .running(let holding):
                holdings.append(holding)
            case .expired(let expired):
                _ = apply(.fail, to: expired, reason: "max_duration", now: now)
                return .expired(run: expired)
            case .notRunning(let run, let status, let reason):
                return .notRunning(run: run, status, reason: reason)
            }
        }
        switch RunBudget.reserve(charge, chain: holdings) {
        case .failure(let e):
            return .exhausted(run: ids[e.index], dimension: e.dimension)
        case .success(let ledger):
            for (slot, runID) in zip(slots, ids) {
                inPlace(slot) { $0.reserved = $0.reserved + ledger }
                dirty.insert(runID)
            }
            return .reserved(ledger, chain: ids)
        }
    }

    /// What a reservation needs of one run of the chain, read in place.
    private enum Look {
        case running(RunBudget.Holding)
        case expired(String)
        case notRunning(String, RunStatus, String?)

        init(_ r: Run, now: Int64) {
            if r.status != .running {
                self = .notRunning(r.id, r.status, r.reason)
            } else if r.expired(at: now) {
                self = .expired(r.id)
            } else {
                self = .running(r.holding)
            }
        }
    }

    /// `body` on the run at `slot`, in place. Every read here goes through this: read through the
    /// table's getter (`runs.values[slot].status`), a run — a large value — is copied out, each of its
    /// fields retained and released, several times per call of a run.
    @inline(__always)
    private mutating func inPlace<T>(_ slot: Dictionary<String, Run>.Index, _ body: (inout Run) -> T) -> T { body(&runs.values[slot]) }

    /// Requires the runs in memory (`missing` first); a run no longer stored is skipped.
    mutating func settle(chain: [String], reserved: RunLedger, actual: RunLedger) {
        for id in chain {
            guard let slot = runs.index(forKey: id) else { continue }
            settle(at: slot, id, reserved: reserved, actual: actual)
        }
    }

    /// `settle` when every run of the chain is in memory; false (nothing done) when one is not.
    mutating func settleIfLoaded(chain: [String], reserved: RunLedger, actual: RunLedger) -> Bool {
        guard let first = chain.first.flatMap({ runs.index(forKey: $0) }), let slots = slots(of: chain, first: first) else { return false }
        for (slot, id) in zip(slots, chain) { settle(at: slot, id, reserved: reserved, actual: actual) }
        return true
    }

    private mutating func settle(at slot: Dictionary<String, Run>.Index, _ id: String, reserved: RunLedger, actual: RunLedger) {
        inPlace(slot) { r in
            r.reserved = (r.reserved - reserved).atLeastZero
            r.spent = r.spent + actual
        }
        dirty.insert(id)
    }

    /// Appends an event (nil: the run is not in memory). At `maxEvents`, the oldest tenth goes first and
    /// a marker event says so: a reader never meets a silent gap.
    mutating func append(_ id: String, type: String, data: JSONValue, now: Int64) -> RunEvent? {
        append(id, type: type, json: data.serialized, now: now)
    }

    /// `append` for `agent`'s run: nil when the run is not in memory, `.some(nil)` when it is not the
    /// agent's (nil agent: anyone's).
    mutating func append(_ id: String, agent: String?, type: String, json: String, now: Int64) -> RunEvent?? {
        guard let slot = runs.index(forKey: id) else { return nil }
        guard agent == nil || inPlace(slot, { $0.agent == agent }) else { return .some(nil) }
        return .some(append(id, type: type, json: json, now: now))
    }

    mutating func append(_ id: String, type: String, json: String, now: Int64) -> RunEvent? {
        guard runs.index(forKey: id) != nil, let stream = streams.index(forKey: id) else { return nil }
        var (seq, count) = streams.values[stream]
        if count >= maxEvents {
            let keep = maxEvents - max(1, maxEvents / 10)
            let firstKept = seq - Int64(keep)
            pending.trims.append((id, firstKept))
            let marker = RunEvent(
                id: String(seq), type: "run.events_trimmed", at: now,
                data: ["trimmed_before": .string(String(firstKept)), "max_events": .number(Double(maxEvents))])
            pending.events.append((id, marker))
            seq += 1
            count = keep + 1
        }
        let event = RunEvent(id: String(seq), type: type, at: now, json: json)
        pending.events.append((id, event))
        streams.values[stream] = (seq + 1, count + 1)
        return event
    }
}
