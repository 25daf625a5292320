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
        let digest = RunCall.digest(prepared.call)
        let key = IdempotencyKey.make(agent: prepared.identity.agentID, run: prepared.run, clientKey: clientKey, digest: digest)
        let owner = RequestID.generate()
        let decision: IdempotencyDecision
        do {
            decision = try await ledger.store.begin(key: key, digest: digest, owner: owner, inFlight: ledger.settings.inFlight)
        } catch {
            // Without the ledger a duplicate cannot be told apart: refused, like a security limit.
            ledger.count("store_error")
            ledger.logger.warning("idempotency ledger unavailable; side-effecting call refused", metadata: ["error": "\(error)"])
            throw GatewayError(.stateUnavailable, "the idempotency ledger is unavailable; the side-effecting call was not sent")
        }
        ledger.count(decision.label)
        record.idempotency = decision.label
        switch decision {
        case .proceed:
            break
        case .replay(let answer):
            return IdempotencyLedger.replay(answer, requestID: prepared.requestID)
        case .inFlight:
            throw GatewayError(
                .duplicateInFlight, "an identical call is in flight; its answer will be replayed to this call once it completes",
                headers: [("Retry-After", "1")])
        case .outcomeUnknown:
            throw GatewayError(
                .duplicateOutcomeUnknown,
                "an identical call reached the upstream but its answer was lost, so it may have taken effect; it is not sent again. Use a new Idempotency-Key to send it anyway")
        case .conflict:
            throw GatewayError(.idempotencyConflict, "the Idempotency-Key was used before with a different call")
        }
        var response: ProxyResponse
        do {
            response = try await approvedCall(prepared, record: &record, runCall: runCall)
        } catch {
            await finish(ledger, key: key, owner: owner, error.upstreamMayHaveActed ? .unknown : .released)
            throw error
        }
        guard (200..<300).contains(Int(response.status.code)) else {
            await finish(ledger, key: key, owner: owner, .released)
            return response
        }
        // Succeeded: the answer is read whole (side-effect answers are small), kept, then sent.
        var body: ByteBuffer?
        var failure: GatewayError?
        switch response.body {
        case .buffer(let b): body = b
        case .stream(let stream, let limit):
            do { body = try await stream.collect(upTo: limit) } catch {
                failure = GatewayError((error as? UpstreamError) ?? UpstreamError(.protocolError, beforeSend: false, detail: "the answer broke off"))
            }
        }
        await response.completion.run()
        response.completion = .none
        await finish(ledger, key: key, owner: owner, .completed(ledger.stored(status: Int(response.status.code), headers: response.headers, body: body)))
        if let failure { throw failure }
        let bytes = body ?? ByteBuffer()
        response.headers.replaceOrAdd(name: "Content-Length", value: String(bytes.readableBytes))
        response.headers.remove(name: "transfer-encoding")
        response.body = .buffer(bytes)
        return response
    }

    private func finish(_ ledger: IdempotencyLedger, key: String, owner: String, _ outcome: LedgerOutcome) async {
        do { try await ledger.store.finish(key: key, owner: owner, outcome: outcome, window: ledger.settings.window) } catch {
            // The call itself is done; a later identical call may find the key still in flight (until
            // `in_flight` passes) rather than replayed.
            ledger.count("store_error")
            ledger.logger.warning("idempotency ledger: the outcome of a call could not be recorded", metadata: ["error": "\(error)"])
        }
    }
}
