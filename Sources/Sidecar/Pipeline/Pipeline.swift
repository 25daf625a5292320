import Crypto
import NIOCore
import Policy
import NIOHTTP1
import Upstreams

/// A request as the connection hands it to the pipeline: head, buffered body, request id.
///
/// Request bodies are buffered (up to `limits.max_request_body_bytes`) because the parameter guards
/// must read them — an OpenAI model or a Gmail recipient is inside the JSON. Responses stream.
struct InboundRequest: Sendable {
    var head: HTTPRequestHead
    var body: ByteBuffer?
    var requestID: String
    /// Set for a request read inside an intercepted `CONNECT` tunnel: it goes to the tunnel's origin and
    /// is authenticated with the tunnel's token.
    var tunnel: TunnelPlan? = nil
    /// The connection's last credential, so a repeated token is not decoded and hashed again.
    var credentials: CredentialMemo? = nil
}

/// Per-tool settings the pipeline needs, compiled once from the configuration.
struct PipelineSettings: Sendable {
    var endpoints: PerTool<ToolEndpoint>
    var timeouts: PerTool<Duration>
    var mockTools: Set<Tool>
    var maxResponseBodyBytes: Int

    init(config: SidecarConfig) {
        endpoints = PerTool(config.tools.mapValues { ToolEndpoint(baseURL: $0.baseURL, upgradeFetchToHTTPS: $0.upgradeToHTTPS) })
        timeouts = PerTool(config.tools.mapValues(\.timeout))
        mockTools = config.mockTools
        maxResponseBodyBytes = config.limits.maxResponseBodyBytes
    }
}

/// The life of a request, in the documented stage order (README "Life of a request"):
///
///     classify ─► interpret (action, parameters) ─► credential ─► upstream ─► respond
///
/// Authentication and policy stages plug in between interpret and credential. Each stage either hands
/// a value to the next or ends the request with a `GatewayError`, which `ResponseMapper` turns into
/// the response in one place.
final class Pipeline: Sendable {
    let classifier: EntryClassifier
    let adapters: ToolAdapters
    let transport: any UpstreamTransport
    let credentials: any CredentialSource
    let settings: PipelineSettings
    /// nil when authentication is turned off (every call runs as the anonymous agent).
    let authenticator: Authenticator?
    let metrics: GatewayMetrics?
    /// nil in tests that exercise only the data plane.
    let policy: PolicyRuntime?
    let limits: (any LimitStore)?
    /// `limits` when it can decide from the loop (cast once here, not per request).
    let loopLimits: (any LoopLimitStore)?
    /// Cache, breakers, bulkheads and retries around the transport; nil = the bare transport (tests).
    let resilience: ResilientCaller?
    /// SSRF defence for http_fetch: IP-literal destinations are checked here (names by the transport).
    let egress: EgressGuard?
    /// CONNECT interception; nil refuses every CONNECT (`intercept.enabled: false`).
    let interception: Interception?
    /// Agent runs: calls that name one are charged to it, put on its stream, and can be killed.
    let runs: RunService?
    /// Keeps the concurrency leases of running calls alive (nil: leases only expire).
    let leases: LeaseRenewer?
    /// The secrets no outbound call may carry (nil: not checked, in tests of other stages).
    let secrets: SecretCatalog?
    /// The exactly-once ledger of side-effecting calls (nil: none).
    let idempotency: IdempotencyLedger?
    /// The signed receipt of every call (nil: receipts off).
    let receipts: ReceiptLog?
    /// Approval holds (nil: a rule's `approval:` cannot be met, so such calls are refused).
    let approvals: ApprovalService?
    /// Which agent was given which stored OpenAI response (nil: none is, so none can be named).
    let owners: ResponseOwners?

    init(
        classifier: EntryClassifier, adapters: ToolAdapters, transport: any UpstreamTransport,
        credentials: any CredentialSource, settings: PipelineSettings, authenticator: Authenticator? = nil,
        metrics: GatewayMetrics? = nil, policy: PolicyRuntime? = nil, limits: (any LimitStore)? = nil,
        resilience: ResilientCaller? = nil, egress: EgressGuard? = nil, interception: Interception? = nil, runs: RunService? = nil,
        leases: LeaseRenewer? = nil, secrets: SecretCatalog? = nil, idempotency: IdempotencyLedger? = nil, receipts: ReceiptLog? = nil,
        approvals: ApprovalService? = nil, owners: ResponseOwners? = nil
    ) {
        self.owners = owners
        self.approvals = approvals
        self.receipts = receipts
        self.idempotency = idempotency
        self.leases = leases
        self.secrets = secrets
        self.interception = interception
        self.runs = runs
        self.policy = policy
        self.limits = limits
        loopLimits = limits as? any LoopLimitStore
        self.resilience = resilience
        self.egress = egress
        self.classifier = classifier
        self.adapters = adapters
        self.transport = transport
        self.credentials = credentials
        self.settings = settings
        self.authenticator = authenticator
        self.metrics = metrics
    }

    func handle(_ request: InboundRequest, record: inout RequestRecord) async -> ProxyResponse {
        var response: ProxyResponse
        do {
            response = try await run(request, record: &record)
        } catch {
            response = problem(error, request: request, record: &record)
        }
        decorate(&response, record: record)
        return response
    }

    /// A request answered by the pipeline, with the record its stages filled in.
    struct Handled: Sendable {
        var response: ProxyResponse
        var record: RequestRecord
        /// The refusal or failure the response answers, if any (the idempotency ledger reads whether the
        /// upstream may have acted).
        var failure: GatewayError?
    }

