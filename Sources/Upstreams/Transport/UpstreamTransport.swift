import Synchronization
import AsyncHTTPClient
import NIOCore
import NIOHTTP1

/// The request as it will leave the sidecar: final URL, cleaned and injected headers, body.
///
/// Kept in one `CopyOnWrite` box: the request is copied into the resilience call, the pool's exchange
/// and the retry state, and each copy of the bare fields — the tool call, the URL's strings, the header
/// list, the body — cost a retain and a release apiece. Changes made while it is built (the credential,
/// `Accept-Encoding`) happen in place, the box being unshared then.
@dynamicMemberLookup
public struct UpstreamRequest: Sendable {
    public struct Fields: Sendable {
        /// The classified call this request was built from (mocks, chaos and breakers key on it).
        public var call: ToolCall
        public var method: HTTPMethod
        public var url: TargetURL
        public var headers: HTTPHeaders
        public var body: ByteBuffer?
        /// The overall deadline of the call; every attempt and the whole response body must fit in it.
        public var deadline: NIODeadline
        /// http_fetch: internal ranges the policy grants this call, on top of the configured ones.
        public var egressAllow: [CIDR] = []
        /// http_fetch: judges a redirect hop the sidecar is about to follow (the agent's policy for that
        /// URL); nil lets it go, a reason refuses it. The transport cannot read policy itself.
        public var hopCheck: (@Sendable (TargetURL) -> String?)? = nil
    }

    private var fields: CopyOnWrite<Fields>

    public subscript<T>(dynamicMember key: KeyPath<Fields, T>) -> T { fields.value[keyPath: key] }

    public subscript<T>(dynamicMember key: WritableKeyPath<Fields, T>) -> T {
        get { fields.value[keyPath: key] }
        _modify { yield &fields.value[keyPath: key] }
    }

    public var tool: Tool { self.call.tool }
    public var action: String { self.call.action }

    public init(call: ToolCall, method: HTTPMethod, url: TargetURL, headers: HTTPHeaders, body: ByteBuffer?, deadline: NIODeadline) {
        fields = CopyOnWrite(Fields(call: call, method: method, url: url, headers: headers, body: body, deadline: deadline))
    }
}

/// An upstream answer whose body may still be arriving.
public struct UpstreamResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: UpstreamBody

    public init(status: HTTPResponseStatus, headers: HTTPHeaders, body: UpstreamBody) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// The seam between the pipeline and the network. The live implementations are the HTTP/1.1 pool,
/// `HTTPClientTransport` and `SafeFetchTransport`; `MockTransport` answers with each adapter's
/// deterministic mock; tests and chaos wrap either.
public protocol UpstreamTransport: Sendable {
    func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse

    /// Starts the call on `loop` (the calling event loop) and reports through a future, for a request
    /// whose every stage can run without suspending: the proxy then needs no Swift task for it. Returns
    /// nil, having done nothing, when this transport cannot; `send` then serves the call.
    func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall?
}

extension UpstreamTransport {
    public func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? { nil }
}

/// A call started on an event loop: its response (the future fails with `UpstreamError`) and how to
/// abort it (the agent went away).
public struct StartedCall: Sendable {
    public let response: EventLoopFuture<UpstreamResponse>
    public let cancel: @Sendable () -> Void

    public init(response: EventLoopFuture<UpstreamResponse>, cancel: @escaping @Sendable () -> Void) {
        self.response = response
        self.cancel = cancel
    }

    /// An answer that is already there (mocks, injected faults).
    public static func answered(_ response: UpstreamResponse, on loop: any EventLoop) -> StartedCall {
        StartedCall(response: loop.makeSucceededFuture(response), cancel: {})
    }
}

