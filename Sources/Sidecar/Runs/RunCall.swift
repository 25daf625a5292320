import NIOCore
import Policy
import Synchronization
import Upstreams

/// One tool call that names a run, from admission to its last byte: what it reserved on the run's
/// ledger, what it has used so far, and how to abort it — the kill switch's handle on a call in flight.
///
/// The pipeline hands it the ways to stop the call as they appear (the task waiting for the upstream,
/// then the answer's body as it streams); `kill()` sets the flag the pipeline reads to answer
/// `run_cancelled`, and runs them. Each is run at most once, also when added after the kill.
final class RunCall: Sendable {
    let run: String
    let agent: String
    /// The agent's role: which loop-breaker settings apply.
    let role: String
    let requestID: String
    let tool: Tool
    let action: String
    let parameters: CallParameters
    /// What the loop breaker compares (`RunCall.fingerprint`).
    let fingerprint: CallFingerprint
    /// A status poll (a stored response read until it is done): the same call by design, many times,
    /// so the loop breaker does not see it — the run's ledger still counts it.
    let polls: Bool
    /// Reads an OpenAI answer's usage as it streams (openai calls only; the token budget's when one
    /// applies, so both settle from the same reading).
    let meter: OpenAIUsageMeter?

    private struct State {
        var admitted = false
        var chain: [String] = []
        var reserved = RunLedger()
        /// The prices the call was admitted under: it settles at them too.
        var prices = RunPrices()
        var fetched = 0
        var killed = false
        var aborts: [@Sendable () -> Void] = []
        var settled = false
        var ended = false
    }

    private let state = Mutex(State())

    init(
        run: String, agent: String, role: String, requestID: String, tool: Tool, action: String, parameters: CallParameters, fingerprint: CallFingerprint,
        meter: OpenAIUsageMeter?, polls: Bool = false
    ) {
        self.polls = polls
        self.run = run
        self.agent = agent
        self.role = role
        self.requestID = requestID
        self.tool = tool
        self.action = action
        self.parameters = parameters
        self.fingerprint = fingerprint
        self.meter = meter
    }

    var killed: Bool { state.withLock { $0.killed } }

    /// The reservation made at admission (fetch calls: `fetchBytes` is the most the answer may have).
    var reservation: (chain: [String], ledger: RunLedger)? {
        state.withLock { $0.admitted ? ($0.chain, $0.reserved) : nil }
    }

    func admitted(chain: [String], reserved: RunLedger, prices: RunPrices) {
        state.withLock { s in
            s.admitted = true
            s.chain = chain
            s.reserved = reserved
            s.prices = prices
        }
    }

    /// What settling the call needs, read in one step: nil when it was not admitted or is settled.
    var unsettled: (chain: [String], reserved: RunLedger, prices: RunPrices, killed: Bool, fetched: Int)? {
        state.withLock { s in s.admitted && !s.settled ? (s.chain, s.reserved, s.prices, s.killed, s.fetched) : nil }
    }

    /// Counts answer bytes as they stream (fetch bytes of the ledger); returns false past the grant.
    func count(_ bytes: Int) -> Bool {
        state.withLock { s in
            s.fetched += bytes
            return s.reserved.fetchBytes == 0 || s.fetched <= s.reserved.fetchBytes
        }
    }

    /// A way to stop the call; run at once when the call was already killed.
    func onAbort(_ abort: @escaping @Sendable () -> Void) {
        let now: Bool = state.withLock { s in
            if s.killed { return true }
            // A call can end before its starter registers how to abort it (an answer ready at once):
            // nothing is left to abort, and keeping the closure would keep the call.
            if s.ended { return false }
            s.aborts.append(abort)
            return false
        }
        if now { abort() }
    }