    /// Runs a request without a Swift task as far as its stages allow, on the connection's loop: the
    /// common call — a policy without stateful limits, a credential in memory, no cache, a closed
    /// breaker, a free bulkhead and an HTTP/1.1 or mock upstream — is answered entirely on the loop.
    /// Wherever a stage has to wait (limit state, a credential refresh, a cache or bulkhead wait, a
    /// retry, an async-only transport), the same stages continue in a task from there. The answer is
    /// the same either way; only the cost differs.
    ///
    /// `then` gets the answer once, on `loop` — at once, before this returns, when nothing had to wait
    /// (a refusal, a mock). Returns how to cancel the request.
    func start(
        _ request: InboundRequest, record: consuming RequestRecord, on loop: any EventLoop, then: @escaping @Sendable (consuming Handled) -> Void
    ) -> @Sendable () -> Void {
        if let body = request.body, body.readableBytes >= Self.offLoopBodyBytes { return startOffLoop(request, record: record, on: loop, then: then) }
        let prepared: Prepared
        do {
            guard let p = try prepare(request, record: &record) else {
                return continued(request, on: loop, record: record, then: then) { (r: inout RequestRecord) throws(GatewayError) in
                    try await self.compat(request, record: &r)
                }
            }
            prepared = p
        } catch {
            then(failed(error, request: request, record: record))
            return {}
        }
        // A side effect (claimed in the idempotency ledger first), a call that needs approval or one that
        // names a stored response (its owner is read first): `call`, which every entry goes through, in a
        // task — or, for a side effect with none of the rest on a ledger that answers by callback, the
        // same stages on the loop.
        if isGuarded(prepared) {
            // The loop path is the ledger's claim and the plain stages, nothing else: only a call the ledger
            // covers, and none that waits for anything more (an approval, a run, an owner to read).
            if let ledger = idempotency, let store = ledger.callbacks, ledger.settings.covers(prepared.call.tool, action: prepared.call.action),
                prepared.evaluated.approval == nil, prepared.run == nil, Self.storedResponse(prepared.call) == nil
            {
                return onceOnly(prepared, ledger: ledger, store: store, request: request, record: record, on: loop, then: then)
            }
            let runCall = makeRunCall(prepared)
            record.runCall = runCall
            return inTask(request, on: loop, record: record, then: then, runCall: runCall) { (r: inout RequestRecord) throws(GatewayError) in
                try await self.call(prepared, record: &r, runCall: runCall)
            }
        }
        // A call of a run: admitted against the run's ledger — at once when the store can decide (the
        // embedded store), else in a task — and killable from then on.
        guard prepared.run != nil, let runs, let runCall = makeRunCall(prepared) else {
            return startAdmitted(prepared, request: request, record: record, on: loop, then: then, runCall: nil)
        }
        record.runCall = runCall
        switch runs.admitNow(runCall, identity: prepared.identity) {
        case nil:
            return runCallInTask(prepared, request: request, record: record, on: loop, then: then, runCall: runCall)
        case .failure(let error)?:
            then(failed(error, request: request, record: record))
            return {}
        case .success?:
            let cancel = startAdmitted(prepared, request: request, record: record, on: loop, then: then, runCall: runCall)
            runCall.onAbort(cancel)
            return cancel
        }
    }

    /// Bodies this large are read — interpreted, searched for keys, digested, and (mocked) answered — in a
    /// task on `LongReadExecutor`'s thread rather than on the connection's loop. Reading is linear, but a
    /// 30 MB JSON body held its loop for seconds (10–18 s in a debug build), and every other connection on
    /// that loop waited behind it.
    static let offLoopBodyBytes = 256 * 1024

    /// The whole request in a task: the stages every entry's task path runs (`call`, killable by its run),
    /// so the answer is the same as on the loop.
    private func startOffLoop(
        _ request: InboundRequest, record: consuming RequestRecord, on loop: any EventLoop, then: @escaping @Sendable (consuming Handled) -> Void
    ) -> @Sendable () -> Void {
        continued(request, on: loop, record: record, preferring: LongReadExecutor.shared, then: then) { (r: inout RequestRecord) throws(GatewayError) in
            guard let prepared = try self.prepare(request, record: &r) else { return try await self.compat(request, record: &r) }
            let runCall = self.makeRunCall(prepared)
            r.runCall = runCall
            return try await self.killable(runCall, record: &r) { (r: inout RequestRecord) throws(GatewayError) in
                try await self.call(prepared, record: &r, runCall: runCall)
            }
        }
    }

    /// credential ─► limits ─► upstream, on the loop as far as the stages allow, for a call that is not
    /// of a run or whose run admitted it.
    func startAdmitted(
        _ prepared: Prepared, request: InboundRequest, record: consuming RequestRecord, on loop: any EventLoop,
        then: @escaping @Sendable (consuming Handled) -> Void, runCall: RunCall?
    ) -> @Sendable () -> Void {
        // A credential to fetch: the rest waits, in a task.
        guard case .ready(let credential) = readyCredential(for: prepared.call.tool) else {
            return callInTask(prepared, request: request, record: record, on: loop, then: then, runCall: runCall)
        }
        if prepared.evaluated.checks.isEmpty {
            return startCall(prepared, admitted: nil, credential: credential, request: request, record: record, on: loop, then: then, runCall: runCall)
        }
        // Stateful limits: decided from the loop when the store can (embedded, or Redis on this loop's
        // connection), else in a task.
        guard let store = loopLimits,
            let admission = store.admit(agent: prepared.identity.agentID, checks: prepared.evaluated.checks, leaseID: request.requestID, on: loop)
        else { return callInTask(prepared, request: request, record: record, on: loop, then: then, runCall: runCall) }
        let next = LoopCancel(loop)
        let record = record
        admission.whenComplete { result in
            let admitted: Admitted
            do throws(GatewayError) {
                switch result {
                case .success(let a): admitted = try self.admitted(a, prepared.evaluated, identity: prepared.identity)
                case .failure(let e): throw Self.stateError(e)
                }
                if next.isCancelled {
                    self.settleSoon(admitted, refund: true, upstreamStatus: nil, on: loop)
                    throw GatewayError(UpstreamError(.cancelled, beforeSend: true, detail: "the agent went away"))
                }
            } catch {
                return then(self.failed(error, request: request, record: record))
            }
            next.then(
                self.startCall(prepared, admitted: admitted, credential: credential, request: request, record: record, on: loop, then: then, runCall: runCall))
        }
        return next.cancel
    }

