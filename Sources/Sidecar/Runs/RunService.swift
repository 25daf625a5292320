import Foundation
import Logging
import Policy
import Synchronization
import Upstreams

/// `runs:` settings.
struct RunSettings: Sendable, Hashable {
    /// Events kept per run; past it the oldest tenth is trimmed, with a marker event.
    var maxEvents = 10_000
    /// Finished runs (and their events) are removed this long after they ended.
    var retention: Duration = .seconds(7 * 86_400)
    /// Concurrent event streams per run on one sidecar; more get 429 `too_many_streams`.
    var maxStreamsPerRun = 16
    /// A comment line on an idle event stream this often, so proxies keep it open.
    var heartbeat: Duration = .seconds(15)
    /// Runs not finished that one agent may hold; its next create is 429 `too_many_open_runs`. Every
    /// unfinished run is kept (the embedded store holds them in memory), so an agent creating runs it
    /// never finishes grew the sidecar without bound.
    var maxOpenPerAgent = 1000
}

/// Agent runs (README "Agent runs"): the one place that joins the run store, the tool calls that name a
/// run, the loop breaker, the kill switch and the event streams.
///
/// - A call that names a run is admitted here (`admit`): reserved on the run's ledger and its ancestors'
///   in one atomic store step, checked by the loop breaker, and registered as in flight.
/// - When its answer is over (`finished`, from the access-log point), what it used is settled and an
///   event goes on the run's stream.
/// - A run cancelled (API, `max_duration`, loop breaker) has its calls in flight aborted here, and on every
///   other sidecar through the fleet channel; later calls are refused by the store's state, which late
///   starters and reconnected sidecars read too.
final class RunService: Sendable {
    let store: any RunStore
    let hub: RunHub
    let metrics: GatewayMetrics
    let settings: RunSettings
    let policy: PolicyRuntime?
    let logger: Logger
    let now: @Sendable () -> Int64
    let sidecarID: String
    /// The largest answer a call may have: what a fetch call reserves up to.
    let maxFetchBytes: Int
    /// Tells the fleet (Redis pub/sub); nil on one host.
    private let publish: (@Sendable (String) -> Void)?

    /// In flight on this sidecar, by the call object (an integer's hash, where a request id is a string's).
    private let inflight = Mutex<[ObjectIdentifier: RunCall]>([:])
    /// The loop breaker's memory of each run's recent calls (this sidecar's share of them).
    private let detectors = Mutex<[String: LoopDetector]>([:])
    /// Runs killed lately: a call admitted just as its run was cancelled is caught by this.
    private let killed = Mutex(LRUCache<String, Void>(capacity: 4096))
    /// Kills begun on this sidecar (`killLocal`), counted before each one looks at the calls in flight: a
    /// call admitted while none began looks no further than this count (`admitted`).
    private let kills = Atomic<Int>(0)
    /// The store when it can decide at once (embedded): calls of a run stay on their event loop.
    private let immediate: EmbeddedRunStore?

    static let channel = "sidecar:runs"

    init(
        store: any RunStore, metrics: GatewayMetrics, settings: RunSettings, policy: PolicyRuntime?, logger: Logger, sidecarID: String,
        maxFetchBytes: Int, publish: (@Sendable (String) -> Void)? = nil, now: @escaping @Sendable () -> Int64 = unixMillis
    ) {
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.policy = policy
        self.logger = logger
        self.sidecarID = sidecarID
        self.maxFetchBytes = maxFetchBytes
        self.publish = publish
        self.now = now
        hub = RunHub(maxStreamsPerRun: settings.maxStreamsPerRun)
        immediate = store as? EmbeddedRunStore
        if let embedded = store as? EmbeddedRunStore {
            let hub = self.hub
            embedded.onDurable { hub.wake($0) }
        }
    }

    // MARK: Tool calls

    /// The charge a call reserves.
    /// (`evaluator`: the policy as the call is admitted — one snapshot for its charge and its loop check.)
    private func charge(of call: RunCall, _ evaluator: PolicyEvaluator?) -> RunCharge {
        RunCharge.reservation(
            tool: call.tool.rawValue, action: call.action, parameters: call.parameters, prices: evaluator?.policy.prices ?? RunPrices(),
            defaultTokens: evaluator?.defaultReservation ?? 1024, maxFetchBytes: maxFetchBytes)
    }

