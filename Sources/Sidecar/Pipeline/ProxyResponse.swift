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
        /// Also settles the call's limits, with the store's command written from the loop given — the
        /// connection's, before the answer's last bytes, so the agent's next call (on any sidecar) finds
        /// its concurrency slot free; without a loop, in a task.
        case settle(@Sendable ((any EventLoop)?) -> Void)

        /// Runs it from a task (after a streamed body, or before its end), on `loop` when given.
        func run(on loop: (any EventLoop)? = nil) async {
            switch self {
            case .none: break
            case .sync(let release): release()
            case .async(let settle): await settle()
            case .settle(let settle):
                guard let loop else { return settle(nil) }
                if loop.inEventLoop { settle(loop) } else { try? await loop.submit { settle(loop) }.get() }
            }
        }

        /// Runs it from `loop` (the caller is on it): a release at once, a settlement's command written
        /// now or, without a loop, in a task of its own.
        func start(on loop: (any EventLoop)? = nil) {
            switch self {
            case .none: break
            case .sync(let release): release()
            case .async(let settle): Task { await settle() }
            case .settle(let settle): settle(loop)
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
        if error.shouldRetry == false { headers.add(name: "x-should-retry", value: "false") }
        return ProxyResponse(status: error.status, headers: headers, body: .buffer(ByteBuffer(string: text)))
    }

    /// The compatibility API's answer `{data, metadata, success}` (keys in `serialized`'s order). An
    /// upstream body that is JSON goes in as its own bytes: written back from `JSONValue` its numbers
    /// would pass through doubles (a 64-bit id such as `12345678901234567` would reach the agent as
    /// `1.2345678901234568e+16`). Any other body goes in as a string.
    static func envelope(success: Bool, data: ByteBuffer, metadata: JSONValue, status: HTTPResponseStatus, requestID: String) -> ProxyResponse {
        var out = ByteBuffer()
        out.reserveCapacity(data.readableBytes + 256)
        out.writeStaticString(#"{"data":"#)
        if JSONValue.isStrict(data.readableBytesView) {
            out.writeImmutableBuffer(data)
        } else {
            var text = ""
            JSONValue.writeString(String(buffer: data), into: &text)
            out.writeString(text)
        }
        out.writeStaticString(#","metadata":"#)
        out.writeString(metadata.serialized)
        out.writeStaticString(success ? #","success":true}"# : #","success":false}"#)
        return json(out, status: status, requestID: requestID)
    }

    static func json(_ value: JSONValue, status: HTTPResponseStatus, requestID: String) -> ProxyResponse {
        json(ByteBuffer(string: value.serialized), status: status, requestID: requestID)
    }

    /// A JSON body already written, with the headers every JSON answer of the sidecar's own carries.
    private static func json(_ body: ByteBuffer, status: HTTPResponseStatus, requestID: String) -> ProxyResponse {
        let headers = HTTPHeaders([
            ("Content-Type", "application/json"), ("Content-Length", String(body.readableBytes)), ("X-Request-Id", requestID),
        ])
        return ProxyResponse(status: status, headers: headers, body: .buffer(body))
    }
}
