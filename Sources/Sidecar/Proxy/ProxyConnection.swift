import NIOCore
import NIOHTTP1
import Upstreams

/// Serves one agent connection: reads requests one at a time, hands each to the pipeline, and writes
/// the answer back — streaming upstream bodies chunk by chunk with the writer's backpressure.
///
/// The actor runs on the connection's own event loop (its executor *is* that loop). Because the
/// process installs NIO's event loops as Swift's global executor, the pipeline's nonisolated async
/// work stays on this loop too, and async-http-client picks this loop for the upstream connection.
actor ProxyConnection {
    typealias Channel = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let channel: Channel
    private let context: ProxyContext

    init(channel: Channel, context: ProxyContext) {
        self.channel = channel
        self.context = context
        self.unownedExecutor = channel.channel.eventLoop.executor.asUnownedSerialExecutor()
    }

    func serve() async {
        do {
            try await channel.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                while let part = try await iterator.next(isolation: self) {
                    guard case .head(let head) = part else { continue }
                    let keepGoing = try await self.handle(head: head, iterator: &iterator, outbound: outbound)
                    if !keepGoing { return }
                }
            }
        } catch {
            // The agent went away or the channel failed; parse errors were answered by ParseErrorResponder.
        }
    }

    /// Handles one request. Returns whether the connection may carry another one.
    private func handle(
        head: HTTPRequestHead, iterator: inout NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws -> Bool {
        let start = ContinuousClock.now
        let requestID = RequestID.from(head.headers)
        var record = RequestRecord(requestID: requestID, method: head.method.rawValue, start: start)
        context.metrics.inFlight.increment()
        defer {
            context.metrics.inFlight.decrement()
            record.totalDuration = ContinuousClock.now - start
            context.finish(record)
        }
        let limits = context.limits

        // Framing and size checks the decoder does not make.
        if let problem = Self.framingProblem(head, limits: limits) {
            record.outcome = problem.codeString
            try await write(ResponseMapper.problem(problem, requestID: requestID), request: head, close: true, outbound: outbound, record: &record)
            await lingeringClose(&iterator)
            return false
        }
        let declared = head.headers.first(name: "content-length").flatMap(Int.init)
        if let declared, declared > limits.maxRequestBodyBytes {
            let problem = GatewayError.bodyTooLarge(limit: limits.maxRequestBodyBytes)
            record.outcome = problem.codeString
            try await write(ResponseMapper.problem(problem, requestID: requestID), request: head, close: true, outbound: outbound, record: &record)
            await lingeringClose(&iterator)
            return false
        }
        if head.headers.first(name: "expect")?.lowercased() == "100-continue" {
            try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .continue)))
        }

        // Buffer the body (parameter guards need it), bounded by the limit.
        var body: ByteBuffer?
        readBody: while let part = try await iterator.next(isolation: self) {
            switch part {
            case .body(var chunk):
                let size = (body?.readableBytes ?? 0) + chunk.readableBytes
                if size > limits.maxRequestBodyBytes {
                    let problem = GatewayError.bodyTooLarge(limit: limits.maxRequestBodyBytes)
                    record.outcome = problem.codeString
                    try await write(ResponseMapper.problem(problem, requestID: requestID), request: head, close: true, outbound: outbound, record: &record)
                    await lingeringClose(&iterator)
                    return false
                }
                if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
            case .end:
                break readBody
            case .head:
                return false
            }
        }
        record.bytesIn = body?.readableBytes ?? 0

        let response = await context.pipeline.handle(InboundRequest(head: head, body: body, requestID: requestID), record: &record)
        let close = !head.isKeepAlive || context.draining.isDraining
        let reusable = try await write(response, request: head, close: close, outbound: outbound, record: &record)
        return !close && reusable
    }

    /// After refusing a request whose body is still arriving: shut our side and discard input until the
    /// client closes or two seconds pass, so the kernel does not answer the unread bytes with a reset
    /// that could destroy the refusal before the client reads it.
    private func lingeringClose(
        _ iterator: inout NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator
    ) async {
        let channel = self.channel.channel
        try? await channel.close(mode: .output)
        let timer = channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        defer { timer.cancel() }
        do {
            while try await iterator.next(isolation: self) != nil {}
        } catch {}
    }

    /// Writes a response; a buffered one in a single flush, a streamed one chunk by chunk.
    /// Returns false when the body had to be delimited by closing the connection.
    @discardableResult
    private func write(
        _ response: ProxyResponse, request: HTTPRequestHead, close: Bool,
        outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, record: inout RequestRecord
    ) async throws -> Bool {
        var buffered: ByteBuffer?
        if case .buffer(let b) = response.body { buffered = b }
        let framing = ResponseFraming.decide(
            headers: response.headers, requestMethod: request.method, status: response.status, version: request.version,
            bufferedLength: buffered?.readableBytes)
        var headers = framing.headers
        if close || framing.closeAfter { headers.replaceOrAdd(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: request.version, status: response.status, headers: headers)
        record.status = Int(response.status.code)
        switch response.body {
        case .buffer(let buffer):
            if framing.sendBody, buffer.readableBytes > 0 {
                record.bytesOut = buffer.readableBytes
                try await outbound.write(contentsOf: [.head(head), .body(.byteBuffer(buffer)), .end(nil)])
            } else {
                try await outbound.write(contentsOf: [.head(head), .end(nil)])
            }
            if let upstreamStart = record.upstreamStart, record.upstreamDuration == nil {
                record.upstreamDuration = ContinuousClock.now - upstreamStart
            }
        case .stream(let body, let limit):
            try await outbound.write(.head(head))
            var iterator = body.makeAsyncIterator()
            while true {
                let chunk: ByteBuffer?
                do {
                    chunk = try await iterator.next()
                } catch {
                    // The upstream failed mid-body: the head is gone, so the only honest signal left is
                    // to cut the connection instead of ending the message normally.
                    record.outcome = GatewayError(HTTPClientTransport.classify(error)).codeString
                    record.upstreamDuration = record.upstreamStart.map { ContinuousClock.now - $0 }
                    throw error
                }
                guard let chunk else { break }
                guard framing.sendBody else { continue }
                record.bytesOut += chunk.readableBytes
                if record.bytesOut > limit {
                    record.outcome = "upstream_response_too_large"
                    throw UpstreamError(.responseTooLarge, beforeSend: false, detail: "streamed body over \(limit) bytes")
                }
                do {
                    try await outbound.write(.body(.byteBuffer(chunk)))
                } catch {
                    record.outcome = "client_closed"
                    throw error
                }
            }
            record.upstreamDuration = record.upstreamStart.map { ContinuousClock.now - $0 }
            try await outbound.write(.end(nil))
        }
        return !framing.closeAfter
    }

    /// Content-Length / Transfer-Encoding combinations that make the body's length ambiguous
    /// (request smuggling), and request-targets that are too long.
    static func framingProblem(_ head: HTTPRequestHead, limits: ListenerLimits) -> GatewayError? {
        if head.uri.utf8.count > limits.maxHeaderBytes { return .headersTooLarge(limit: limits.maxHeaderBytes) }
        let lengths = head.headers["content-length"]
        let te = head.headers["transfer-encoding"]
        if !lengths.isEmpty, !te.isEmpty { return .framing("both Content-Length and Transfer-Encoding are present") }
        if lengths.count > 1 || lengths.contains(where: { $0.contains(",") }) { return .framing("duplicate Content-Length") }
        if let l = lengths.first, Int(l) == nil || l.hasPrefix("+") || l.hasPrefix("-") { return .framing("invalid Content-Length") }
        if te.count > 1 || te.contains(where: { $0.lowercased() != "chunked" }) { return .framing("only a single Transfer-Encoding: chunked is accepted") }
        return nil
    }
}
