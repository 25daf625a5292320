import NIOCore
import NIOHTTP1
import Upstreams

/// What the connection writes back to the agent: a buffered body or an upstream stream.
struct ProxyResponse: Sendable {
    enum Body: Sendable {
        case buffer(ByteBuffer)
        /// Streamed to the agent chunk by chunk; the stream fails once it exceeds `limit` bytes.
        case stream(UpstreamBody, limit: Int)
    }

    /// What runs once the response has been written (or abandoned).
    enum Completion: Sendable {
        case none
        /// Frees the call's bulkhead slot: done on the loop.
        case sync(@Sendable () -> Void)
        /// Also settles the call's limits (a store round trip): done in a task.
        case async(@Sendable () async -> Void)

        /// Runs it from a task, after a streamed body.
        func run() async {
            switch self {
            case .none: break
            case .sync(let release): release()
            case .async(let settle): await settle()
            }
        }

        /// Runs it from the loop: a release at once, a settlement in a task of its own.
        func start() {
            switch self {
            case .none: break
            case .sync(let release): release()
            case .async(let settle): Task { await settle() }
            }
        }
    }

    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: Body
    var completion: Completion = .none
}

/// The one place where every refusal and failure becomes an HTTP response (RFC 9457 problem+json).
enum ResponseMapper {
    static func problem(_ error: GatewayError, requestID: String, entry: Entry? = nil) -> ProxyResponse {
        var fields: [String: JSONValue] = [
            "type": .string("urn:agent-sidecar:problem:\(error.codeString)"),
            "title": .string(error.title),
            "status": .number(Double(error.status.code)),
            "detail": .string(error.detail),
            "code": .string(error.codeString),
            "request_id": .string(requestID),
        ]
        // The 4Runr SDKs read `success`; problem+json allows extension members.
        if entry == .compat { fields["success"] = false }
        for (k, v) in error.extensions { fields[k] = v }
        let text = JSONValue.object(fields).serialized
        var headers = HTTPHeaders([
            ("Content-Type", "application/problem+json"), ("Content-Length", String(text.utf8.count)),
            ("Cache-Control", "no-store"), ("X-Request-Id", requestID),
        ])
        for (name, value) in error.headers { headers.add(name: name, value: value) }
        return ProxyResponse(status: error.status, headers: headers, body: .buffer(ByteBuffer(string: text)))
    }

    static func json(_ value: JSONValue, status: HTTPResponseStatus, requestID: String) -> ProxyResponse {
        let text = value.serialized
        let headers = HTTPHeaders([
            ("Content-Type", "application/json"), ("Content-Length", String(text.utf8.count)), ("X-Request-Id", requestID),
        ])
        return ProxyResponse(status: status, headers: headers, body: .buffer(ByteBuffer(string: text)))
    }
}