    /// A call of a run, in a task that the run's kill switch can abort (`RunCall`).
    private func runCallInTask(
        _ prepared: Prepared, request: InboundRequest, record: consuming RequestRecord, on loop: any EventLoop,
        then: @escaping @Sendable (consuming Handled) -> Void, runCall: RunCall
    ) -> @Sendable () -> Void {
        inTask(request, on: loop, record: record, then: then, runCall: runCall) { (r: inout RequestRecord) throws(GatewayError) in
            try await self.callAdmittedByRun(prepared, record: &r, runCall: runCall)
        }
    }

    /// The rest of a request in a task (`continued`) that the call's run, when it has one, can abort.
    private func inTask(
        _ request: InboundRequest, on loop: any EventLoop, record: RequestRecord, then: @escaping @Sendable (consuming Handled) -> Void,
        runCall: RunCall?, _ body: @escaping @Sendable (inout RequestRecord) async throws(GatewayError) -> ProxyResponse
    ) -> @Sendable () -> Void {
        let cancel = continued(request, on: loop, record: record, then: then, body)
        runCall?.onAbort(cancel)
        return cancel
    }

    func makeRunCall(_ prepared: Prepared) -> RunCall? {
        guard let run = prepared.run else { return nil }
        let call = prepared.call
        // One usage meter per call: a token budget's, else one of its own for an OpenAI call.
        let meter = prepared.evaluated.meter ?? (call.tool == .openai ? OpenAIUsageMeter() : nil)
        return RunCall(
            run: run, agent: prepared.identity.agentID, role: prepared.identity.role, requestID: prepared.requestID, tool: call.tool,
            action: call.action, parameters: Self.policyParameters(call), fingerprint: RunCall.fingerprint(call), meter: meter,
            polls: Self.isPoll(call))
    }

    /// A read an agent repeats by design and that spends and changes nothing: a stored response polled
    /// until it is done, the model list an SDK reads to check its key. The loop breaker does not see it.
    static func isPoll(_ call: ToolCall) -> Bool {
        guard call.tool == .openai, call.request.method == .GET || call.request.method == .HEAD else { return false }
        return call.action == "models" || storedResponse(call) != nil
    }

    /// The rest of the call (admit, credential, upstream), from a task (`runCall`: already admitted by
    /// its run).
    private func callInTask(
        _ prepared: Prepared, request: InboundRequest, record: consuming RequestRecord, on loop: any EventLoop,
        then: @escaping @Sendable (consuming Handled) -> Void, runCall: RunCall? = nil
    ) -> @Sendable () -> Void {
        continued(request, on: loop, record: record, then: then) { (r: inout RequestRecord) throws(GatewayError) in
            try await self.callAdmitted(prepared, record: &r, runCall: runCall)
        }
    }

    /// credential ─► upstream ─► the agent's answer, on the loop as far as the stages allow (after the
    /// limits, when any, admitted the call).
    private func startCall(
        _ prepared: Prepared, admitted: Admitted?, credential: Credential?, request: InboundRequest, record: consuming RequestRecord,
        on loop: any EventLoop, then: @escaping @Sendable (consuming Handled) -> Void, runCall: RunCall? = nil
    ) -> @Sendable () -> Void {
        let call = Self.usageMeter(admitted, runCall) != nil ? Self.requestingUsage(prepared.call) : prepared.call
        let outbound: Outbound
        do {
            outbound = try self.outbound(call, requestID: request.requestID, evaluated: prepared.evaluated, credential: credential, record: &record)
        } catch {
            settleSoon(admitted, refund: true, upstreamStatus: nil, on: loop)
            then(failed(error, request: request, record: record))
            return {}
        }
        if let resilience {
            let traits = adapters.adapter(for: outbound.call.tool).traits(of: outbound.call)
            if let cancel = resilience.start(
                outbound.upstream, traits: traits, cacheKey: cacheKey(outbound.call, outbound.upstream), on: loop, record: record,
                then: { outcome in
                    let (result, record) = (consume outcome).parts()
                    then(self.answered(result, outbound, admitted: admitted, request: request, record: consume record, on: loop, runCall: runCall))
                })
            {
                return cancel
            }
        } else if let started = transport.start(outbound.upstream, on: loop) {
            let sent = record
            started.response.whenComplete { result in
                let call = result.map { ResilientCaller.Result(response: $0, release: {}) }.mapError { GatewayError(HTTPClientTransport.classify($0)) }
                then(self.answered(call, outbound, admitted: admitted, request: request, record: sent, on: loop, runCall: runCall))
            }
            return started.cancel
        }
        return continued(request, on: loop, record: record, then: then) { (r: inout RequestRecord) throws(GatewayError) in
            try await self.send(outbound, admitted: admitted, record: &r, runCall: runCall)
        }
    }

