import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Policy
import ServiceLifecycle
import Synchronization
import Upstreams

/// The runs API on the admin port (README "Agent runs"). Callers authenticate with the admin token, or
/// with an agent's own token for that agent's runs (a token bound to a run: that run and its children).
///
///     POST /api/runs                       create (idempotent per caller with client_token)
///     GET  /api/runs?status=&agent=&cursor=&limit=
///     GET  /api/runs/{id}
///     POST /api/runs/{id}/start|complete|fail|cancel|resume
///     GET  /api/runs/{id}/events           Server-Sent Events, Last-Event-ID resume
struct RunsAPI: Sendable {
    let runs: RunService
    let adminToken: AdminToken
    let authenticator: Authenticator?
    let maxBodyBytes: Int

    func register(on router: Router<AdminContext>) {
        let group = router.group("api/runs")
        group.post { request, _ in await respond { try await self.create(request, caller: try self.caller(request)) } }
        group.get { request, _ in await respond { try await self.list(request, caller: try self.caller(request)) } }
        group.get(":id") { request, context in
            await respond { try await self.get(try Self.id(context), caller: try self.caller(request)) }
        }
        for command in [RunStatus.Command.start, .complete, .fail, .cancel, .resume] {
            group.post(":id/\(command.rawValue)") { request, context in
                await respond { try await self.apply(command, request, id: try Self.id(context), caller: try self.caller(request)) }
            }
        }
        group.get(":id/events") { request, context in
            await respond {
                try await self.events(request, id: try Self.id(context), caller: try self.caller(request), connectionClosed: context.connectionClosed)
            }
        }
    }

    /// Every refusal as a problem answer (the one catalog), never a bare 500.
    private func respond(_ body: () async throws -> Response) async -> Response {
        await AdminProblem.respond(otherwise: .internalError(), body)
    }

    static func id(_ context: AdminContext) throws(GatewayError) -> String {
        let id = context.parameters.get("id") ?? ""
        // An id this sidecar could not have made is not looked up (and never created on the fly).
        guard Run.isValidID(id) else { throw GatewayError(.runNotFound, "no run \(id.prefix(64))") }
        return id
    }

    // MARK: Authentication

    /// The admin token, else an agent token (`Authorization: Bearer`, or `X-Agent-Token`).
    func caller(_ request: Request) throws(GatewayError) -> RunCaller {
        switch try AdminOrAgent.identify(request, adminToken: adminToken, authenticator: authenticator, metrics: runs.metrics) {
        case .admin: return .admin
        case .agent(let identity): return .agent(identity.agentID, run: identity.run)
        }
    }