    /// Admits a call of `run` at once, on the request's event loop, when the store can decide without
    /// waiting (the embedded store, the run in memory); nil otherwise (`admit`).
    func admitNow(_ call: RunCall, identity: AgentIdentity) -> Result<Void, GatewayError>? {
        let evaluator = policy?.evaluator
        let killsBefore = kills.load(ordering: .sequentiallyConsistent)
        guard let immediate, let decided = immediate.reserveNow(call.run, agent: call.agent, charge: charge(of: call, evaluator), now: now()) else {
            return nil
        }
        do throws(GatewayError) {
            try admitted(call, decided, prices: evaluator?.policy.prices, killsBefore: killsBefore)
            if let refusal = loopCheck(call, identity: identity, evaluator) {
                // Refused (and given back) before the run is paused or cancelled, so it is not aborted as
                // one of the run's calls in flight.
                if refusal.action != .report { release(call) }
                loopDetected(call.run, refusal.verdict, action: refusal.action)
                if refusal.action != .report { return .failure(refusal.error) }
            }
            return .success(())
        } catch {
            return .failure(error)
        }
    }

    /// Admits a call of `run`: reserves its charge on the run and every ancestor, or refuses it with the
    /// run's own code. Then the loop breaker sees it.
    func admit(_ call: RunCall, identity: AgentIdentity) async throws(GatewayError) {
        let decided: RunReservation
        let evaluator = policy?.evaluator
        let killsBefore = kills.load(ordering: .sequentiallyConsistent)
        do { decided = try await store.reserve(call.run, agent: call.agent, charge: charge(of: call, evaluator), now: now()) } catch {
            throw Self.storeError()
        }
        try admitted(call, decided, prices: evaluator?.policy.prices, killsBefore: killsBefore)
        if let refusal = loopCheck(call, identity: identity, evaluator) {
            if refusal.action != .report { await finished(call, record: nil) }
            let found = loopFound(call.run, refusal.verdict, action: refusal.action)
            await act(on: call.run, found)
            if refusal.action != .report { throw refusal.error }
        }
    }

    /// The store's decision: the call registered as in flight, or its refusal.
    ///
    /// A kill stops the calls it finds in flight; one admitted as its run was being stopped may not be
    /// among them yet, so it looks for its run among the runs killed lately — when a kill began since
    /// `killsBefore` (the count read before the store's decision). A kill that began earlier changed the
    /// run's stored state first, so the store refused the call.
    private func admitted(_ call: RunCall, _ decided: RunReservation, prices: RunPrices?, killsBefore: Int) throws(GatewayError) {
        switch decided {
        case .reserved(let ledger, let chain):
            call.admitted(chain: chain, reserved: ledger, prices: prices ?? RunPrices())
            inflight.withLock { $0[ObjectIdentifier(call)] = call }
            if kills.load(ordering: .sequentiallyConsistent) != killsBefore, killed.withLock({ k in chain.contains { k.contains($0) } }) {
                kill(call)
            }
        case .unknown:
            throw GatewayError(.runNotFound, "no run \(call.run)")
        case .forbidden:
            throw GatewayError(.runForbidden, "run \(call.run) belongs to another agent")
        case .notRunning(let run, let status, let reason):
            throw Self.notRunning(call.run, run: run, status, reason: reason)
        case .expired(let run):
            metrics.runs.cancelled("max_duration")
            stopped(run, status: .failed)
            throw GatewayError(.runCancelled, "run \(run) passed its max_duration and was stopped")
        case .exhausted(let run, let dimension):
            metrics.runs.exhausted(dimension)
            var e = GatewayError(
                .runBudgetExhausted,
                run == call.run
                    ? "run \(run) has spent its \(dimension.rawValue) budget" : "run \(call.run)'s ancestor \(run) has spent its \(dimension.rawValue) budget")
            e.extensions["dimension"] = .string(dimension.rawValue)
            e.extensions["run_id"] = .string(run)
            throw e
        }
    }

    private struct LoopRefusal {
        var verdict: LoopDetector.Verdict
        var action: LoopDetector.Action
        var error: GatewayError
    }