    /// The end of a call made on the loop: the upstream answer checked, cleaned and wrapped, or the
    /// failure as a problem (the limits settled: refunded when nothing was sent).
    private func answered(
        _ result: Swift.Result<ResilientCaller.Result, GatewayError>, _ outbound: Outbound, admitted: Admitted?, request: InboundRequest,
        record: consuming RequestRecord, on loop: any EventLoop, runCall: RunCall? = nil
    ) -> Handled {
        do throws(GatewayError) {
            let call = try result.get()
            let response = try received(call.response, release: call.release, outbound, record: &record)
            try Self.checkGrant(response, release: call.release, runCall: runCall)
            let answer = proxyResponse(
                response, release: call.release, admitted: admitted, requestID: request.requestID, scrubbed: !outbound.scrubber.isEmpty,
                addedUsage: Self.addedUsage(outbound.call), runCall: runCall)
            return self.answer(answer, record: consume record)
        } catch {
            settleSoon(admitted, refund: error.nothingSent, upstreamStatus: nil, on: loop)
            if record.upstreamDuration == nil, let start = record.upstreamStart { record.upstreamDuration = .now - start }
            return failed(error, request: request, record: record)
        }
    }

    /// The rest of a request in a task; its answer goes to `then` on the loop.
    private func continued(
        _ request: InboundRequest, on loop: any EventLoop, record: RequestRecord, preferring executor: (any TaskExecutor)? = nil,
        then: @escaping @Sendable (consuming Handled) -> Void,
        _ body: @escaping @Sendable (inout RequestRecord) async throws(GatewayError) -> ProxyResponse
    ) -> @Sendable () -> Void {
        loop.run(
            inTask: {
                var record = record
                do throws(GatewayError) {
                    let response = try await body(&record)
                    return self.answer(response, record: record)
                } catch {
                    return self.failed(error, request: request, record: record)
                }
            }, preferring: executor, then: then)
    }

    /// A refusal or failure as the agent's answer.
    func failed(_ error: GatewayError, request: InboundRequest, record: consuming RequestRecord) -> Handled {
        let response = problem(error, request: request, record: &record)
        var handled = answer(response, record: record)
        handled.failure = error
        return handled
    }

    func answer(_ response: consuming ProxyResponse, record: consuming RequestRecord) -> Handled {
        decorate(&response, record: record)
        return Handled(response: response, record: record)
    }

    /// Every refusal or failure as the agent's answer (one place: `ResponseMapper`).
    private func problem(_ error: GatewayError, request: InboundRequest, record: inout RequestRecord) -> ProxyResponse {
        var error = error
        // A call whose run was cancelled while it was in flight answers that, whatever stage it was in.
        if let runCall = record.runCall, runCall.killed, error.code != .runCancelled {
            error = GatewayError(.runCancelled, "run \(runCall.run) was cancelled while this call was in flight; the upstream call was aborted")
        }
        record.outcome = error.codeString
        return ResponseMapper.problem(error.forEntry(record.entry), requestID: request.requestID, entry: record.entry)
    }

    /// Headers every answer gets: the token rotation hint near its expiry.
    private func decorate(_ response: inout ProxyResponse, record: RequestRecord) {
        if let expiresAt = record.tokenExpiresAt {
            response.headers.add(name: "X-Token-Rotation-Recommended", value: "true")
            response.headers.add(name: "X-Token-Expires-At", value: RFC3339.format(expiresAt))
        }
    }

    /// The authenticate stage. Returns the identity, or `.anonymous` when authentication is off.
    func authenticate(
        token: (String, TokenCarrier)?, headers: HTTPHeaders, record: inout RequestRecord, memo: CredentialMemo? = nil
    ) throws(GatewayError) -> AgentIdentity {
        guard let authenticator else { return .anonymous }
        let digest = token.flatMap { t in memo?.digest(of: t.0) }
        switch authenticator.authenticate(token: token?.0, presentedAgentID: headers.first(name: "x-agent-id"), digest: digest) {
        case .success(let identity):
            record.agentID = identity.agentID
            record.tokenID = identity.tokenID
            if identity.rotationRecommended(now: authenticator.now()) { record.tokenExpiresAt = identity.expiresAt }
            return identity
        case .failure(let error):
            throw error
        }
    }

    /// The token's own scopes narrow what the agent may call.
    func checkScope(_ call: ToolCall, identity: AgentIdentity) throws(GatewayError) {
        guard identity.tokenAllows(call.scope) else {
            metrics?.securityEvent("scope_violation")
            throw GatewayError(.scopeDenied, "the token does not allow \(call.scope)")
        }
    }

    /// Removes whatever carried the token, so it never goes upstream (`X-Run-Id` never does either:
    /// `HeaderRules` keeps the sidecar's own fields back).
    static func removingCarrier(_ carrier: TokenCarrier?, from headers: HTTPHeaders) -> HTTPHeaders {
        guard let name = carrier?.fieldName else { return headers }
        var headers = headers
        headers.remove(name: name)
        return headers
    }

    /// A tool call through the synchronous stages: classified, authenticated, interpreted, within the
    /// token's scopes and allowed by the policy.
    struct Prepared: Sendable {
        var call: ToolCall
        var identity: AgentIdentity
        var evaluated: Evaluated
        var bodyBytes: Int
        var requestID: String
        /// The run the call belongs to (`X-Run-Id`, or the token's `run` claim).
        var run: String? = nil
    }