    static func unauthorized(_ detail: String) -> GatewayError {
        GatewayError(.adminUnauthorized, detail, headers: [("WWW-Authenticate", #"Bearer realm="agent-sidecar-admin""#)])
    }

    // MARK: Routes

    func create(_ request: Request, caller: RunCaller) async throws(GatewayError) -> Response {
        let body: [String: JSONValue]
        switch await AdminBody.object(request, limit: maxBodyBytes) {
        case .success(let b): body = b
        case .failure(let e): throw e
        }
        var spec = try RunSpec.validate(body, caller: caller)
        if case .agent(_, let bound?) = caller, spec.parent == nil {
            throw GatewayError(.runForbidden, "a token bound to run \(bound) may only create children of it (parent_run_id)")
        }
        var chain: [String] = []
        var id = Run.newRootID()
        if let parentID = spec.parent {
            guard let parent = try await load(parentID), caller.may(access: parent) else {
                throw RunSpec.invalid("parent_run_id", "no such run")
            }
            guard parent.chain.count < Run.maxDepth else {
                throw RunSpec.invalid("parent_run_id", "runs nest at most \(Run.maxDepth) deep")
            }
            guard !parent.status.isTerminal else { throw RunSpec.invalid("parent_run_id", "the parent run is \(parent.status.rawValue)") }
            if let agent = spec.agent, !parent.agent.isEmpty, agent != parent.agent {
                throw RunSpec.invalid("agent_id", "a child run belongs to its parent's agent")
            }
            spec.agent = parent.agent
            id = Run.newChildID(parent: parent.id)
            chain = parent.chain
        }
        // An agent's unfinished runs are bounded; the operator (the admin token) is not. Checked before the
        // create, so two creates at once may pass one past the cap — a bound on growth, not a ledger.
        if case .agent = caller, let agent = spec.agent {
            let open: Int
            do { open = try await runs.store.openCount(agent: agent, cap: runs.settings.maxOpenPerAgent) } catch { throw RunService.storeError() }
            if open >= runs.settings.maxOpenPerAgent, let clientToken = spec.clientToken {
                // A replay of a create that succeeded is answered as below, not refused.
                let previous: RunCreation?
                do { previous = try await runs.store.previous(caller: caller.name, clientToken: clientToken, digest: spec.digest, now: runs.now()) } catch {
                    throw RunService.storeError()
                }
                if let previous { return try Self.answer(previous, runs: runs) }
            }
            guard open < runs.settings.maxOpenPerAgent else {
                throw GatewayError(
                    .tooManyOpenRuns,
                    "agent \(agent) has \(open) runs not finished (runs.max_open_per_agent \(runs.settings.maxOpenPerAgent)); complete, fail or cancel some first")
            }
        }
        let now = runs.now()
        let run = Run(
            id: id, agent: spec.agent ?? "", createdBy: caller.name, name: spec.name, input: spec.input, tags: spec.tags, status: .created,
            budget: spec.budget, parent: spec.parent, chain: [id] + chain, createdAt: now)
        let created: RunCreation
        do { created = try await runs.store.create(run, caller: caller.name, clientToken: spec.clientToken, digest: spec.digest) } catch {
            throw RunService.storeError()
        }
        return try Self.answer(created, runs: runs)
    }

    private static func answer(_ created: RunCreation, runs: RunService) throws(GatewayError) -> Response {
        switch created {
        case .created(let run):
            runs.metrics.runs.entered(.created)
            runs.announce([run.id])
            return json(runBody(run, extra: ["idempotent": false]), status: .created)
        case .existing(let run):
            runs.metrics.runs.idempotencyHits.increment()
            return json(runBody(run, extra: ["idempotent": true]), status: .ok)
        case .conflict:
            throw GatewayError(.idempotencyConflict, "this client_token was used in the last 24 h with a different request")
        }
    }

    func list(_ request: Request, caller: RunCaller) async throws(GatewayError) -> Response {
        let q = request.uri.queryParameters
        /// A query parameter read as one value: given twice, it is ambiguous (as on the proxy).
        func one(_ names: String...) throws(GatewayError) -> String? {
            let values = names.flatMap { q.getAll($0) }
            guard values.count <= 1 else { throw GatewayError(.ambiguousParameter, "\(names[0]) is given more than once; send it once") }
            return values.first
        }
        var status: RunStatus?
        if let s = try one("status") {
            guard let parsed = RunStatus(rawValue: s) else {
                throw RunSpec.invalid("status", "must be one of \(RunStatus.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            status = parsed
        }
        var agent = try one("agent", "agent_id")
        if case .agent(let own, _) = caller {
            if let agent, agent != own { throw GatewayError(.runForbidden, "an agent token lists only that agent's runs") }
            agent = own
        }
        var limit = 50
        if let l = try one("limit") {
            guard let n = Int(l), (1...200).contains(n) else { throw RunSpec.invalid("limit", "must be between 1 and 200") }
            limit = n
        }
        let cursor = try one("cursor")
        if let cursor, !Run.isValidID(cursor) { throw RunSpec.invalid("cursor", "must be the next_cursor of a previous page") }
        let page: (runs: [Run], next: String?)
        do { page = try await runs.store.list(status: status, agent: agent, cursor: cursor, limit: limit) } catch { throw RunService.storeError() }
        var out: [String: JSONValue] = ["runs": .array(page.runs.filter { caller.may(access: $0) }.map(\.json))]
        out["next_cursor"] = page.next.map { .string($0) } ?? .null
        return Self.json(.object(out), status: .ok)
    }

    func get(_ id: String, caller: RunCaller) async throws(GatewayError) -> Response {
        guard var run = try await load(id), caller.may(access: run) else { throw GatewayError(.runNotFound, "no run \(id)") }
        // A run past its max_duration is failed when it is looked at, not only at its next call.
        if run.status == .running, run.expired(at: runs.now()) {
            await runs.sweep()
            run = (try? await load(id)) ?? run
        }
        return Self.json(Self.runBody(run), status: .ok)
    }

    func apply(_ command: RunStatus.Command, _ request: Request, id: String, caller: RunCaller) async throws(GatewayError) -> Response {
        let body: [String: JSONValue]
        switch await AdminBody.object(request, limit: maxBodyBytes, allowEmpty: true) {
        case .success(let b): body = b
        case .failure(let e): throw e
        }
        var reason: String?
        switch body["reason"] {
        case nil, .null?: break
        case .string(let r)? where r.count <= 256: reason = r
        default: throw RunSpec.invalid("reason", "must be a string of at most 256 characters")
        }
        if command == .cancel, reason == nil { reason = "cancelled by \(caller.name == "admin" ? "the admin" : "agent \(caller.name)")" }
        let run = try await runs.command(command, run: id, caller: caller, reason: reason)
        return Self.json(Self.runBody(run), status: command == .cancel ? .accepted : .ok)
    }

    private func load(_ id: String) async throws(GatewayError) -> Run? {
        do { return try await runs.store.run(id) } catch { throw RunService.storeError() }
    }

    // MARK: Event stream

    func events(_ request: Request, id: String, caller: RunCaller, connectionClosed: EventLoopFuture<Void>? = nil) async throws(GatewayError) -> Response {
        guard let run = try await load(id), caller.may(access: run) else { throw GatewayError(.runNotFound, "no run \(id)") }
        // The header (what `EventSource` sends on reconnect) or the query; both, naming different events,
        // is ambiguous rather than one of them silently.
        let query = request.uri.queryParameters
        let named = ([request.headers[HTTPField.Name("Last-Event-ID")!]].compactMap { $0 } + query.getAll("last_event_id") + query.getAll("lastEventId"))
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard Set(named).count <= 1 else {
            throw GatewayError(.ambiguousParameter, "Last-Event-ID and last_event_id name different events; send one")
        }
        let last = named.first
        if let last, !last.isEmpty, !runs.store.validEventID(last) {
            throw GatewayError(.invalidParameter, "Last-Event-ID must be the id of an event of this stream")
        }
        guard let subscription = runs.hub.subscribe(run.id) else {
            throw GatewayError(
                .tooManyStreams, "run \(id) has \(runs.hub.maxStreamsPerRun) event streams open on this sidecar (runs.max_streams_per_run)",
                headers: [("Retry-After", "5")])
        }
        let stream = RunEventStream(
            runs: runs, run: run.id, after: last.flatMap { $0.isEmpty ? nil : $0 }, subscription: subscription, connectionClosed: connectionClosed)
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream; charset=utf-8"
        headers[.cacheControl] = "no-cache"
        headers[HTTPField.Name("X-Accel-Buffering")!] = "no"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in try await stream.write(to: &writer) })
    }

    // MARK: JSON

    /// A run as every route answers it: its fields at the top, and again under `run`.
    static func runBody(_ run: Run, extra: [String: JSONValue] = [:]) -> JSONValue {
        var o = run.json.objectValue ?? [:]
        o["run"] = run.json
        for (k, v) in extra { o[k] = v }
        return .object(o)
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status) -> Response { AdminRoutes.json(value, status: status) }
}

/// One client's event stream of a run: the events after its `Last-Event-ID`, read from the store, then
/// each new one as the hub says there is one — always read after the last id sent, so nothing is skipped
/// or sent twice. A comment line every `runs.heartbeat` keeps proxies from closing an idle stream; the
/// stream ends after the run's final event — or when the sidecar shuts down: the server's graceful
/// shutdown waits for every answer to end, and a stream of a running run would never end on its own (the
/// process hung until killed). The client reconnects (`retry: 2000`) with its `Last-Event-ID` and misses
/// nothing. A client that goes away ends its stream at once (its connection's close wakes the loop): a
/// stream noticed only at its next heartbeat write held one of the run's `max_streams_per_run` places
/// for up to two heartbeats, and a client reconnecting at once was refused 429.
struct RunEventStream: Sendable {
    let runs: RunService
    let run: String
    let after: String?
    let subscription: (wakes: AsyncStream<Void>, wake: @Sendable () -> Void, cancel: @Sendable () -> Void)
    var connectionClosed: EventLoopFuture<Void>?

    func write(to writer: inout any ResponseBodyWriter) async throws {
        runs.metrics.runs.sseConnections.increment()
        let heartbeat = runs.settings.heartbeat
        let wake = subscription.wake
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: heartbeat)
                wake()
            }
        }
        defer {
            ticker.cancel()
            subscription.cancel()
            runs.metrics.runs.sseConnections.decrement()
        }
        let stopping = ShutdownFlag()
        connectionClosed?.whenComplete { _ in
            stopping.raise()
            wake()
        }
        try await withGracefulShutdownHandler {
            try await stream(to: &writer, stopping: stopping)
        } onGracefulShutdown: {
            stopping.raise()
            wake()
        }
        try await writer.finish(nil)
    }

