import NIOHTTP1
import Upstreams

/// Every way the sidecar refuses or fails a request, each with a stable machine-readable `code`.
///
/// Modelled on async-http-client's errors: a struct over a private code, so new codes never break a
/// `switch` in a caller, and the HTTP status belongs to the code (as Hummingbird's errors know theirs).
/// `ResponseMapper` is the one place that turns it into an RFC 9457 problem+json response.
public struct GatewayError: Error, Sendable, Hashable, CustomStringConvertible {
    enum Code: String, Sendable, CaseIterable {
        // The agent's mistakes: 4xx.
        case malformedRequest = "malformed_request"
        case invalidFraming = "invalid_framing"
        case headersTooLarge = "headers_too_large"
        case bodyTooLarge = "body_too_large"
        case routeNotFound = "route_not_found"
        case methodNotAllowed = "method_not_allowed"
        case invalidTarget = "invalid_target"
        case unknownAction = "unknown_action"
        case invalidBody = "invalid_body"
        case invalidParameter = "invalid_parameter"
        case unsupportedMediaType = "unsupported_media_type"
        case ambiguousParameter = "ambiguous_parameter"
        case ambiguousHeader = "ambiguous_header"
        case requestTimeout = "request_timeout"
        case connectRefused = "connect_refused"
        case connectPortDenied = "connect_port_denied"
        case misdirectedRequest = "misdirected_request"
        case responseNotFound = "response_not_found"
        case forwardingLoop = "forwarding_loop"
        // Identity (401 on reverse routes and the compatibility API, 407 on the forward proxy).
        case tokenMissing = "token_missing"
        case tokenMalformed = "token_malformed"
        case tokenInvalid = "token_invalid"
        case tokenExpired = "token_expired"
        case tokenRevoked = "token_revoked"
        case agentDisabled = "agent_disabled"
        case agentUnknown = "agent_unknown"
        case provenanceMismatch = "provenance_mismatch"
        case scopeDenied = "scope_denied"
        // Policy.
        case paramDenied = "param_denied"
        case offHours = "off_hours"
        case rateLimited = "rate_limited"
        case quotaExceeded = "quota_exceeded"
        case budgetExhausted = "budget_exhausted"
        case concurrencyLimited = "concurrency_limited"
        case stateUnavailable = "state_unavailable"
        // Resilience and egress.
        case egressDenied = "egress_denied"
        case secretExfiltration = "secret_exfiltration"
        case breakerOpen = "breaker_open"
        case toolSaturated = "tool_saturated"
        /// The sidecar holds `limits.max_buffered_request_bytes` of request bodies already.
        case sidecarOverloaded = "sidecar_overloaded"
        case toolThrottled = "tool_throttled"
        // Agent runs (calls that name a run, and the runs API).
        case runNotFound = "run_not_found"
        case runForbidden = "run_forbidden"
        case runNotStarted = "run_not_started"
        case runCancelled = "run_cancelled"
        case runFinished = "run_finished"
        case runAlreadyCancelled = "run_already_cancelled"
        case runNotPaused = "run_not_paused"
        case runBudgetExhausted = "run_budget_exhausted"
        case runLoopDetected = "run_loop_detected"
        case idempotencyConflict = "idempotency_conflict"
        case duplicateInFlight = "duplicate_in_flight"
        case duplicateOutcomeUnknown = "duplicate_outcome_unknown"
        case approvalPending = "approval_pending"
        case approvalDenied = "approval_denied"
        case approvalExpired = "approval_expired"
        case approvalNotFound = "approval_not_found"
        case approvalForbidden = "approval_forbidden"
        case approvalNotPending = "approval_not_pending"
        case tooManyStreams = "too_many_streams"
        case tooManyOpenRuns = "too_many_open_runs"
        case tooManyPendingApprovals = "too_many_pending_approvals"
        // Control API.
        case adminUnauthorized = "admin_unauthorized"
        case invalidJSON = "invalid_json"
        case validationFailed = "validation_failed"
        case notFound = "not_found"
        case mintingDisabled = "minting_disabled"
        case adminRateLimited = "admin_rate_limited"
        case originNotAllowed = "origin_not_allowed"
        // The upstream's failures: 5xx.
        case upstreamUnreachable = "upstream_unreachable"
        case upstreamTimeout = "upstream_timeout"
        case upstreamProtocolError = "upstream_protocol_error"
        case upstreamResponseTooLarge = "upstream_response_too_large"
        case credentialUnavailable = "credential_unavailable"
        case shuttingDown = "shutting_down"
        case internalError = "internal_error"