    /// The run a call names: the token's `run` claim or `X-Run-Id` — a token bound to a run cannot act for
    /// another. nil when neither names one.
    func runID(headers: HTTPHeaders, identity: AgentIdentity, record: inout RequestRecord) throws(GatewayError) -> String? {
        // The parser has taken the optional whitespace around the value off already.
        let named = headers.first(name: "x-run-id")
        guard named != nil || identity.run != nil else { return nil }
        if let named, !Run.isValidID(named) {
            throw GatewayError(.invalidParameter, "X-Run-Id must be a run id as POST /api/runs returns it (run_…)")
        }
        if let bound = identity.run, let named, named != bound {
            throw GatewayError(.runForbidden, "the token is bound to run \(bound); it cannot act for run \(named)")
        }
        guard runs != nil else { throw GatewayError(.runNotFound, "this sidecar keeps no runs") }
        let id = identity.run ?? named!
        record.runID = id
        return id
    }

    private func run(_ request: InboundRequest, record: inout RequestRecord) async throws(GatewayError) -> ProxyResponse {
        guard let prepared = try prepare(request, record: &record) else { return try await compat(request, record: &record) }
        return try await call(prepared, record: &record, runCall: isGuarded(prepared) ? makeRunCall(prepared) : nil)
    }

    /// What a call's receipt records of its request: its digest and the policy that decides it.
    static func noteForReceipt(_ request: InboundRequest, policyHash: String?, record: inout RequestRecord) {
        record.requestDigest = requestDigest(request)
        record.policyHash = policyHash
    }

