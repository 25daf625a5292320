import NIOCore
import NIOHTTP1
import Upstreams

/// Serves the requests of one agent connection.
///
/// It collects a request (head and body, within the limits), hands it to the async pipeline in a task,
/// and writes the answer back — buffered answers in one flush, streamed upstream bodies chunk by chunk,
/// suspending only when the socket's write buffer is full. The task starts on this connection's event
/// loop, and because the process runs Swift concurrency on NIO's loops it stays there, so the upstream
/// connection is taken from the same loop. If the agent disconnects, the task is cancelled and with it
/// the upstream call.
///
/// All stored state is confined to the event loop; the task reaches it only through `Sink`.
final class ProxyHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case collecting(head: HTTPRequestHead, body: ByteBuffer?, record: RequestRecord)
        case processing(record: RequestRecord)
        /// Refused mid-request: our side is shut, input is discarded until the client closes.
        case discarding
    }

    private let shared: ProxyContext
    private var state = State.idle
    private var context: ChannelHandlerContext?
    private var inFlight: Task<Void, Never>?
    private var writabilityWaiters: [CheckedContinuation<Void, any Error>] = []

    init(shared: ProxyContext) { self.shared = shared }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: Inbound events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            guard case .idle = state else { return }
            let requestID = RequestID.from(head.headers)
            var record = RequestRecord(requestID: requestID, method: head.method.rawValue, start: .now)
            shared.metrics.inFlight.increment()
            let limits = shared.limits
            if let problem = Self.framingProblem(head, limits: limits) {
                return refuse(problem, head: head, record: &record)
            }
            if let declared = head.headers.first(name: "content-length").flatMap(Int.init), declared > limits.maxRequestBodyBytes {
                return refuse(.bodyTooLarge(limit: limits.maxRequestBodyBytes), head: head, record: &record)
            }
            if head.headers.first(name: "expect")?.lowercased() == "100-continue" {
                context.writeAndFlush(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
            }
            state = .collecting(head: head, body: nil, record: record)
        case .body(var chunk):
            guard case .collecting(let head, var body, var record) = state else { return }
            state = .processing(record: record)  // releases `body`'s storage for in-place appends
            if (body?.readableBytes ?? 0) + chunk.readableBytes > shared.limits.maxRequestBodyBytes {
                return refuse(.bodyTooLarge(limit: shared.limits.maxRequestBodyBytes), head: head, record: &record)
            }
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
            state = .collecting(head: head, body: body, record: record)
        case .end:
            guard case .collecting(let head, let body, var record) = state else { return }
            record.bytesIn = body?.readableBytes ?? 0
            state = .processing(record: record)
            start(InboundRequest(head: head, body: body, requestID: record.requestID), record: record, context: context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { resumeWriters(with: nil) }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        inFlight?.cancel()
        resumeWriters(with: ChannelError.ioOnClosedChannel)
        if case .collecting(_, _, var record) = state {
            record.outcome = "client_closed"
            complete(&record)
        }
        state = .discarding
        context.fireChannelInactive()
    }

    // MARK: Refusals before the pipeline

    /// Answers with a problem and closes: shuts our side, then discards input until the client closes or
    /// two seconds pass. Closing at once with unread input would make the kernel send a reset that can
    /// destroy the answer before the client reads it.
    private func refuse(_ problem: GatewayError, head: HTTPRequestHead, record: inout RequestRecord) {
        guard let context else { return }
        record.outcome = problem.codeString
        let response = ResponseMapper.problem(problem, requestID: record.requestID)
        var headers = response.headers
        headers.replaceOrAdd(name: "Connection", value: "close")
        record.status = Int(problem.status.code)
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: problem.status, headers: headers))), promise: nil)
        if case .buffer(let body) = response.body, head.method != .HEAD {
            record.bytesOut = body.readableBytes
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
        complete(&record)
        state = .discarding
    }

    /// Records a finished request: one access log line and the request metrics.
    private func complete(_ record: inout RequestRecord) {
        record.totalDuration = ContinuousClock.now - record.start
        shared.metrics.inFlight.decrement()
        shared.finish(record)
    }

    // MARK: The pipeline task

    private func start(_ request: InboundRequest, record: RequestRecord, context: ChannelHandlerContext) {
        let sink = Sink(handler: NIOLoopBound(self, eventLoop: context.eventLoop), eventLoop: context.eventLoop)
        let shared = self.shared
        inFlight = Task {
            var record = record
            let response = await shared.pipeline.handle(request, record: &record)
            await sink.respond(response, to: request.head, draining: shared.draining, record: &record)
            // After the last byte (or after giving up): release the concurrency slot, settle budgets.
            await response.completion?()
        }
    }

    /// The task's only door into the event-loop-confined handler: every call runs on the loop (directly
    /// when the task is already there, which is the normal case).
    struct Sink: Sendable {
        let handler: NIOLoopBound<ProxyHTTPHandler>
        let eventLoop: any EventLoop

        func onLoop<T: Sendable>(_ body: @escaping @Sendable (ProxyHTTPHandler) throws -> T) async throws -> T {
            if eventLoop.inEventLoop { return try body(handler.value) }
            return try await eventLoop.submit { try body(handler.value) }.get()
        }

        func waitUntilWritable() async throws {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
                let register: @Sendable () -> Void = {
                    let h = handler.value
                    if h.context?.channel.isWritable ?? false { cont.resume() } else if h.context == nil {
                        cont.resume(throwing: ChannelError.ioOnClosedChannel)
                    } else {
                        h.writabilityWaiters.append(cont)
                    }
                }
                if eventLoop.inEventLoop { register() } else { eventLoop.execute(register) }
            }
        }

        /// Writes the response and completes the request. The final write and the completion happen in
        /// one step on the loop, so a pipelined next request (which NIO delivers as soon as `.end` is
        /// written) always finds the handler idle.
        func respond(_ response: ProxyResponse, to request: HTTPRequestHead, draining: DrainState, record: inout RequestRecord) async {
            var buffered: ByteBuffer?
            var stream: UpstreamBody?
            var limit = Int.max
            switch response.body {
            case .buffer(let b): buffered = b
            case .stream(let body, let l):
                limit = l
                // Small upstream answers have usually arrived whole by now: write them in one go.
                if let complete = body.takeCompleteBody() {
                    if complete.readableBytes > l {
                        record.outcome = "upstream_response_too_large"
                        let problem = ResponseMapper.problem(
                            GatewayError(UpstreamError(.responseTooLarge, beforeSend: false, detail: "")), requestID: record.requestID)
                        return await respond(problem, to: request, draining: draining, record: &record)
                    }
                    buffered = complete
                } else {
                    stream = body
                }
            }
            let framing = ResponseFraming.decide(
                headers: response.headers, requestMethod: request.method, status: response.status,
                version: request.version, bufferedLength: buffered?.readableBytes)
            let close = !request.isKeepAlive || draining.isDraining || framing.closeAfter
            var headers = framing.headers
            if close { headers.replaceOrAdd(name: "Connection", value: "close") }
            let head = HTTPResponseHead(version: request.version, status: response.status, headers: headers)
            record.status = Int(response.status.code)

            if let buffered {
                let body = framing.sendBody && buffered.readableBytes > 0 ? buffered : nil
                record.bytesOut = body?.readableBytes ?? 0
                if let start = record.upstreamStart, record.upstreamDuration == nil { record.upstreamDuration = .now - start }
                let final = record
                do {
                    try await onLoop { $0.writeWhole(head, body: body, completing: final, keepAlive: !close) }
                } catch {
                    record.outcome = "client_closed"
                    await abort(record)
                }
                return
            }

            guard let stream else { return await abort(record) }
            do {
                try await onLoop { try $0.writeHead(head) }
                var iterator = stream.makeAsyncIterator()
                while true {
                    let chunk: ByteBuffer?
                    do {
                        chunk = try await iterator.next()
                    } catch {
                        // The upstream failed mid-body: the head is gone, so the only honest signal left
                        // is to cut the connection instead of ending the message normally.
                        record.outcome = Task.isCancelled ? "client_closed" : GatewayError(HTTPClientTransport.classify(error)).codeString
                        throw error
                    }
                    guard let chunk else { break }
                    guard framing.sendBody else { continue }
                    record.bytesOut += chunk.readableBytes
                    if record.bytesOut > limit {
                        record.outcome = "upstream_response_too_large"
                        stream.cancel()
                        throw UpstreamError(.responseTooLarge, beforeSend: false, detail: "streamed body over limit")
                    }
                    do {
                        if try await onLoop({ try $0.writeBody(chunk) }) { try await waitUntilWritable() }
                    } catch {
                        record.outcome = "client_closed"
                        stream.cancel()
                        throw error
                    }
                }
                record.upstreamDuration = record.upstreamStart.map { .now - $0 }
                let final = record
                try await onLoop { try $0.writeEnd(completing: final, keepAlive: !close) }
            } catch {
                record.upstreamDuration = record.upstreamStart.map { .now - $0 }
                await abort(record)
            }
        }

        /// Completes a request whose response could not be finished, and cuts the connection.
        func abort(_ record: RequestRecord) async {
            try? await onLoop { handler in
                handler.finishRequest(record, keepAlive: false)
            }
        }
    }

    // MARK: Writes (on the loop)

    private func writeWhole(_ head: HTTPResponseHead, body: ByteBuffer?, completing record: RequestRecord, keepAlive: Bool) {
        guard let context else { return finishRequest(record, keepAlive: false) }
        finishRequest(record, keepAlive: true)
        context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
        if let body { context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        writeFinalEnd(context, keepAlive: keepAlive)
    }

    /// Ends the response; a connection that may not be reused is closed once the end is flushed.
    private func writeFinalEnd(_ context: ChannelHandlerContext, keepAlive: Bool) {
        if keepAlive {
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            let channel = context.channel
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// Records the request and makes the handler ready for the next one (before the final write).
    private func finishRequest(_ record: RequestRecord, keepAlive: Bool) {
        var record = record
        inFlight = nil
        complete(&record)
        if case .processing = state { state = .idle }
        if !keepAlive { context?.close(promise: nil) }
    }

    private func writeHead(_ head: HTTPResponseHead) throws {
        guard let context, context.channel.isActive else { throw ChannelError.ioOnClosedChannel }
        context.writeAndFlush(Self.wrapOutboundOut(.head(head)), promise: nil)
    }

    /// Returns true when the caller must wait for writability before sending more.
    private func writeBody(_ chunk: ByteBuffer) throws -> Bool {
        guard let context, context.channel.isActive else { throw ChannelError.ioOnClosedChannel }
        context.writeAndFlush(Self.wrapOutboundOut(.body(.byteBuffer(chunk))), promise: nil)
        return !context.channel.isWritable
    }

    private func writeEnd(completing record: RequestRecord, keepAlive: Bool) throws {
        guard let context, context.channel.isActive else { throw ChannelError.ioOnClosedChannel }
        finishRequest(record, keepAlive: true)
        writeFinalEnd(context, keepAlive: keepAlive)
    }

    private func resumeWriters(with error: (any Error)?) {
        let waiters = writabilityWaiters
        writabilityWaiters.removeAll()
        for w in waiters {
            if let error { w.resume(throwing: error) } else { w.resume() }
        }
    }

    // MARK: Framing checks

    /// Content-Length / Transfer-Encoding combinations that make the body's length ambiguous
    /// (request smuggling), and request-targets that are too long.
    static func framingProblem(_ head: HTTPRequestHead, limits: ListenerLimits) -> GatewayError? {
        if head.uri.utf8.count > limits.maxHeaderBytes { return .headersTooLarge(limit: limits.maxHeaderBytes) }
        let lengths = head.headers["content-length"]
        let te = head.headers["transfer-encoding"]
        if !lengths.isEmpty, !te.isEmpty { return .framing("both Content-Length and Transfer-Encoding are present") }
        if lengths.count > 1 || lengths.contains(where: { $0.contains(",") }) { return .framing("duplicate Content-Length") }
        if let l = lengths.first, Int(l) == nil || l.hasPrefix("+") || l.hasPrefix("-") { return .framing("invalid Content-Length") }
        if te.count > 1 || te.contains(where: { $0.lowercased() != "chunked" }) {
            return .framing("only a single Transfer-Encoding: chunked is accepted")
        }
        return nil
    }
}