        var status: HTTPResponseStatus {
            switch self {
            case .malformedRequest, .invalidFraming, .invalidTarget, .unknownAction, .invalidBody, .invalidParameter, .ambiguousParameter,
                .ambiguousHeader:
                return .badRequest
            case .requestTimeout: return .requestTimeout
            case .headersTooLarge: return .requestHeaderFieldsTooLarge
            case .bodyTooLarge: return .payloadTooLarge
            case .routeNotFound: return .notFound
            case .methodNotAllowed: return .methodNotAllowed
            case .unsupportedMediaType: return .unsupportedMediaType
            case .misdirectedRequest: return .misdirectedRequest
            case .forwardingLoop: return .loopDetected
            case .connectRefused, .connectPortDenied, .scopeDenied, .paramDenied, .offHours, .egressDenied, .secretExfiltration: return .forbidden
            case .approvalPending, .approvalDenied, .approvalExpired, .approvalForbidden: return .forbidden
            case .approvalNotFound, .responseNotFound: return .notFound
            case .approvalNotPending: return .conflict
            case .breakerOpen, .toolSaturated, .sidecarOverloaded: return .serviceUnavailable
            case .rateLimited, .quotaExceeded, .budgetExhausted, .concurrencyLimited, .toolThrottled: return .tooManyRequests
            case .stateUnavailable: return .serviceUnavailable
            case .tokenMissing, .tokenMalformed, .tokenInvalid, .tokenExpired, .tokenRevoked, .agentDisabled, .agentUnknown,
                .provenanceMismatch, .adminUnauthorized:
                return .unauthorized
            case .invalidJSON: return .badRequest
            case .validationFailed: return .unprocessableEntity
            case .notFound: return .notFound
            case .mintingDisabled: return .conflict
            case .runNotFound: return .notFound
            case .runForbidden, .originNotAllowed: return .forbidden
            case .runNotStarted, .runCancelled, .runFinished, .runAlreadyCancelled, .runNotPaused, .idempotencyConflict, .duplicateInFlight,
                .duplicateOutcomeUnknown:
                return .conflict
            case .runBudgetExhausted, .runLoopDetected, .tooManyStreams, .tooManyOpenRuns, .tooManyPendingApprovals, .adminRateLimited: return .tooManyRequests
            case .upstreamUnreachable, .upstreamProtocolError, .upstreamResponseTooLarge: return .badGateway
            case .upstreamTimeout: return .gatewayTimeout
            case .credentialUnavailable, .shuttingDown: return .serviceUnavailable
            case .internalError: return .internalServerError
            }
        }