    private func stream(to writer: inout any ResponseBodyWriter, stopping: ShutdownFlag) async throws {
        let heartbeat = runs.settings.heartbeat
        var last = after
        var lastWrite = ContinuousClock.now
        try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
        var wakes = subscription.wakes.makeAsyncIterator()
        var checked = false
        while !stopping.isRaised {
            let batch = try await runs.store.events(run, after: last, limit: 500)
            var final = false
            if !batch.isEmpty {
                var out = ByteBuffer()
                for event in batch {
                    out.writeString(event.sse)
                    last = event.id
                    if event.isFinal { final = true }
                }
                try await writer.write(out)
                runs.metrics.runs.sseEvents.increment(by: Int64(batch.count))
                lastWrite = .now
            }
            if final { break }
            if batch.count == 500 { continue }
            // Resumed after the final event (or the run ended without one reaching this stream): done.
            if !checked || ContinuousClock.now - lastWrite >= heartbeat {
                checked = true
                if let status = try await runs.store.run(run)?.status, status.isTerminal,
                    try await runs.store.events(run, after: last, limit: 1).isEmpty
                {
                    break
                }
            }
            if ContinuousClock.now - lastWrite >= heartbeat {
                try await writer.write(ByteBuffer(string: ": heartbeat\n\n"))
                lastWrite = .now
            }
            guard await wakes.next() != nil else { break }
        }
    }
}

