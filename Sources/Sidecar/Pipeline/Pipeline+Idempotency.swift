import NIOCore
import NIOHTTP1
import Upstreams

/// The exactly-once stage for side-effecting calls (Gmail sends by default, `idempotency.calls`): before
/// a call is admitted, its key (agent, run, and the agent's `Idempotency-Key` or the digest of its
/// canonical parameters) is claimed in the ledger. Of identical calls, one proceeds; while it is in
/// flight the others get 409 `duplicate_in_flight`; once it succeeded they get its answer replayed
/// (`X-Idempotent-Replay: true`) and nothing is sent.
///
/// How the owner ends decides what the ledger keeps:
/// - a 2xx answer: kept for `idempotency.window` and replayed;
/// - a refusal before the upstream, or any answer but 2xx: the key is free again (nothing happened);
/// - sent but no answer (timeout, broken connection): *unknown* — identical calls are refused with
///   409 `duplicate_outcome_unknown` for the window rather than risk a second email.
extension Pipeline {
    /// The approval stage (when the policy asks for one), then admission and the call. A grant spent on
    /// a call that is then refused before anything was sent (a limit, the run) is given back.
    func approvedCall(_ prepared: Prepared, record: inout RequestRecord, runCall: RunCall?) async throws(GatewayError) -> ProxyResponse {
        guard let rule = prepared.evaluated.approval else { return try await callAdmittedByRun(prepared, record: &record, runCall: runCall) }
        guard let approvals else { throw GatewayError(.stateUnavailable, "this sidecar keeps no approvals; the call needs one") }
        let grant: Approval
        do {
            grant = try await approvals.authorize(
                prepared.call, agent: prepared.identity.agentID, run: prepared.run, rule: rule, policy: prepared.evaluated.policyHash)
        } catch {
            record.approvalID = error.extensions["approval_id"]?.stringValue
            throw error
        }
        record.approvalID = grant.id
        do { return try await callAdmittedByRun(prepared, record: &record, runCall: runCall) } catch {
            if !error.upstreamMayHaveActed { await approvals.restore(grant) }
            throw error
        }
    }

    func onceOnly(
        _ prepared: Prepared, ledger: IdempotencyLedger, clientKey: String?, record: inout RequestRecord, runCall: RunCall?
    ) async throws(GatewayError) -> ProxyResponse {
        let (key, digest, owner) = Self.claim(prepared, clientKey: clientKey)
        let decision: IdempotencyDecision
        do {
            decision = try await ledger.store.begin(key: key, digest: digest, owner: owner, inFlight: ledger.settings.inFlight)
        } catch {
            throw ledger.unavailable(error)
        }
        ledger.count(decision.label)
        record.idempotency = decision.label
        if let settled = Self.settled(by: decision, requestID: prepared.requestID) { return try settled.get() }
        var response: ProxyResponse
        do {
            response = try await approvedCall(prepared, record: &record, runCall: runCall)
        } catch {
            await finish(ledger, key: key, owner: owner, .after(error))
            throw error
        }
        guard (200..<300).contains(Int(response.status.code)) else {
            await finish(ledger, key: key, owner: owner, .released)
            return response
        }
        // Succeeded: the answer is read whole (side-effect answers are small), kept, then sent.
        let (kept, failure) = await Self.keptWhole(&response, ledger: ledger)
        await finish(ledger, key: key, owner: owner, .completed(kept))
        if let failure { throw failure }
        return response
    }

    /// The ledger key of a call (agent, run, the agent's key or else the digest of its parameters), the
    /// digest, and the owner token this call claims it with.
    static func claim(_ prepared: Prepared, clientKey: String?) -> (key: String, digest: String, owner: String) {
        let digest = RunCall.digest(prepared.call)
        let key = IdempotencyKey.make(agent: prepared.identity.agentID, run: prepared.run, clientKey: clientKey, digest: digest)
        return (key, digest, RequestID.generate())
    }