        var title: String {
            switch self {
            case .malformedRequest: return "Malformed HTTP request"
            case .invalidFraming: return "Invalid message framing"
            case .headersTooLarge: return "Request header fields too large"
            case .bodyTooLarge: return "Request body too large"
            case .routeNotFound: return "No such route"
            case .methodNotAllowed: return "Method not allowed"
            case .invalidTarget: return "Invalid request target"
            case .unknownAction: return "Unknown tool action"
            case .invalidBody: return "Invalid request body"
            case .invalidParameter: return "Invalid parameter"
            case .unsupportedMediaType: return "Unsupported media type"
            case .ambiguousParameter: return "Ambiguous parameter"
            case .ambiguousHeader: return "Ambiguous header field"
            case .secretExfiltration: return "A secret in the outbound call"
            case .requestTimeout: return "Request not received in time"
            case .connectRefused: return "CONNECT tunnels are not opened"
            case .connectPortDenied: return "CONNECT port not allowed"
            case .misdirectedRequest: return "Request for another host than the tunnel's"
            case .responseNotFound: return "No such stored response for this agent"
            case .forwardingLoop: return "Request came back to the sidecar that sent it"
            case .tokenMissing: return "Agent token required"
            case .tokenMalformed: return "Agent token malformed"
            case .tokenInvalid: return "Agent token invalid"
            case .tokenExpired: return "Agent token expired"
            case .tokenRevoked: return "Agent token revoked"
            case .agentDisabled: return "Agent disabled"
            case .agentUnknown: return "Agent unknown"
            case .provenanceMismatch: return "Token presented by the wrong agent or sidecar"
            case .scopeDenied: return "Outside the agent's scopes"
            case .paramDenied: return "Parameter not allowed"
            case .offHours: return "Outside the allowed time window"
            case .rateLimited: return "Rate limit exceeded"
            case .quotaExceeded: return "Quota exceeded"
            case .budgetExhausted: return "Budget exhausted"
            case .concurrencyLimited: return "Too many calls in flight"
            case .stateUnavailable: return "Shared limit state unavailable"
            case .egressDenied: return "Destination not allowed"
            case .breakerOpen: return "Tool temporarily unavailable (circuit open)"
            case .toolSaturated: return "Tool saturated"
            case .sidecarOverloaded: return "Sidecar overloaded"
            case .toolThrottled: return "Tool asked to slow down"
            case .adminUnauthorized: return "Admin token required"
            case .invalidJSON: return "Malformed JSON"
            case .validationFailed: return "Validation failed"
            case .notFound: return "Not found"
            case .mintingDisabled: return "This sidecar does not mint tokens"
            case .runNotFound: return "No such run"
            case .runForbidden: return "The run belongs to another agent or token"
            case .runNotStarted: return "Run not started"
            case .runCancelled: return "Run cancelled"
            case .runFinished: return "Run finished"
            case .runAlreadyCancelled: return "Run already cancelled"
            case .runNotPaused: return "Run not paused"
            case .runBudgetExhausted: return "Run budget exhausted"
            case .runLoopDetected: return "Run paused by the loop breaker"
            case .idempotencyConflict: return "Idempotency key reused with a different request"
            case .duplicateInFlight: return "An identical call is in flight"
            case .duplicateOutcomeUnknown: return "An identical call may already have taken effect"
            case .approvalPending: return "Approval pending"
            case .approvalDenied: return "Approval denied"
            case .approvalExpired: return "Approval expired"
            case .approvalNotFound: return "No such approval"
            case .approvalForbidden: return "Not an approver of this call"
            case .approvalNotPending: return "Approval already decided"
            case .tooManyStreams: return "Too many event streams on this run"
            case .tooManyOpenRuns: return "Too many unfinished runs for this agent"
            case .tooManyPendingApprovals: return "Too many pending approvals for this agent"
            case .adminRateLimited: return "Too many admin requests from this address"
            case .originNotAllowed: return "Origin not allowed"
            case .upstreamUnreachable: return "Upstream unreachable"
            case .upstreamTimeout: return "Upstream timed out"
            case .upstreamProtocolError: return "Upstream protocol error"
            case .upstreamResponseTooLarge: return "Upstream response too large"
            case .credentialUnavailable: return "Tool credential unavailable"
            case .shuttingDown: return "Sidecar is shutting down"
            case .internalError: return "Internal error"
            }
        }
    }