/// Set once by a graceful-shutdown handler or the client's going away, read by the stream's loop.
final class ShutdownFlag: Sendable {
    private let raised = Atomic<Bool>(false)
    func raise() { raised.store(true, ordering: .relaxed) }
    var isRaised: Bool { raised.load(ordering: .relaxed) }
}

/// A run creation request, validated: field errors all at once as 422 with per-field details.
struct RunSpec: Sendable {
    var name: String
    var input: JSONValue?
    var tags: [String]
    var clientToken: String?
    var budget: RunBudget
    var parent: String?
    var agent: String?
    /// SHA-256 of the request as validated (what `client_token` compares).
    var digest: String

    static func invalid(_ field: String, _ message: String) -> GatewayError {
        var e = GatewayError(.validationFailed, "the request is not valid; see errors")
        e.extensions["errors"] = [["field": .string(field), "message": .string(message)]]
        return e
    }

    static let budgetKeys = ["max_calls", "max_openai_tokens", "max_serpapi_searches", "max_emails", "max_fetch_bytes", "max_cost_usd", "max_duration"]

    static func validate(_ body: [String: JSONValue], caller: RunCaller) throws(GatewayError) -> RunSpec {
        var v = Validation()
        let known: Set<String> = ["name", "input", "tags", "client_token", "budget", "parent_run_id", "agent_id", "metadata"]
        for key in body.keys.sorted() where !known.contains(key) { v.fail(key, "is not a field of a run") }
        let name = v.string(body, "name", pattern: nil, maxLength: 128)
        let input = body["input"].flatMap { $0 == .null ? nil : $0 }
        if let input, input.serialized.utf8.count > 64 * 1024 { v.fail("input", "must be at most 64 KiB as JSON") }
        var tags: [String] = []
        switch body["tags"] {
        case nil, .null?: break
        case .array(let list)?:
            if list.count > 16 { v.fail("tags", "at most 16 tags") }
            for t in list {
                guard let s = t.stringValue, !s.isEmpty, s.count <= 64 else {
                    v.fail("tags", "each tag is a non-empty string of at most 64 characters")
                    break
                }
                tags.append(s)
            }
        default: v.fail("tags", "must be a list of strings")
        }
        var clientToken: String?
        switch body["client_token"] {
        case nil, .null?: break
        case .string(let s)? where (8...128).contains(s.utf8.count) && s.utf8.allSatisfy(Self.tokenByte): clientToken = s
        default: v.fail("client_token", "must be 8-128 characters of A-Z, a-z, 0-9, _ and -")
        }
        var parent: String?
        switch body["parent_run_id"] {
        case nil, .null?: break
        case .string(let s)? where Run.isValidID(s): parent = s
        default: v.fail("parent_run_id", "must be a run id")
        }
        var agent: String?
        switch (body["agent_id"], caller) {
        case (nil, _), (.null?, _): if case .agent(let own, _) = caller { agent = own }
        case (.string(let s)?, .admin) where !s.isEmpty && s.count <= 128: agent = s
        case (.string(let s)?, .agent(let own, _)) where s == own: agent = own
        case (.string?, .agent): v.fail("agent_id", "an agent creates runs for itself only")
        default: v.fail("agent_id", "must be an agent id")
        }
        let budget = Self.budget(body["budget"], &v)
        if let e = v.error { throw e }
        // What the key protects: the request as understood (canonical), so a retry with the keys in
        // another order is the same request, and one with any field changed is not.
        var canonical = body
        canonical["client_token"] = nil
        let digest = Digest.sha256Hex([JSONValue.object(canonical).serialized])
        return RunSpec(
            name: name!, input: input, tags: tags, clientToken: clientToken, budget: budget, parent: parent, agent: agent, digest: digest)
    }