    /// Stops the call (the kill switch). Returns whether this call was stopped now (false when it had
    /// been already).
    @discardableResult
    func kill() -> Bool {
        let aborts: [@Sendable () -> Void]? = state.withLock { s in
            guard !s.killed else { return nil }
            s.killed = true
            defer { s.aborts.removeAll() }
            return s.aborts
        }
        guard let aborts else { return false }
        for abort in aborts { abort() }
        return true
    }

    /// A call settles once, whichever path ends it.
    func markSettled() { state.withLock { $0.settled = true } }

    /// The call is over: nothing of it is left to abort. Its abort closures are dropped here, and any
    /// registered later are not kept — they reach the call's own stages, which hold this object, so kept
    /// they would keep every finished call of a run (its request, record and buffers) alive: the cycle
    /// is broken when the call ends, not when the run is killed.
    func ended() {
        state.withLock { s in
            s.ended = true
            s.aborts.removeAll()
        }
    }
}

extension RunCall {
    /// SHA-256 of a call's canonical parameters: what the idempotency ledger keys on. Any byte of a
    /// parameter's value changes it; spelling the same call differently does not.
    static func digest(_ call: ToolCall) -> String { Digest.sha256Hex(canonicalParts(call)) }

    /// SHA-256 of the call exactly as it will be forwarded — method, path, the query as encoded, the body's
    /// bytes: what an approval binds to. No reading of the body stands between what was approved and what
    /// the upstream receives (a JSON number past 2^53, `1` against `1.0`: equal to a double, not to every
    /// upstream), so a call that differs in any byte is another call.
    /// A file upload is taken without its boundary (`MultipartForm.canonicalDigest`): an SDK draws a new one for
    /// every request, so the same upload repeated would never be the call that was approved.
    static func exactDigest(_ call: ToolCall) -> String {
        let body = call.request.body.map { uploadDigest(call) ?? Digest.sha256Hex(bytes: $0.readableBytesView) } ?? ""
        return Digest.sha256Hex([
            call.tool.rawValue, call.action, call.request.method.rawValue, call.request.path, call.request.target?.description ?? "",
            call.request.query.encoded, body,
        ])
    }

    /// SHA-256 of a multipart body's parts without its boundary, or nil (not an upload, or not a
    /// well-formed one).
    static func uploadDigest(_ call: ToolCall) -> String? {
        guard let body = call.request.body, let type = call.request.headers.first(name: "content-type") else { return nil }
        if HeaderName.isMediaType(type, "multipart/form-data") { return MultipartForm.canonicalDigest(body, contentType: type) }
        // A Gmail multipart upload: the metadata and the message, without the boundary.
        if call.tool == .gmailSend, HeaderName.isMediaType(type, "multipart/related") {
            return RelatedUpload.canonicalDigest(body, contentType: type, media: "message/rfc822")
        }
        return nil
    }

    /// A call reduced to what it asks for: tool, action, method, path, target, the query pairs sorted by
    /// name (a repeated name's values kept in their order: an upstream reads the first or the last), a
    /// JSON body with its keys sorted and its numbers as written (`JSONValue.canonicalText`), any other
    /// body as its bytes.
    static func canonicalParts(_ call: ToolCall) -> [String] {
        var parts = [call.tool.rawValue, call.action, call.request.method.rawValue, call.request.path]
        parts.append(call.request.target?.description ?? "")
        let sorted = call.request.query.items.enumerated().sorted { ($0.element.name, $0.offset) < ($1.element.name, $1.offset) }
        for (_, item) in sorted {
            parts.append(item.name)
            parts.append(item.value)
        }
        if let body = call.request.body, body.readableBytes > 0 {
            if let json = JSONValue.canonicalText(body.readableBytesView) {
                parts.append("json")
                parts.append(json)
            } else if let form = uploadDigest(call) {
                parts.append("form")
                parts.append(form)
            } else {
                parts.append("bytes")
                parts.append(Digest.sha256Hex(bytes: body.readableBytesView))
            }
        }
        return parts
    }
}