/// A transport failure, classified so the pipeline (and later the retry loop and breaker) can react
/// without matching words in error messages.
public struct UpstreamError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        /// DNS, TCP connect or TLS handshake failed: nothing was sent.
        case unreachable
        /// Connect or overall deadline passed.
        case timeout
        /// Connection broke or the upstream spoke broken HTTP after the request was sent.
        case protocolError = "protocol_error"
        /// The response exceeded the configured size limit.
        case responseTooLarge = "response_too_large"
        /// The agent went away or the call was cancelled.
        case cancelled
        /// The destination is an address the egress guard refuses (SSRF defence); nothing was sent.
        case egressDenied = "egress_denied"
        /// The request cannot be written as valid HTTP (a control character in a field or the target,
        /// a method or field name that is not a token); nothing was sent. The caller's mistake: never
        /// retried, never a failure of the upstream.
        case invalidRequest = "invalid_request"
    }

    public let kind: Kind
    /// True when the failure happened before any request byte could have reached the upstream,
    /// so a retry (or giving back quota) is safe even for side-effecting calls.
    public let beforeSend: Bool
    /// Short, secret-free text for logs.
    public let detail: String
    /// Set when chaos mode injected this failure (the answer then says so).
    public var chaos: String?

    public init(_ kind: Kind, beforeSend: Bool, detail: String) {
        self.kind = kind
        self.beforeSend = beforeSend
        self.detail = detail
    }

    public var description: String { "\(kind.rawValue)(\(detail))" }

    /// An answer whose content or transfer coding the sidecar cannot undo, so cannot check for the
    /// credential before passing it on.
    public static let undecodable = UpstreamError(
        .protocolError, beforeSend: false, detail: "the answer's encoding cannot be decoded to check it for the credential")

    /// The error for a final status outside 200...599 (RFC 9110 §15: 100...599 are the only valid codes,
    /// and 1xx are interim), or nil. NIO's parser takes any three digits; relaying `999` would hand the
    /// agent an answer no client can interpret, so it is the upstream's protocol error, as nginx and
    /// Envoy treat it.
    /// `101 Switching Protocols` is refused as well: the sidecar never asks an upstream for an upgrade.
    static func invalidStatus(_ status: HTTPResponseStatus) -> UpstreamError? {
        if (200...599).contains(status.code) { return nil }
        let detail = status.code == 101 ? "switching protocols unasked" : "invalid status code \(status.code)"
        return UpstreamError(.protocolError, beforeSend: false, detail: detail)
    }
}