    static func tokenByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
    }

    static func budget(_ node: JSONValue?, _ v: inout Validation) -> RunBudget {
        var b = RunBudget()
        guard let node, node != .null else { return b }
        guard case .object(let o) = node else {
            v.fail("budget", "must be an object")
            return b
        }
        for key in o.keys.sorted() where !budgetKeys.contains(key) { v.fail("budget.\(key)", "is not a budget dimension") }
        func count(_ key: String) -> Int? {
            guard let value = o[key], value != .null else { return nil }
            guard let d = value.doubleValue, d >= 0, d <= 1e15, d.rounded() == d else {
                v.fail("budget.\(key)", "must be a whole number, 0 or more")
                return nil
            }
            return Int(d)
        }
        b.maxCalls = count("max_calls")
        b.maxOpenAITokens = count("max_openai_tokens")
        b.maxSearches = count("max_serpapi_searches")
        b.maxEmails = count("max_emails")
        b.maxFetchBytes = count("max_fetch_bytes")
        if let value = o["max_cost_usd"], value != .null {
            if let d = value.doubleValue, d >= 0, d <= 1e9 { b.maxCostMicros = Int((d * 1_000_000).rounded()) } else {
                v.fail("budget.max_cost_usd", "must be a number of dollars, 0 or more")
            }
        }
        switch o["max_duration"] {
        case nil, .null?: break
        case .string(let s)?:
            if let d = DocumentReader.parseDuration(s), d >= .seconds(1), d <= .seconds(30 * 86_400) { b.maxDurationSeconds = Int(d.components.seconds) } else {
                v.fail("budget.max_duration", "must be a duration between 1s and 30d (90s, 15m, 2h) or a number of seconds")
            }
        case .number(let n)? where n >= 1 && n <= 30 * 86_400: b.maxDurationSeconds = Int(n.rounded(.up))
        default: v.fail("budget.max_duration", "must be a duration between 1s and 30d (90s, 15m, 2h) or a number of seconds")
        }
        return b
    }
}