    /// SHA-256 of what the agent asked: method, target and body bytes (for its receipt).
    static func requestDigest(_ request: InboundRequest) -> SHA256Value {
        var hasher = SHA256()
        var method = request.head.method.rawValue
        var uri = request.head.uri
        method.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        withUnsafeBytes(of: UInt8(ascii: " ")) { hasher.update(bufferPointer: $0) }
        uri.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        withUnsafeBytes(of: UInt8(ascii: "\n")) { hasher.update(bufferPointer: $0) }
        if let body = request.body { body.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) } }
        return SHA256Value(hasher.finalize())
    }

    /// The call is a side effect the ledger covers, needs approval, or names a stored response whose owner
    /// is read first: `call` guards it, in a task.
    func isGuarded(_ prepared: Prepared) -> Bool {
        prepared.evaluated.approval != nil || idempotency?.settings.covers(prepared.call.tool, action: prepared.call.action) == true
            || Self.storedResponse(prepared.call) != nil
    }

    /// classify ─► authenticate ─► interpret ─► scope ─► policy (synchronous). nil for the
    /// compatibility API, whose envelope is read by `compat`.
    func prepare(_ request: InboundRequest, record: inout RequestRecord) throws(GatewayError) -> Prepared? {
        // A request this sidecar sent upstream, come back: a tool's base_url (or the egress proxy) points
        // at the sidecar itself. Refused before anything else, or it would go round until a limit stopped it.
        if request.head.headers.contains(name: "via"), HeaderRules.isLoop(request.head.headers) {
            record.entry = ProxyHTTPHandler.entry(of: request.head, tunnel: request.tunnel)
            throw GatewayError(
                .forwardingLoop,
                "this request already went out of this sidecar: a tool's base_url or upstream.proxy points back at the sidecar itself")
        }
        if let problem = HostField.problem(in: request.head) {
            record.entry = ProxyHTTPHandler.entry(of: request.head, tunnel: request.tunnel)
            throw problem
        }
        let classification: Classification
        let classified =
            request.tunnel.map {
                classifier.classifyTunneled(method: request.head.method, uri: request.head.uri, host: request.head.headers.first(name: "host"), tunnel: $0.target)
            } ?? classifier.classify(method: request.head.method, uri: request.head.uri)
        switch classified {
        case .success(let c): classification = c
        case .failure(let e):
            record.entry = ProxyHTTPHandler.entry(of: request.head, tunnel: request.tunnel)
            throw GatewayError(e)
        }
        switch classification {
        case .connect:
            throw GatewayError.connectRefused()
        case .compat:
            record.entry = .compat
            if receipts != nil { Self.noteForReceipt(request, policyHash: policy?.policy.hash, record: &record) }
            if let problem = SingleValuedFields.problem(in: request.head.headers, entry: .compat) { throw problem }
            try checkExfiltration(request, tool: nil)
            return nil
        case .tool(let entry, let tool, let path, let query, let target):
            record.entry = entry
            record.tool = tool
            // With receipts: what was asked, and the policy snapshot that decides it (read once).
            let evaluator = receipts != nil ? policy?.evaluator : nil
            if receipts != nil { Self.noteForReceipt(request, policyHash: evaluator?.policy.hash, record: &record) }
            if let problem = SingleValuedFields.problem(in: request.head.headers, entry: entry) { throw problem }
            let token =
                request.tunnel.map { tunnel in tunnel.token.map { ($0.value, TokenCarrier.proxyAuthorization) } }
                ?? TokenExtractor.token(in: request.head.headers, forwardProxy: entry.isProxy, memo: request.credentials)
            let identity = try authenticate(token: token, headers: request.head.headers, record: &record, memo: request.credentials)
            // One parse of the query, read by the exfiltration search and by the tool's adapter alike.
            let query = QueryString(parsing: query)
            try checkExfiltration(request, tool: tool, query: query, carrier: token?.1)
            let run = try runID(headers: request.head.headers, identity: identity, record: &record)
            let toolRequest = ToolRequest(
                method: request.head.method, path: path, query: query,
                headers: Self.removingCarrier(token?.1, from: request.head.headers), body: request.body, target: target)
            let call = try interpret(toolRequest, tool: tool, record: &record)
            try checkScope(call, identity: identity)
            let bodyBytes = request.body?.readableBytes ?? 0
            let evaluated = try evaluate(call, identity: identity, bodyBytes: bodyBytes, evaluator: evaluator)
            return Prepared(call: call, identity: identity, evaluated: evaluated, bodyBytes: bodyBytes, requestID: request.requestID, run: run)
        }
    }

    /// [idempotency claim ─► approval ─►] admit (run, limits) ─► credential ─► upstream ─► the agent's answer.
    ///
    /// Every entry's call goes through here (the loop path of `start` too, for a guarded call), so a side
    /// effect is claimed and an approval required however the agent reached the sidecar.
    func call(_ prepared: Prepared, record: inout RequestRecord, runCall: RunCall? = nil) async throws(GatewayError) -> ProxyResponse {
        try await checkStoredResponse(prepared)
        guard let ledger = idempotency, ledger.settings.covers(prepared.call.tool, action: prepared.call.action) else {
            return try await approvedCall(prepared, record: &record, runCall: runCall)
        }
        let clientKey = try IdempotencyLedger.clientKey(in: prepared.call.request.headers).get()
        return try await onceOnly(prepared, ledger: ledger, clientKey: clientKey, record: &record, runCall: runCall)
    }

    /// admit (run, limits) ─► credential ─► upstream ─► the agent's answer.
    ///
    /// `runCall`: the call names a run. It is admitted against the run first (a cancelled run's calls go
    /// no further); a limit that refuses it afterwards gives the run its reservation back (at `finished`,
    /// as for every call that sent nothing). Killed meanwhile, the call answers `run_cancelled`.
    func callAdmittedByRun(_ prepared: Prepared, record: inout RequestRecord, runCall: RunCall? = nil) async throws(GatewayError) -> ProxyResponse {
        if let runCall, let runs { try await runs.admit(runCall, identity: prepared.identity) }
        return try await callAdmitted(prepared, record: &record, runCall: runCall)
    }

    func callAdmitted(_ prepared: Prepared, record: inout RequestRecord, runCall: RunCall?) async throws(GatewayError) -> ProxyResponse {
        let admitted = try await admitLimits(prepared.evaluated, identity: prepared.identity, requestID: prepared.requestID)
        let call = Self.usageMeter(admitted, runCall) != nil ? Self.requestingUsage(prepared.call) : prepared.call
        let outbound: Outbound
        do {
            let credential = try await self.credential(for: call.tool)
            outbound = try self.outbound(call, requestID: prepared.requestID, evaluated: prepared.evaluated, credential: credential, record: &record)
        } catch {
            await settle(admitted, refund: true, upstreamStatus: nil)
            throw error
        }
        return try await send(outbound, admitted: admitted, record: &record, runCall: runCall)
    }

    /// The upstream call (through cache, breaker, bulkhead and retries) and the agent's answer.
    func send(_ outbound: Outbound, admitted: Admitted?, record: inout RequestRecord, runCall: RunCall? = nil) async throws(GatewayError) -> ProxyResponse {
        let response: UpstreamResponse
        let release: @Sendable () -> Void
        do {
            (response, release) = try await upstream(outbound, record: &record)
            try Self.checkGrant(response, release: release, runCall: runCall)
        } catch {
            await settle(admitted, refund: error.nothingSent, upstreamStatus: nil)
            throw error
        }
        return proxyResponse(
            response, release: release, admitted: admitted, requestID: outbound.requestID, scrubbed: !outbound.scrubber.isEmpty,
            addedUsage: Self.addedUsage(outbound.call), runCall: runCall)
    }

    /// The call's usage meter: the token budget's, which a run shares, else the run's own.
    static func usageMeter(_ admitted: Admitted?, _ runCall: RunCall?) -> OpenAIUsageMeter? { admitted?.meter ?? runCall?.meter }

    /// An answer that declares more bytes than the run granted the call (what is left of its fetch bytes
    /// or, at the per-MB price, of its dollars) is refused before its head: 429 `run_budget_exhausted`.
    /// One that does not declare its size is cut at the grant as it streams.
    static func checkGrant(_ response: UpstreamResponse, release: @Sendable () -> Void, runCall: RunCall?) throws(GatewayError) {
        guard let runCall, let granted = runCall.reservation?.ledger.fetchBytes, granted > 0,
            let length = response.headers.first(name: "content-length").flatMap(Int.init), length > granted
        else { return }
        response.body.cancel()
        release()
        var e = GatewayError(
            .runBudgetExhausted, "the answer has \(length) bytes; run \(runCall.run) can pay for \(granted) more (its fetch bytes or cost budget)")
        e.extensions["dimension"] = .string(RunBudget.Dimension.fetchBytes.rawValue)
        e.extensions["run_id"] = .string(runCall.run)
        throw e
    }

    /// The upstream answer as the agent's: usage metered for budgets, headers cleaned, and what to do
    /// once the body has been written (free the bulkhead slot, settle the limits).
    ///
    /// `scrubbed`: the body passes the credential scrubber (`received`), so its length may change.
    /// `addedUsage`: the sidecar asked for the stream's usage chunk; the meter reads it, the agent does
    /// not get it (then the length may change too).
    /// `loop`: where a loop-path call settles its limits without a task (nil: in a task).
    func proxyResponse(
        _ response: UpstreamResponse, release: @escaping @Sendable () -> Void, admitted: Admitted?, requestID: String, scrubbed: Bool,
        addedUsage: Bool = false, runCall: RunCall? = nil
    ) -> ProxyResponse {
        var response = response
        var lengthChanges = scrubbed
        if let meter = Self.usageMeter(admitted, runCall) {
            response.body = response.body.observed(by: { meter.observe($0) }, finished: { meter.finish() })
            if addedUsage, HeaderRules.isEventStream(response.headers) {
                response.body = response.body.transformed(by: OpenAIAddedUsageRemover())
                lengthChanges = true
            }
        }
        var limit = settings.maxResponseBodyBytes
        if let runCall {
            // An answer whose call was granted fetch bytes (http_fetch: the only charge that reserves
            // them) is counted on the run's ledger as it streams and cut at the grant; no other answer is
            // wrapped for it. The kill switch can cut any answer.
            if let granted = runCall.reservation?.ledger.fetchBytes, granted > 0 {
                response.body = response.body.observed(by: { _ = runCall.count($0.readableBytes) }, finished: {})
                limit = min(limit, granted)
            }
            response.body = response.body.guarded(by: BodyGuard())
            let body = response.body
            runCall.onAbort { body.cancel() }
        }
        let status = Int(response.status.code)
        let body: ProxyResponse.Body
        if let buffered = response.body.bufferedBytes {
            body = .buffer(buffered)
        } else {
            body = .stream(response.body, limit: limit)
        }
        let completion: ProxyResponse.Completion
        if let admitted, loopLimits != nil {
            completion = .settle { loop in
                release()
                guard let loop else {
                    Task { await self.settle(admitted, refund: false, upstreamStatus: status) }
                    return
                }
                self.settleSoon(admitted, refund: false, upstreamStatus: status, on: loop)
            }
        } else if let admitted {
            completion = .async {
                release()
                await self.settle(admitted, refund: false, upstreamStatus: status)
            }
        } else {
            completion = .sync(release)
        }
        return ProxyResponse(
            status: response.status, headers: HeaderRules.agentHeaders(from: response.headers, requestID: requestID, dropLength: lengthChanges),
            body: body, completion: completion)
    }

    private func interpret(_ request: ToolRequest, tool: Tool, record: inout RequestRecord) throws(GatewayError) -> ToolCall {
        do {
            let call = try adapters.adapter(for: tool).interpret(request)
            record.action = call.action
            return call
        } catch {
            throw GatewayError(error)
        }
    }

    /// The request as it will leave the sidecar, and what the answer must be cleaned of.
    struct Outbound: Sendable {
        var call: ToolCall
        var upstream: UpstreamRequest
        var scrubber: SecretScrubber
        var requestID: String
    }

    /// The tool's credential, for brokered tools; nil for http_fetch and for mocks without one.
    func credential(for tool: Tool) async throws(GatewayError) -> Credential? {
        guard tool.isBrokered else { return nil }
        do { return try await credentials.credential(for: tool) } catch {
            guard settings.mockTools.contains(tool) else {
                var e = GatewayError(.credentialUnavailable, "the \(tool.rawValue) credential could not be obtained")
                e.nothingSent = true
                throw e
            }
            return nil
        }
    }

    /// The credential when it is in memory (no refresh to wait for); `.ready(nil)` for http_fetch, which
    /// brokers none.
    func readyCredential(for tool: Tool) -> CredentialLookup {
        tool.isBrokered ? credentials.readyCredential(for: tool) : .ready(nil)
    }

    /// endpoint ─► deadline ─► upstream request ─► egress check ─► credential injected (synchronous).
    func outbound(_ call: ToolCall, requestID: String, evaluated: Evaluated, credential: Credential?, record: inout RequestRecord) throws(GatewayError)
        -> Outbound
    {
        let tool = call.tool
        let endpoint = settings.endpoints[tool] ?? ToolEndpoint(baseURL: ToolEndpoint.defaultBaseURL(for: tool))
        var timeout = settings.timeouts[tool] ?? .seconds(30)
        // The agent may narrow (never widen) the deadline: X-Request-Timeout: 2.5 or 500ms. A value that is
        // not a positive duration is refused rather than ignored (a silent default would hide the mistake).
        if let raw = call.request.headers.first(name: "x-request-timeout") {
            guard let asked = DocumentReader.parseDuration(raw), asked > .zero else {
                var e = GatewayError(.invalidParameter, "X-Request-Timeout must be a positive number of seconds (2.5) or a duration (500ms, 3s)")
                e.nothingSent = true
                throw e
            }
            timeout = min(timeout, asked)
        }
        var upstream = UpstreamRequestBuilder.build(
            call: call, endpoint: endpoint, requestID: requestID, deadline: .now() + TimeAmount(timeout))
        let egressAllow = evaluated.egressAllow
        upstream.egressAllow = egressAllow
        upstream.hopCheck = evaluated.hopCheck
        let mock = settings.mockTools.contains(tool)
        record.mock = mock
        record.upstreamHost = mock ? nil : upstream.url.host
        if tool == .httpFetch, let egress, let ip = IPAddress.parse(upstream.url.host), let why = egress.refusal(ip, port: upstream.url.port, granted: egressAllow) {
            var e = GatewayError(.egressDenied, "the destination is not allowed for http_fetch (\(why))")
            e.nothingSent = true
            throw e
        }
        var scrubber = SecretScrubber([])
        if tool.isBrokered {
            // Compressed bodies could hide an echoed credential from the scrubber.
            upstream.headers.replaceOrAdd(name: "Accept-Encoding", value: "identity")
            if let credential, !credential.isEmpty {
                adapters.adapter(for: tool).authorize(&upstream, with: credential)
                scrubber = SecretScrubber(credential: credential)
            } else if !mock {
                // Never forward a brokered call unauthenticated.
                throw GatewayError.credentialUnavailable(tool.rawValue)
            }
        }
        record.upstreamStart = .now
        return Outbound(call: call, upstream: upstream, scrubber: scrubber, requestID: requestID)
    }

    /// Upstream through cache, breaker, bulkhead and retries. Returns the response with its body still
    /// streaming, and the release to call once it has been consumed.
    func upstream(_ outbound: Outbound, record: inout RequestRecord) async throws(GatewayError) -> (UpstreamResponse, @Sendable () -> Void) {
        let response: UpstreamResponse
        var release: @Sendable () -> Void = {}
        if let resilience {
            let traits = adapters.adapter(for: outbound.call.tool).traits(of: outbound.call)
            do {
                let result = try await resilience.call(
                    outbound.upstream, traits: traits, cacheKey: cacheKey(outbound.call, outbound.upstream), record: &record)
                response = result.response
                release = result.release
            } catch {
                record.upstreamDuration = MonotonicInstant.now - record.upstreamStart!
                throw error
            }
        } else {
            do {
                response = try await transport.send(outbound.upstream)
            } catch {
                record.upstreamDuration = MonotonicInstant.now - record.upstreamStart!
                throw GatewayError(error)
            }
        }
        return (try received(response, release: release, outbound, record: &record), release)
    }

    /// An upstream answer checked (declared size) and cleaned of echoed credentials (synchronous).
    func received(_ response: UpstreamResponse, release: @Sendable () -> Void, _ outbound: Outbound, record: inout RequestRecord) throws(GatewayError)
        -> UpstreamResponse
    {
        var response = response
        record.upstreamStatus = Int(response.status.code)
        // Only the chaos transport's own marks: an upstream that sends the header cannot put other text
        // (an echoed key, before the scrubber has run) into the access log.
        record.chaos = response.headers.first(name: "x-chaos-injected").flatMap { ChaosTransport.kinds.contains($0) ? $0 : nil }
        if let length = response.headers.first(name: "content-length").flatMap(Int.init), length > settings.maxResponseBodyBytes {
            response.body.cancel()
            release()
            throw GatewayError(UpstreamError(.responseTooLarge, beforeSend: false, detail: "content-length \(length)"))
        }
        // A transfer coding besides chunked (`gzip, chunked`) frames the bytes in a way the sidecar does
        // not undo, and the header is hop-by-hop: passed on without it, the coded bytes would reach the
        // agent as if they were the body (and past the scrubber unseen). Refused on every tool, as Envoy does.
        guard response.headers[canonicalForm: "transfer-encoding"].allSatisfy({ $0.lowercased() == "chunked" }) else {
            response.body.cancel()
            release()
            throw GatewayError(UpstreamError(.protocolError, beforeSend: false, detail: "a transfer coding besides chunked"))
        }
        // 407 is a proxy's word about its own credentials. Passed on, the agent would take it for the
        // sidecar — its proxy — refusing its token, and a client may answer it with its proxy
        // credentials: the agent token. A proxy between the sidecar and the API wants credentials the
        // sidecar does not have; that is the sidecar's failure to reach the API.
        guard response.status != .proxyAuthenticationRequired else {
            response.body.cancel()
            release()
            throw GatewayError(
                UpstreamError(.protocolError, beforeSend: false, detail: "the upstream answered 407: a proxy on the way to it wants credentials the sidecar does not have"))
        }
        let scrubber = outbound.scrubber
        if !scrubber.isEmpty {
            // An upstream may ignore `Accept-Encoding: identity`; an echoed key inside a compressed body would
            // pass the scrubber unseen and reach the agent, who decompresses it. So the body is decoded first
            // (bounded: a bomb stops at the size limit), and what cannot be decoded is not passed on at all.
            try decodeForScrubbing(&response, release: release)
            response.headers = scrubber.scrub(response.headers)
            response.body = response.body.scrubbed(by: scrubber)
            // Replacing a secret changes the length: `proxyResponse` leaves the upstream's
            // `Content-Length` out (`dropLength`), and the framing is recomputed for what is sent.
        }
        record.upstreamRequestID = HeaderRules.upstreamRequestID(response.headers)  // after the scrubber
        claimResponseID(&response, call: outbound.call, record: record)
        return response
    }

    /// Undoes a brokered answer's content coding (gzip, deflate) so the scrubber reads plain bytes; any
    /// other coding is a 502 `upstream_protocol_error` (a transfer coding besides chunked is refused before).
    func decodeForScrubbing(_ response: inout UpstreamResponse, release: @Sendable () -> Void) throws(GatewayError) {
        guard let coding = ContentCoding(headers: response.headers) else {
            response.body.cancel()
            release()
            throw GatewayError(.undecodable)
        }
        guard coding != .identity else { return }
        response.body = response.body.decoded(coding, limit: settings.maxResponseBodyBytes)
        response.headers.remove(name: "content-encoding")
        response.headers.remove(name: "content-length")
    }

    /// The cache key of a cacheable call, or nil (DESIGN.md §8: serpapi searches; http_fetch GET without
    /// the agent's own credentials; openai only when enabled, non-streaming, temperature 0; never Gmail).
    func cacheKey(_ call: ToolCall, _ upstream: UpstreamRequest) -> String? {
        guard let resilience, resilience.settings.tools[call.tool]!.cacheTTL > .zero else { return nil }
        let agentDirectives = call.request.headers["cache-control"].joined(separator: ",").lowercased()
        if agentDirectives.contains("no-cache") || agentDirectives.contains("no-store") { return nil }
        switch call.parameters {
        case .serpapi:
            return ResponseCache.serpAPIKey(call)
        case .httpFetch(let p):
            guard call.action == "get", !call.request.headers.contains(name: "authorization"), !call.request.headers.contains(name: "cookie") else {
                return nil
            }
            return ResponseCache.key(["http_fetch", p.url.description])
        case .openai(let p):
            // The exact bytes forwarded: a key from the sidecar's own reading could be shared by two bodies
            // the upstream reads differently.
            guard resilience.settings.openAICache, !p.stream, p.temperature == 0, let body = call.request.body else { return nil }
            return ResponseCache.key(["openai", call.request.path, String(buffer: body)])
        case .gmail:
            return nil
        }
    }
}