/// A response body as an async sequence of buffers: a live upstream body (backpressured), or a mock's
/// chunks with an optional pause between them (so mock streaming really streams).
public struct UpstreamBody: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer

    /// `client` and `stream` are boxed (`indirect`): `AsyncThrowingStream` is a resilient standard-library
    /// type, and one payload of unknown layout made every copy and destroy of this enum — and of every
    /// response, result and future value holding it, several per request — go through the runtime's
    /// generic enum witnesses (`swift_getEnumCaseMultiPayload`). Boxed, the layout is fixed and a copy is
    /// a switch and a retain.
    enum Storage: Sendable {
        case chunks([ByteBuffer], delay: Duration)
        indirect case client(HTTPClientResponse.Body)
        indirect case stream(AsyncThrowingStream<ByteBuffer, any Error>)
        case bodyStream(BodyStream)
        indirect case scrubbed(UpstreamBody, SecretScrubber)
        indirect case observed(UpstreamBody, @Sendable (ByteBuffer) -> Void, @Sendable () -> Void)
        indirect case truncated(UpstreamBody)
        indirect case decoded(UpstreamBody, ContentCoding, limit: Int)
        indirect case guarded(UpstreamBody, BodyGuard)
        indirect case transformed(UpstreamBody, any BodyTransform)
    }

    let storage: Storage

    public static var empty: UpstreamBody { .init(storage: .chunks([], delay: .zero)) }

    public static func bytes(_ buffer: ByteBuffer) -> UpstreamBody {
        .init(storage: .chunks(buffer.readableBytes == 0 ? [] : [buffer], delay: .zero))
    }

    public static func chunks(_ chunks: [ByteBuffer], delay: Duration = .zero) -> UpstreamBody {
        .init(storage: .chunks(chunks, delay: delay))
    }

    public static func client(_ body: HTTPClientResponse.Body) -> UpstreamBody { .init(storage: .client(body)) }

    public static func stream(_ stream: AsyncThrowingStream<ByteBuffer, any Error>) -> UpstreamBody {
        .init(storage: .stream(stream))
    }

    public static func stream(_ stream: BodyStream) -> UpstreamBody { .init(storage: .bodyStream(stream)) }

    /// The same body, with every chunk shown to `observe` and `finished` called at its end.
    public func observed(by observe: @escaping @Sendable (ByteBuffer) -> Void, finished: @escaping @Sendable () -> Void) -> UpstreamBody {
        .init(storage: .observed(self, observe, finished))
    }

    /// The first half of the body's first chunk, then a broken connection (chaos `truncate`).
    public static func truncated(_ body: UpstreamBody) -> UpstreamBody { .init(storage: .truncated(body)) }

    /// The same body with its content coding undone (gzip or deflate), at most `limit` bytes of it.
    public func decoded(_ coding: ContentCoding, limit: Int) -> UpstreamBody {
        coding == .identity ? self : .init(storage: .decoded(self, coding, limit: limit))
    }

    /// The same body, stopped with an error at its next chunk once `guard` trips (`cancel()` trips it):
    /// a body that is not a live transfer (a paced mock answer) is cut too, not only a live one.
    public func guarded(by bodyGuard: BodyGuard) -> UpstreamBody { .init(storage: .guarded(self, bodyGuard)) }

    /// The same body rewritten by `transform` as it streams (what it holds back comes out at the end).
    public func transformed(by transform: any BodyTransform) -> UpstreamBody { .init(storage: .transformed(self, transform)) }

    /// The same body with echoed credentials replaced.
    public func scrubbed(by scrubber: SecretScrubber) -> UpstreamBody {
        scrubber.isEmpty ? self : .init(storage: .scrubbed(self, scrubber))
    }

    /// The whole body if it is already in memory: a mock's chunks, or a live body that has fully arrived
    /// (then it is taken out of the stream). Lets the proxy answer small responses in one write.
    public func takeCompleteBody() throws(UpstreamError) -> ByteBuffer? {
        try whole { storage in
            if case .bodyStream(let s) = storage { return s.completeBody() }
            return Self.inMemory(storage)
        }
    }

    /// Whether reading it undoes a content coding (gzip, deflate) on the way: an upstream that ignored
    /// `Accept-Encoding: identity`, whose body can still turn out corrupt or cut off.
    public var isDecoded: Bool {
        switch storage {
        case .decoded: return true
        case .scrubbed(let base, _), .observed(let base, _, _), .truncated(let base), .guarded(let base, _), .transformed(let base, _):
            return base.isDecoded
        default: return false
        }
    }

    /// Stops the upstream transfer (the agent went away or a limit was hit).
    public func cancel() {
        switch storage {
        case .bodyStream(let s): s.cancel()
        case .scrubbed(let base, _), .observed(let base, _, _), .truncated(let base), .decoded(let base, _, _), .transformed(let base, _):
            base.cancel()
        case .guarded(let base, let bodyGuard):
            bodyGuard.trip()
            base.cancel()
        default: break
        }
    }

    /// The whole body when it is already in memory (mock answers), without iterating. A mock stream
    /// with a pause between its chunks is not: it must reach the agent chunk by chunk, as a live one does.
    public var bufferedBytes: ByteBuffer? { (try? whole(Self.inMemory)) ?? nil }

    /// The whole body as `leaf` finds it beneath the scrubbing and metering wrappers, passed back up
    /// through them (scrubbed; shown to the meter, which is then told the body ended). A whole body its
    /// content coding cannot undo (corrupt or cut-off gzip) is the upstream's protocol error, and one that
    /// decodes past its limit is too large: the answer can still be a problem instead of a head followed
    /// by a cut connection.
    private func whole(_ leaf: (Storage) -> ByteBuffer?) throws(UpstreamError) -> ByteBuffer? {
        switch storage {
        case .scrubbed(let base, let scrubber): return try base.whole(leaf).map { scrubber.scrub($0) }
        case .decoded(let base, let coding, let limit):
            guard let raw = try base.whole(leaf) else { return nil }
            do { return try Inflater.decodeWhole(raw, coding: coding, limit: limit) } catch {
                throw error.kind == .responseTooLarge ? error : .undecodable
            }
        case .guarded(let base, _): return try base.whole(leaf)
        case .transformed(let base, let transform):
            return try base.whole(leaf).map { b in
                var out = transform.transform(b)
                var rest = transform.finish()
                out.writeBuffer(&rest)
                return out
            }
        case .observed(let base, let observe, let finished):
            return try base.whole(leaf).map { b in
                observe(b)
                finished()
                return b
            }
        default: return leaf(storage)
        }
    }

    /// A mock's chunks in one buffer, unless they are paced.
    private static func inMemory(_ storage: Storage) -> ByteBuffer? {
        guard case .chunks(let chunks, let delay) = storage else { return nil }
        guard chunks.count > 1 else { return chunks.first ?? ByteBuffer() }
        guard delay == .zero else { return nil }
        var all = ByteBuffer()
        for var c in chunks { all.writeBuffer(&c) }
        return all
    }

    public func makeAsyncIterator() -> AsyncIterator {
        switch storage {
        case .chunks(let chunks, let delay): return AsyncIterator(state: .chunks(chunks[...], delay: delay, first: true))
        case .client(let body): return AsyncIterator(state: .client(body.makeAsyncIterator()))
        case .stream(let s): return AsyncIterator(state: .stream(s.makeAsyncIterator()))
        case .bodyStream(let s): return AsyncIterator(state: .bodyStream(s))
        case .scrubbed(let base, let scrubber):
            return AsyncIterator(state: .scrubbed(AsyncIterator.Box(base.makeAsyncIterator()), scrubber, carry: [], done: false))
        case .observed(let base, let observe, let finished):
            return AsyncIterator(state: .observed(AsyncIterator.Box(base.makeAsyncIterator()), observe, finished))
        case .truncated(let base):
            return AsyncIterator(state: .truncated(AsyncIterator.Box(base.makeAsyncIterator()), sent: false))
        case .decoded(let base, let coding, let limit):
            return AsyncIterator(state: .decoded(AsyncIterator.Box(base.makeAsyncIterator()), coding, limit: limit, inflater: nil))
        case .guarded(let base, let bodyGuard):
            return AsyncIterator(state: .guarded(AsyncIterator.Box(base.makeAsyncIterator()), bodyGuard))
        case .transformed(let base, let transform):
            return AsyncIterator(state: .transformed(AsyncIterator.Box(base.makeAsyncIterator()), transform, done: false))
        }
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        enum State {
            case chunks(ArraySlice<ByteBuffer>, delay: Duration, first: Bool)
            case client(HTTPClientResponse.Body.AsyncIterator)
            case stream(AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator)
            case bodyStream(BodyStream)
            case scrubbed(Box, SecretScrubber, carry: [UInt8], done: Bool)
            case observed(Box, @Sendable (ByteBuffer) -> Void, @Sendable () -> Void)
            case truncated(Box, sent: Bool)
            case decoded(Box, ContentCoding, limit: Int, inflater: Inflater?)
            case guarded(Box, BodyGuard)
            case transformed(Box, any BodyTransform, done: Bool)
        }
        var state: State

        /// Boxes the wrapped iterator (an enum case cannot hold its own type inline).
        final class Box {
            var iterator: AsyncIterator
            init(_ iterator: AsyncIterator) { self.iterator = iterator }
        }

        public mutating func next() async throws -> ByteBuffer? {
            switch state {
            case .chunks(var rest, let delay, let first):
                guard let next = rest.popFirst() else { return nil }
                if !first, delay > .zero { try await Task.sleep(for: delay) }
                state = .chunks(rest, delay: delay, first: false)
                return next
            case .client(var it):
                let next = try await it.next()
                state = .client(it)
                return next
            case .stream(var it):
                let next = try await it.next()
                state = .stream(it)
                return next
            case .bodyStream(let s):
                return try await s.next()
            case .scrubbed(let box, let scrubber, var carry, let done):
                if done { return nil }
                while true {
                    guard let chunk = try await box.iterator.next() else {
                        state = .scrubbed(box, scrubber, carry: [], done: true)
                        if carry.isEmpty { return nil }
                        return scrubber.scrub(chunk: ByteBuffer(), carry: &carry, final: true)
                    }
                    let out = scrubber.scrub(chunk: chunk, carry: &carry, final: false)
                    state = .scrubbed(box, scrubber, carry: carry, done: false)
                    if out.readableBytes > 0 { return out }
                }
            case .observed(let box, let observe, let finished):
                guard let chunk = try await box.iterator.next() else {
                    finished()
                    return nil
                }
                observe(chunk)
                return chunk
            case .decoded(let box, let coding, let limit, let current):
                let inflater = try current ?? Inflater(coding, limit: limit)
                state = .decoded(box, coding, limit: limit, inflater: inflater)
                while true {
                    guard let chunk = try await box.iterator.next() else {
                        guard inflater.finished else {
                            throw UpstreamError(.protocolError, beforeSend: false, detail: "the response's \(coding) encoding ends early")
                        }
                        return nil
                    }
                    let out = try inflater.decode(chunk)
                    if out.readableBytes > 0 { return out }
                }
            case .guarded(let box, let bodyGuard):
                if bodyGuard.tripped { throw UpstreamError(.cancelled, beforeSend: false, detail: "stopped") }
                let chunk = try await box.iterator.next()
                if bodyGuard.tripped { throw UpstreamError(.cancelled, beforeSend: false, detail: "stopped") }
                return chunk
            case .transformed(let box, let transform, let done):
                if done { return nil }
                while true {
                    guard let chunk = try await box.iterator.next() else {
                        state = .transformed(box, transform, done: true)
                        let rest = transform.finish()
                        return rest.readableBytes > 0 ? rest : nil
                    }
                    let out = transform.transform(chunk)
                    if out.readableBytes > 0 { return out }
                }
            case .truncated(let box, let sent):
                if sent {
                    var e = UpstreamError(.protocolError, beforeSend: false, detail: "connection closed mid-body")
                    e.chaos = "truncate"
                    throw e
                }
                state = .truncated(box, sent: true)
                guard var chunk = try await box.iterator.next() else { return nil }
                return chunk.readSlice(length: Swift.max(1, chunk.readableBytes / 2)) ?? chunk
            }
        }
    }

    /// Reads the whole body, failing once it exceeds `limit` bytes.
    public func collect(upTo limit: Int) async throws -> ByteBuffer {
        if let b = bufferedBytes, b.readableBytes <= limit { return b }
        var all = ByteBuffer()
        for try await var chunk in self {
            guard all.readableBytes + chunk.readableBytes <= limit else {
                throw UpstreamError(.responseTooLarge, beforeSend: false, detail: "body over \(limit) bytes")
            }
            all.writeBuffer(&chunk)
        }
        return all
    }
}

/// A switch that stops a guarded body (`UpstreamBody.guarded(by:)`).
public final class BodyGuard: Sendable {
    private let flag = Atomic<Bool>(false)

    public init() {}

    public var tripped: Bool { flag.load(ordering: .acquiring) }
    public func trip() { flag.store(true, ordering: .releasing) }
}

/// A stateful rewrite of a body as it streams (`UpstreamBody.transformed(by:)`): each chunk in, the bytes to
/// pass on out — possibly fewer, when some are held back until a later chunk shows what they are.
public protocol BodyTransform: AnyObject, Sendable {
    /// The bytes to pass on for `chunk`.
    func transform(_ chunk: ByteBuffer) -> ByteBuffer
    /// What is still held back, at the body's end.
    func finish() -> ByteBuffer
}