    /// The loop breaker's look at an admitted call: nil, or the loop it makes.
    private func loopCheck(_ call: RunCall, identity: AgentIdentity, _ evaluator: PolicyEvaluator?) -> LoopRefusal? {
        guard !call.polls else { return nil }
        let loop = evaluator?.policy.loopSettings(agent: identity.agentID, role: identity.role) ?? LoopDetector.Settings()
        let now = now()
        let verdict = detectors.withLock { d -> LoopDetector.Verdict? in
            if let i = d.index(forKey: call.run) { return d.values[i].record(call.fingerprint, now: now) }
            if d.count >= 10_000 { d.removeAll() }
            var detector = LoopDetector(settings: loop)
            defer { d[call.run] = detector }
            return detector.record(call.fingerprint, now: now)
        }
        guard let verdict else { return nil }
        let error = GatewayError(
            .runLoopDetected, "run \(call.run) is \(loop.action == .pause ? "paused" : "cancelled") by the loop breaker: \(verdict.description)")
        return LoopRefusal(verdict: verdict, action: loop.action, error: error)
    }

    static func notRunning(_ id: String, run: String, _ status: RunStatus, reason: String?) -> GatewayError {
        let whose = run == id ? "run \(id)" : "run \(id)'s ancestor \(run)"
        switch status {
        case .created: return GatewayError(.runNotStarted, "\(whose) has not been started (POST /api/runs/\(run)/start)")
        case .paused:
            return GatewayError(.runLoopDetected, "\(whose) is paused\(reason.map { " (\($0))" } ?? ""); resume it with POST /api/runs/\(run)/resume")
        case .cancelled: return GatewayError(.runCancelled, "\(whose) was cancelled")
        case .failed where reason == "max_duration": return GatewayError(.runCancelled, "\(whose) passed its max_duration and was stopped")
        case .completed, .failed, .running: return GatewayError(.runFinished, "\(whose) is \(status.rawValue)")
        }
    }

    static func storeError() -> GatewayError {
        GatewayError(.stateUnavailable, "the run store is unavailable; try again shortly", headers: [("Retry-After", "1")])
    }

    /// What a finished call settles: its reservation and what it really used (nil: not admitted, or
    /// settled already).
    private func settlement(_ call: RunCall?, record: RequestRecord?) -> (chain: [String], reserved: RunLedger, actual: RunLedger)? {
        guard let call, let (chain, reserved, prices, killed, fetched) = call.unsettled else { return nil }
        let usage = call.meter?.usage.map { (input: $0.input, output: $0.output, total: $0.total) }
        let actual = RunCharge.actual(
            reserved: reserved, parameters: call.parameters, prices: prices, sent: record?.upstreamStart != nil,
            upstreamStatus: killed ? 499 : record?.upstreamStatus, usage: usage,
            // Never more than was granted: the chunk that crossed the grant was not passed on.
            fetchedBytes: reserved.fetchBytes > 0 ? min(fetched, reserved.fetchBytes) : fetched)
        return (chain, reserved, actual)
    }

