import Foundation
import NIOCore
import NIOHTTP1
import Testing
import Upstreams

@testable import Sidecar

@Suite("Problem mapping")
struct GatewayErrorTests {
    @Test func everyAgentMistakeIs4xxAndEveryUpstreamFailure5xx() {
        for entry in GatewayError.catalog {
            if entry.code.hasPrefix("upstream_") || ["credential_unavailable", "shutting_down", "internal_error", "state_unavailable", "breaker_open", "tool_saturated", "sidecar_overloaded", "forwarding_loop"].contains(entry.code) {
                #expect(entry.status >= 500, "\(entry.code)")
            } else {
                #expect((400..<500).contains(entry.status), "\(entry.code)")
            }
        }
    }

    /// `x-should-retry: false` where the same request cannot succeed soon, so the SDKs that retry every
    /// 409, 429 and 5xx on their own do not send a refused call three times; nothing where time helps.
    @Test(arguments: [
        (GatewayError(.runCancelled, "x"), "false"),
        (GatewayError(.runBudgetExhausted, "x"), "false"),
        (GatewayError(.runLoopDetected, "x"), "false"),
        (GatewayError(.idempotencyConflict, "x"), "false"),
        (GatewayError(.duplicateOutcomeUnknown, "x"), "false"),
        (GatewayError(.scopeDenied, "x"), "false"),
        (GatewayError(.upstreamResponseTooLarge, "x"), "false"),
        (GatewayError(.quotaExceeded, "x", headers: [("Retry-After", "86400")]), "false"),
        (GatewayError(.budgetExhausted, "x", headers: [("retry-after", "61")]), "false"),
        (GatewayError(.quotaExceeded, "x", headers: [("Retry-After", "60")]), nil),
        (GatewayError(.rateLimited, "x", headers: [("Retry-After", "1")]), nil),
        (GatewayError(.rateLimited, "x"), nil),
        (GatewayError(.concurrencyLimited, "x"), nil),
        (GatewayError(.breakerOpen, "x", headers: [("Retry-After", "300")]), nil),
        (GatewayError(.duplicateInFlight, "x", headers: [("Retry-After", "1")]), nil),
        (GatewayError(.upstreamTimeout, "x"), nil),
        (GatewayError(.shuttingDown, "x"), nil),
        (GatewayError(.approvalPending, "x", headers: [("Retry-After", "3600")]), nil),
        (GatewayError(.approvalDenied, "x"), "false"),
    ] as [(GatewayError, String?)])
    func retryAdvice(_ error: GatewayError, _ header: String?) {
        let response = ResponseMapper.problem(error, requestID: "r")
        #expect(response.headers["x-should-retry"] == (header.map { [$0] } ?? []), "\(error.codeString)")
    }

    @Test(arguments: [
        (HTTPParserError.headerOverflow, 431, "headers_too_large"),
        (.invalidContentLength, 400, "invalid_framing"),
        (.unexpectedContentLength, 400, "invalid_framing"),
        (.invalidChunkSize, 400, "invalid_framing"),
        (.invalidMethod, 400, "malformed_request"),
        (.invalidHeaderToken, 400, "malformed_request"),
        (.unknown, 400, "malformed_request"),
    ])
    func parserErrors(_ error: HTTPParserError, _ status: Int, _ code: String) {
        let mapped = GatewayError(parserError: error, maxHeaderBytes: 1024)
        #expect(Int(mapped.status.code) == status)
        #expect(mapped.codeString == code)
    }

    @Test(arguments: [
        (UpstreamError(.unreachable, beforeSend: true, detail: "x"), 502, "upstream_unreachable"),
        (UpstreamError(.timeout, beforeSend: false, detail: "x"), 504, "upstream_timeout"),
        (UpstreamError(.protocolError, beforeSend: false, detail: "x"), 502, "upstream_protocol_error"),
        (UpstreamError(.responseTooLarge, beforeSend: false, detail: "x"), 502, "upstream_response_too_large"),
        (UpstreamError(.invalidRequest, beforeSend: true, detail: "x"), 400, "malformed_request"),
    ])
    func upstreamErrors(_ error: UpstreamError, _ status: Int, _ code: String) {
        let mapped = GatewayError(error)
        #expect(Int(mapped.status.code) == status && mapped.codeString == code)
    }

    @Test(arguments: [
        (ClassificationError.routeNotFound, 404, "route_not_found"),
        (.methodNotAllowed(allowed: ["POST"]), 405, "method_not_allowed"),
        (.invalidTarget("bad"), 400, "invalid_target"),
    ])
    func classificationErrors(_ error: ClassificationError, _ status: Int, _ code: String) {
        let mapped = GatewayError(error)
        #expect(Int(mapped.status.code) == status && mapped.codeString == code)
    }

    @Test func problemJSONHasTheRFC9457MembersAndTheRequestID() throws {
        let response = ResponseMapper.problem(.methodNotAllowed(["POST"]), requestID: "rid-9", entry: .compat)
        #expect(response.status == .methodNotAllowed)
        #expect(response.headers["content-type"] == ["application/problem+json"])
        #expect(response.headers["allow"] == ["POST"])
        #expect(response.headers["x-request-id"] == ["rid-9"])
        guard case .buffer(let body) = response.body else { Issue.record("not buffered"); return }
        let json = try #require(JSONValue.parse(body.readableBytesView))
        #expect(json["type"] == "urn:agent-sidecar:problem:method_not_allowed")
        #expect(json["status"] == 405 && json["code"] == "method_not_allowed" && json["request_id"] == "rid-9")
        #expect(json["title"] != nil && json["detail"] != nil)
        #expect(json["success"] == false)
        #expect(Int(response.headers.first(name: "content-length")!) == body.readableBytes)
    }

    /// The README's error-code table is part of the contract: every code, with its status, must be in it.
    @Test func readmeListsEveryCode() throws {
        let readme = try Repository.readme()
        for entry in GatewayError.catalog {
            #expect(readme.contains("| `\(entry.code)` | \(entry.status) |"), "README is missing \(entry.code)")
        }
    }
}

@Suite("Framing checks")
struct FramingTests {
    static func head(_ headers: [(String, String)], uri: String = "/x") -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: .POST, uri: uri, headers: HTTPHeaders(headers))
    }

    @Test(arguments: [
        ([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], "invalid_framing"),
        ([("Content-Length", "5"), ("Content-Length", "5")], "invalid_framing"),
        ([("Content-Length", "5, 5")], "invalid_framing"),
        ([("Content-Length", "+5")], "invalid_framing"),
        ([("Content-Length", "abc")], "invalid_framing"),
        ([("Transfer-Encoding", "gzip, chunked")], "invalid_framing"),
    ])
    func refusesAmbiguousFraming(_ headers: [(String, String)], _ code: String) {
        #expect(ProxyHTTPHandler.framingProblem(Self.head(headers), limits: ListenerLimits())?.codeString == code)
    }

    @Test func acceptsNormalFramingAndRefusesHugeTargets() {
        #expect(ProxyHTTPHandler.framingProblem(Self.head([("Content-Length", "5")]), limits: ListenerLimits()) == nil)
        #expect(ProxyHTTPHandler.framingProblem(Self.head([("Transfer-Encoding", "chunked")]), limits: ListenerLimits()) == nil)
        var limits = ListenerLimits()
        limits.maxHeaderBytes = 1024
        #expect(ProxyHTTPHandler.framingProblem(Self.head([], uri: "/" + String(repeating: "a", count: 2000)), limits: limits)?.codeString == "headers_too_large")
    }
}