    let code: Code
    /// Human-readable detail, safe to show the agent: it never contains secrets or policy internals.
    public let detail: String
    /// Extra response headers (`Allow`, `Retry-After`, `Proxy-Authenticate`, ...).
    public var headers: [(String, String)]
    /// Extra members of the problem document (e.g. `errors` of a validation failure).
    public var extensions: [String: JSONValue] = [:]
    /// Set for authentication failures on the forward proxy: 407 instead of 401.
    var proxyAuthentication = false
    /// Nothing reached the upstream (connect failed, no credential): an admitted call gets its quota back.
    var nothingSent = false
    /// The failure came from the upstream exchange (not a refusal of the sidecar's own stages).
    var fromUpstream = false

    /// The upstream may have received the call and acted on it, but its answer was lost.
    var upstreamMayHaveActed: Bool { fromUpstream && !nothingSent }

    init(_ code: Code, _ detail: String, headers: [(String, String)] = []) {
        self.code = code
        self.detail = detail
        self.headers = headers
    }

    public var status: HTTPResponseStatus {
        proxyAuthentication && code.status == .unauthorized ? .proxyAuthenticationRequired : code.status
    }

    /// Authentication failures tell the client how to authenticate: `Proxy-Authenticate` on the forward
    /// proxy (which is what makes curl and requests resend with the proxy credentials), else
    /// `WWW-Authenticate`.
    func forEntry(_ entry: Entry?) -> GatewayError {
        guard code.status == .unauthorized, code != .adminUnauthorized else { return self }
        var e = self
        if entry?.isProxy == true {
            e.proxyAuthentication = true
            e.headers.append(("Proxy-Authenticate", #"Basic realm="agent-sidecar", charset="UTF-8""#))
        } else {
            e.headers.append(("WWW-Authenticate", #"Bearer realm="agent-sidecar""#))
        }
        return e
    }
    public var codeString: String { code.rawValue }
    public var title: String { code.title }
    public var description: String { "\(code.rawValue): \(detail)" }

    public static func == (l: Self, r: Self) -> Bool { l.code == r.code && l.detail == r.detail }
    public func hash(into h: inout Hasher) {
        h.combine(code)
        h.combine(detail)
    }

    /// All codes with their status and title, for the README's error table and its test.
    public static var catalog: [(code: String, status: Int, title: String)] {
        Code.allCases.map { ($0.rawValue, Int($0.status.code), $0.title) }
    }

    // MARK: Constructors used by the stages

    static func malformed(_ detail: String) -> Self { .init(.malformedRequest, detail) }
    static func framing(_ detail: String) -> Self { .init(.invalidFraming, detail) }
    static func headersTooLarge(limit: Int) -> Self { .init(.headersTooLarge, "request head exceeds \(limit) bytes") }
    static func bodyTooLarge(limit: Int) -> Self { .init(.bodyTooLarge, "request body exceeds \(limit) bytes") }
    static func overloaded(buffered: Int) -> Self {
        .init(.sidecarOverloaded, "the sidecar holds \(buffered) bytes of request bodies already (limits.max_buffered_request_bytes); try again",
              headers: [("Retry-After", "1")])
    }
    static func routeNotFound() -> Self {
        .init(.routeNotFound, "no route for this path; use /openai/v1/..., /serpapi/search, /gmail/v1/..., /fetch?url=, /api/proxy-request, or an absolute http:// URL through the proxy")
    }
    static func methodNotAllowed(_ allowed: [String]) -> Self {
        .init(.methodNotAllowed, "allowed: \(allowed.joined(separator: ", "))", headers: [("Allow", allowed.joined(separator: ", "))])
    }
    static func invalidTarget(_ detail: String) -> Self { .init(.invalidTarget, detail) }
    static func connectRefused() -> Self {
        .init(.connectRefused, "this sidecar does not intercept CONNECT tunnels (intercept.enabled: false): send plain http:// URLs through the proxy (HTTP_PROXY) and it originates TLS to the upstream itself")
    }
    static func credentialUnavailable(_ tool: String) -> Self {
        var e = GatewayError(.credentialUnavailable, "no credential is configured for \(tool); the call was not forwarded")
        e.nothingSent = true
        return e
    }
    static func internalError() -> Self { .init(.internalError, "the sidecar failed to handle this request") }
}