    /// A call refused by the loop breaker right at admission gives its reservation back (at once).
    private func release(_ call: RunCall) {
        guard let s = settlement(call, record: nil), immediate?.settleNow(chain: s.chain, reserved: s.reserved, actual: s.actual) == true else {
            Task { await finished(call, record: nil) }
            return
        }
        call.markSettled()
        inflight.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(call)) }
    }

    /// The event a finished call puts on its run's stream, as JSON text (nil: none — the run does not
    /// exist, is not the agent's, or is over). Written out directly: one per call, on the request's path.
    private static func event(_ call: RunCall?, record: RequestRecord, actual: RunLedger?) -> String? {
        // A call refused because the run does not exist or is not the agent's is no event of that run; one
        // refused because the run is over would come after its final event.
        let killed = call?.killed == true
        switch record.outcome {
        case GatewayError.Code.runNotFound.rawValue, GatewayError.Code.runForbidden.rawValue, GatewayError.Code.runCancelled.rawValue,
            GatewayError.Code.runFinished.rawValue:
            if !killed { return nil }
        default:
            break
        }
        // Written as bytes field by field (integers as integers, one string made at the end): one event
        // per call of a run, on its path.
        var o: [UInt8] = []
        o.reserveCapacity(320)
        JSONBytes.field(#"{"request_id":"#, record.requestID, into: &o)
        JSONBytes.field(#","tool":"#, record.toolLabel, into: &o)
        JSONBytes.field(#","action":"#, record.actionLabel, into: &o)
        JSONBytes.field(#","status":"#, record.status, into: &o)
        JSONBytes.field(#","outcome":"#, killed ? GatewayError.Code.runCancelled.rawValue : record.outcome, into: &o)
        JSONBytes.literal(#","duration_ms":"#, into: &o)
        AccessLog.milliseconds(record.totalDuration ?? .zero, into: &o)
        JSONBytes.field(#","bytes_in":"#, record.bytesIn, into: &o)
        JSONBytes.field(#","bytes_out":"#, record.bytesOut, into: &o)
        if let actual {
            JSONBytes.literal(#","cost_usd":"#, into: &o)
            JSONBytes.micros(actual.costMicros, into: &o)
            if actual.openAITokens > 0 { JSONBytes.field(#","openai_tokens":"#, actual.openAITokens, into: &o) }
            if actual.fetchBytes > 0 { JSONBytes.field(#","fetch_bytes":"#, actual.fetchBytes, into: &o) }
        }
        if let s = record.upstreamStatus { JSONBytes.field(#","upstream_status":"#, s, into: &o) }
        if let c = record.cache { JSONBytes.field(#","cache":"#, c, into: &o) }
        o.append(UInt8(ascii: "}"))
        return String(decoding: o, as: UTF8.self)
    }

    /// The end of a call that named a run (from the access-log point): settled, put on the run's
    /// stream, counted by the loop breaker if refused — at once when the store can, else in a task.
    func finish(_ call: RunCall?, runID: String, agent: String?, record: RequestRecord) {
        call?.ended()
        if let immediate {
            let s = settlement(call, record: record)
            let data = Self.event(call, record: record, actual: s?.actual)
            let owner = call?.agent ?? agent
            guard let appended = immediate.finishNow(settle: s, event: data.map { (runID, owner, "tool.call", $0) }, now: now()) else {
                Task { await finished(call, runID: runID, agent: agent, record: record) }
                return
            }
            if s != nil, let call {
                call.markSettled()
                inflight.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(call)) }
            }
            switch appended {
            case nil:
                if let data { Task { await appendEvent(runID, agent: owner, data: data, record: record, role: call?.role) } }
            case .some(nil):
                return
            case .some(.some):
                refused(runID, record: record, role: call?.role)
            }
            return
        }
        Task { await finished(call, runID: runID, agent: agent, record: record) }
    }

    /// `finish` in a task: waits for the store.
    func finished(_ call: RunCall?, runID: String? = nil, agent: String? = nil, record: RequestRecord?) async {
        var actual: RunLedger?
        if let s = settlement(call, record: record), let call {
            call.markSettled()
            inflight.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(call)) }
            actual = s.actual
            do { try await store.settle(chain: s.chain, reserved: s.reserved, actual: s.actual) } catch {
                logger.warning("cannot settle a run's call; its reservation stays held", metadata: ["run": "\(call.run)", "error": "\(error)"])
            }
        }
        guard let record, let id = call?.run ?? runID, let data = Self.event(call, record: record, actual: actual) else { return }
        await appendEvent(id, agent: call?.agent ?? agent, data: data, record: record, role: call?.role)
    }

    private func appendEvent(_ id: String, agent: String?, data: String, record: RequestRecord, role: String?) async {
        let event: RunEvent?
        do { event = try await store.append(id, agent: agent, type: "tool.call", json: data, now: now()) } catch {
            logger.warning("cannot record a run's call on its stream", metadata: ["run": "\(id)", "error": "\(error)"])
            return
        }
        guard event != nil else { return }
        announce([id])
        refused(id, record: record, role: role)
    }

    /// The loop breaker also watches refusals: an agent that retries into its limits instead of backing off.
    private func refused(_ id: String, record: RequestRecord, role: String?) {
        guard record.status == 429, let policy else { return }
        let settings = policy.policy.loopSettings(agent: record.agentID ?? "", role: role ?? "")
        let verdict = detectors.withLock { d -> LoopDetector.Verdict? in
            guard d[id] != nil || d.count < 10_000 else { return nil }
            return d[id, default: LoopDetector(settings: settings)].recordRefusal(now: now())
        }
        guard let verdict else { return }
        loopDetected(id, verdict, action: detectors.withLock { $0[id]?.settings.action } ?? settings.action)
    }

    // MARK: The loop breaker

    /// A loop found in `run`: counted, logged, put on its stream and acted on — at once when the store
    /// can (the embedded store, the run in memory), else in a task.
    private func loopDetected(_ run: String, _ verdict: LoopDetector.Verdict, action: LoopDetector.Action) {
        let found = loopFound(run, verdict, action: action)
        if !actNow(on: run, found) { Task { await act(on: run, found) } }
    }

    /// What the loop breaker found, counted and logged once (whichever path then acts on it).
    private struct LoopFound {
        var action: LoopDetector.Action
        var reason: String
        var event: JSONValue

        /// The status change it asks for (`report` asks for none).
        var command: RunStatus.Command? {
            switch action {
            case .pause: return .pause
            case .cancel: return .cancel
            case .report: return nil
            }
        }
    }

    private func loopFound(_ run: String, _ verdict: LoopDetector.Verdict, action: LoopDetector.Action) -> LoopFound {
        metrics.runs.loopDetected(action)
        logger.notice("runaway loop detected", metadata: ["run": "\(run)", "action": "\(action.rawValue)", "why": "\(verdict.description)"])
        detectors.withLock { _ = $0.removeValue(forKey: run) }
        return LoopFound(
            action: action, reason: "loop: \(verdict.description)", event: ["action": .string(action.rawValue), "reason": .string(verdict.description)])
    }

    /// Acts on a loop at once; false when the store must be waited for (`act`), nothing done then.
    private func actNow(on run: String, _ found: LoopFound) -> Bool {
        guard let immediate, case .some = immediate.appendNow(run, agent: nil, type: "run.loop_detected", json: found.event.serialized, now: now())
        else { return false }
        if let command = found.command { applied(found, run: run, immediate.applyNow(command, to: run, reason: found.reason, now: now())) }
        return true
    }

    private func act(on run: String, _ found: LoopFound) async {
        _ = try? await store.append(run, agent: nil, type: "run.loop_detected", data: found.event, now: now())
        announce([run])
        if let command = found.command { applied(found, run: run, try? await store.apply(command, to: run, reason: found.reason, now: now())) }
    }

    /// The loop breaker's status change done: counted; a cancelled run is stopped everywhere.
    private func applied(_ found: LoopFound, run: String, _ result: Result<Run, RunStatus.Refusal>?) {
        guard case .success(let r)? = result else { return }
        switch (found.action, r.status) {
        case (.pause, .paused):
            metrics.runs.entered(.paused)
            announce([run])
        case (.cancel, .cancelled):
            metrics.runs.cancelled("loop")
            stopped(run, status: .cancelled)
        default:
            break
        }
    }

    // MARK: The kill switch

    /// A run that has just been cancelled or failed: its calls in flight here are aborted, the fleet is
    /// told, the state is counted.
    func stopped(_ run: String, status: RunStatus) {
        metrics.runs.entered(status)
        killLocal(run)
        publish?(JSONValue.object(["type": "kill", "run": .string(run), "from": .string(sidecarID)]).serialized)
        announce([run])
    }

    /// Aborts the calls in flight on this sidecar of `run` or of any run below it.
    func killLocal(_ run: String) {
        kills.add(1, ordering: .sequentiallyConsistent)
        _ = killed.withLock { $0.set(run, ()) }
        detectors.withLock { _ = $0.removeValue(forKey: run) }
        let calls = inflight.withLock { f in f.values.filter { $0.reservation?.chain.contains(run) ?? false } }
        for call in calls { kill(call) }
    }

    private func kill(_ call: RunCall) {
        if call.kill() { metrics.runs.killswitchAborts.increment() }
    }

    /// What another sidecar published on the fleet channel.
    func received(_ text: String) {
        guard let json = JSONValue.parse(Array(text.utf8)) else { return }
        switch json["type"]?.stringValue {
        case "kill":
            if let run = json["run"]?.stringValue, Run.isValidID(run) { killLocal(run) }
        case "events":
            if let runs = json["runs"]?.arrayValue { hub.wake(runs.compactMap(\.stringValue)) }
        default:
            break
        }
    }

    /// After the fleet channel (re)connects: any run with calls in flight here that was stopped while
    /// this sidecar was not listening is stopped here now.
    func catchUp() async {
        let runs = Set(inflight.withLock { $0.values.map(\.run) })
        for id in runs {
            guard let run = try? await store.run(id) else { continue }
            if run.status == .cancelled || run.status == .failed { killLocal(id) }
            for ancestor in run.chain.dropFirst() {
                if let a = try? await store.run(ancestor), a.status == .cancelled || a.status == .failed { killLocal(ancestor) }
            }
        }
    }

    /// Wakes this sidecar's streams of `runs`, and tells the fleet's (the embedded store wakes its own
    /// once events are written, so nothing is announced here before that).
    /// Puts an event that is not a tool call on a run's stream (approvals).
    func note(_ id: String, agent: String?, type: String, data: JSONValue) async {
        do {
            if try await store.append(id, agent: agent, type: type, json: data.serialized, now: now()) != nil { announce([id]) }
        } catch {
            logger.warning("cannot put an event on a run's stream", metadata: ["run": "\(id)", "type": "\(type)", "error": "\(error)"])
        }
    }

    func announce(_ runs: [String]) {
        guard let publish else { return }
        hub.wake(runs)
        publish(JSONValue.object(["type": "events", "runs": .array(runs.map { .string($0) }), "from": .string(sidecarID)]).serialized)
    }

    // MARK: The API's operations

    /// Applies a command to a run the caller may see; the refusal (404, 409) otherwise.
    func command(_ command: RunStatus.Command, run id: String, caller: RunCaller, reason: String?) async throws(GatewayError) -> Run {
        let before: Run
        let result: Result<Run, RunStatus.Refusal>?
        do {
            guard let run = try await store.run(id), caller.may(access: run) else { throw GatewayError(.runNotFound, "no run \(id)") }
            before = run
            result = try await store.apply(command, to: id, reason: reason, now: now())
        } catch let e as GatewayError {
            throw e
        } catch {
            throw Self.storeError()
        }
        switch result {
        case nil:
            throw GatewayError(.runNotFound, "no run \(id)")
        case .failure(let refusal)?:
            switch refusal {
            case .alreadyCancelled: throw GatewayError(.runAlreadyCancelled, "run \(id) was already cancelled")
            case .finished: throw GatewayError(.runFinished, "run \(id) is \(before.status.rawValue)")
            case .notPaused: throw GatewayError(.runNotPaused, "run \(id) is \(before.status.rawValue), not paused")
            }
        case .success(let run)?:
            if run.status != before.status {
                if run.status == .cancelled || run.status == .failed {
                    if run.status == .cancelled { metrics.runs.cancelled("api") }
                    stopped(id, status: run.status)
                } else {
                    metrics.runs.entered(run.status)
                    // A completed run makes no more calls: its loop breaker's memory goes with it.
                    if run.status.isTerminal { detectors.withLock { _ = $0.removeValue(forKey: id) } }
                    announce([id])
                }
            }
            return run
        }
    }

    /// Fails runs whose `max_duration` has passed, and aborts their calls (every 250 ms, every sidecar;
    /// the store's transition happens once).
    func sweep() async {
        let due: [String]
        do { due = try await store.expired(now: now()) } catch { return }
        for id in due {
            if case .success(let run)? = try? await store.apply(.fail, to: id, reason: "max_duration", now: now()), run.status == .failed {
                metrics.runs.cancelled("max_duration")
                stopped(id, status: .failed)
            }
        }
    }

    /// Runs until cancelled: the `max_duration` sweep, the active-runs gauge, retention.
    func runMaintenance() async {
        var tick = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            if Task.isCancelled { break }
            await sweep()
            tick += 1
            if tick % 40 == 1, let n = try? await store.activeCount() { metrics.runs.active.set(to: Double(n)) }
            if tick % 240 == 1 {
                let cutoff = now() - Int64(settings.retention.components.seconds) * 1000
                if let purged = try? await store.purge(endedBefore: cutoff), purged > 0 {
                    logger.info("finished runs past retention removed", metadata: ["runs": "\(purged)"])
                }
            }
        }
    }
}