    /// What a decision other than `.proceed` answers: a replay, or a refusal. nil for `.proceed`.
    static func settled(by decision: IdempotencyDecision, requestID: String) -> Result<ProxyResponse, GatewayError>? {
        switch decision {
        case .proceed:
            return nil
        case .replay(let answer):
            return .success(IdempotencyLedger.replay(answer, requestID: requestID))
        case .inFlight:
            return .failure(
                GatewayError(
                    .duplicateInFlight, "an identical call is in flight; its answer will be replayed to this call once it completes",
                    headers: [("Retry-After", "1")]))
        case .outcomeUnknown:
            return .failure(
                GatewayError(
                    .duplicateOutcomeUnknown,
                    "an identical call reached the upstream but its answer was lost, so it may have taken effect; it is not sent again. Use a new Idempotency-Key to send it anyway"
                ))
        case .conflict:
            return .failure(GatewayError(.idempotencyConflict, "the Idempotency-Key was used before with a different call"))
        }
    }

    /// A 2xx answer made whole to be kept, when it already is (a buffer, or a live body that has fully
    /// arrived): its body as one buffer, the exchange's completion started, the framing set to the
    /// buffer; or, for a body over the answer's size limit or one its coding cannot undo, what is kept without it and the failure the
    /// agent gets instead. nil when the body is still arriving.
    static func keptWholeNow(_ response: inout ProxyResponse, ledger: IdempotencyLedger) -> (StoredAnswer, GatewayError?)? {
        let body: ByteBuffer
        var refusal: GatewayError?
        switch response.body {
        case .buffer(let b): body = b
        case .stream(let stream, let limit):
            // Taken out of the stream when it is complete: from here on this buffer is the body.
            do {
                guard let b = try stream.takeCompleteBody() else { return nil }
                body = b
                if b.readableBytes > limit { refusal = GatewayError(UpstreamError(.responseTooLarge, beforeSend: false, detail: "body over \(limit) bytes")) }
            } catch {
                (body, refusal) = (ByteBuffer(), GatewayError(error))
            }
        }
        response.completion.start()
        response.completion = .none
        if let refusal { return (withoutBody(response, ledger: ledger), refusal) }
        return (keep(&response, body: body, ledger: ledger), nil)
    }

    /// `keptWholeNow`, reading the rest of a body still arriving. A body that breaks off or is too large
    /// is kept as the answer's status and headers, and its failure returned too (the agent gets that).
    static func keptWhole(_ response: inout ProxyResponse, ledger: IdempotencyLedger) async -> (StoredAnswer, GatewayError?) {
        if let kept = keptWholeNow(&response, ledger: ledger) { return kept }
        var body: ByteBuffer?
        var failure: GatewayError?
        if case .stream(let stream, let limit) = response.body {
            do { body = try await stream.collect(upTo: limit) } catch {
                failure = GatewayError((error as? UpstreamError) ?? UpstreamError(.protocolError, beforeSend: false, detail: "the answer broke off"))
            }
        }
        await response.completion.run()
        response.completion = .none
        guard let body else { return (withoutBody(response, ledger: ledger), failure) }
        return (keep(&response, body: body, ledger: ledger), failure)
    }

    /// What is kept of an answer whose body could not be: its status and headers.
    private static func withoutBody(_ response: ProxyResponse, ledger: IdempotencyLedger) -> StoredAnswer {
        ledger.stored(status: Int(response.status.code), headers: response.headers, body: nil)
    }

    private static func keep(_ response: inout ProxyResponse, body: ByteBuffer, ledger: IdempotencyLedger) -> StoredAnswer {
        let kept = ledger.stored(status: Int(response.status.code), headers: response.headers, body: body)
        response.headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        response.headers.remove(name: "transfer-encoding")
        response.body = .buffer(body)
        return kept
    }

    /// `onceOnly` without a task, for a side effect with neither an approval nor a run, on a ledger that
    /// answers by callback (the embedded one): the key claimed (a hop to the ledger's writer and back),
    /// the loop path's stages, then the outcome recorded (another hop) before the agent gets the
    /// answer. It decides exactly as `onceOnly`; only a 2xx body still arriving is read in a task.
    func onceOnly(
        _ prepared: Prepared, ledger: IdempotencyLedger, store: any CallbackIdempotencyStore, request: InboundRequest,
        record: consuming RequestRecord, on loop: any EventLoop, then: @escaping @Sendable (consuming Handled) -> Void
    ) -> @Sendable () -> Void {
        let clientKey: String?
        switch IdempotencyLedger.clientKey(in: prepared.call.request.headers) {
        case .success(let key): clientKey = key
        case .failure(let error):
            then(failed(error, request: request, record: record))
            return {}
        }
        let (key, digest, owner) = Self.claim(prepared, clientKey: clientKey)
        let next = LoopCancel(loop)
        let record = record
        store.begin(key: key, digest: digest, owner: owner, inFlight: ledger.settings.inFlight) { result in
            loop.onLoop {
                var record = record
                let decision: IdempotencyDecision
                switch result {
                case .success(let d): decision = d
                case .failure(let error): return then(self.failed(ledger.unavailable(error), request: request, record: record))
                }
                ledger.count(decision.label)
                record.idempotency = decision.label
                switch Self.settled(by: decision, requestID: prepared.requestID) {
                case .success(let replay)?: return then(self.answer(replay, record: record))
                case .failure(let error)?: return then(self.failed(error, request: request, record: record))
                case nil: break
                }
                let end = OnceOnlyEnd(pipeline: self, ledger: ledger, store: store, key: key, owner: owner, request: request, loop: loop, then: then)
                if next.isCancelled {
                    return end.record(self.failed(GatewayError(UpstreamError(.cancelled, beforeSend: true, detail: "the agent went away")), request: request, record: record))
                }
                next.then(self.startAdmitted(prepared, request: request, record: record, on: loop, then: end.record, runCall: nil))
            }
        }
        return next.cancel
    }

    private func finish(_ ledger: IdempotencyLedger, key: String, owner: String, _ outcome: LedgerOutcome) async {
        do { try await ledger.store.finish(key: key, owner: owner, outcome: outcome, window: ledger.settings.window) } catch {
            ledger.notRecorded(error)
        }
    }
}

/// How a side effect on the loop path ends: the outcome recorded in the ledger as `onceOnly` records it
/// (a failure after which the upstream may have acted: unknown; any other failure or a non-2xx answer:
/// released; a 2xx answer: kept whole and replayable), then the answer handed on, on the loop.
private struct OnceOnlyEnd: Sendable {
    let pipeline: Pipeline
    let ledger: IdempotencyLedger
    let store: any CallbackIdempotencyStore
    let key: String
    let owner: String
    let request: InboundRequest
    let loop: any EventLoop
    let then: @Sendable (consuming Pipeline.Handled) -> Void

    var record: @Sendable (consuming Pipeline.Handled) -> Void { { self.ended($0) } }

    private func ended(_ handled: consuming Pipeline.Handled) {
        var handled = handled
        if let failure = handled.failure {
            return finish(.after(failure), handled)
        }
        guard (200..<300).contains(Int(handled.response.status.code)) else { return finish(.released, handled) }
        if let (kept, failure) = Pipeline.keptWholeNow(&handled.response, ledger: ledger) {
            if let failure { handled = pipeline.failed(failure, request: request, record: handled.record) }
            return finish(.completed(kept), handled)
        }
        // The body is still arriving: read in a task.
        let taken = handled
        Task {
            var handled = taken
            let (kept, failure) = await Pipeline.keptWhole(&handled.response, ledger: ledger)
            if let failure { handled = pipeline.failed(failure, request: request, record: handled.record) }
            finish(.completed(kept), handled)
        }
    }

    private func finish(_ outcome: LedgerOutcome, _ handled: consuming Pipeline.Handled) {
        let handled = handled
        store.finish(key: key, owner: owner, outcome: outcome, window: ledger.settings.window) { [ledger, loop, then] result in
            if case .failure(let error) = result { ledger.notRecorded(error) }
            loop.onLoop { then(handled) }
        }
    }
}

extension LedgerOutcome {
    /// How a call that failed ends in the ledger: unknown when the upstream may have acted on it (never
    /// sent again), else released (nothing happened).
    static func after(_ failure: GatewayError) -> LedgerOutcome { failure.upstreamMayHaveActed ? .unknown : .released }
}
