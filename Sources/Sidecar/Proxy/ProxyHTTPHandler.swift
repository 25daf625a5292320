import Crypto
import NIOCore
import NIOHTTP1
import Upstreams

/// Serves the requests of one agent connection: the only handler behind NIO's request decoder.
///
/// It collects a request (head and body, within the limits), starts the pipeline on this connection's
/// event loop (`Pipeline.start`: the common call needs no task; a stage that waits continues in one, and
/// because the process runs Swift concurrency on NIO's loops it stays on this loop, so the upstream
/// connection is taken from the same loop), and writes the answer back as bytes it encodes itself
/// (`ResponseEncoder`) — complete answers in one write, streamed upstream bodies chunk by chunk from a
/// task that suspends only while the socket's write buffer is full. If the agent disconnects, the call
/// in flight is cancelled and with it the upstream request.
///
/// The connection duties that used to be separate handlers live here too, so each request part crosses
/// one handler instead of five:
/// - **pipelining**: parts that arrive while a response is pending are queued (bounded; past the bound
///   reads stop) and served in order after it. Reads are not paused for every request, which would cost
///   two `epoll_ctl` calls per request.
/// - **graceful shutdown**: on `ChannelShouldQuiesceEvent` an idle connection closes at once, a busy one
///   after its current response.
/// - **idle timeout**: a connection that sends nothing for `limits.idleTimeout` between requests or
///   while sending one (slowloris) is closed — never one that waits for, or streams, its response.
/// - **parse errors** become a problem+json answer (a bare 400 tells an agent nothing), then a lingering
///   close: the stream can no longer be trusted.
///
/// All stored state is confined to the event loop; the task reaches it only through `Sink`.
final class ProxyHTTPHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        case idle
        case collecting(head: HTTPRequestHead, body: ByteBuffer?, record: RequestRecord)
        /// Handed to the pipeline; its response is not finished yet.
        case processing
        /// Refused mid-request, or a parse error: our side is shut, input is discarded until the client
        /// closes.
        case discarding
    }

    /// What arrived while a response was pending, in order.
    private enum Queued {
        case part(HTTPServerRequestPart)
        case parseError(HTTPParserError)
    }

    private let shared: ProxyContext
    /// Set when this handler reads the decrypted requests of an intercepted `CONNECT` tunnel.
    private let tunnel: TunnelPlan?
    private var state = State.idle
    private var context: ChannelHandlerContext?
    /// The task writing a streamed answer.
    private var inFlight: Task<Void, Never>?
    /// Aborts the call in flight (its upstream request) when the agent goes away.
    private var cancelInFlight: (@Sendable () -> Void)?
    /// The buffer the last answer's head was written into, for the next one.
    private var writeBuffer = ReusableBuffer()
    /// Answers handed to `respond` on this connection (tells `start` whether its call is still pending).
    private var answered = 0
    private var writabilityWaiters: [CheckedContinuation<Void, any Error>] = []
    /// The current streamed response uses chunked framing.
    private var chunkedResponse = false
    /// The answers of one round of I/O events leave in a burst.
    private let deferredFlush = DeferredFlush()

    private var queued = CircularBuffer<Queued>()
    private var queuedBytes = 0
    /// Reads are stopped because the queue is full; `readPending` remembers a read asked for meanwhile.
    private var readHeld = false
    private var readPending = false
    /// Shutting down: no new request is taken on this connection.
    private var quiescing = false

    private var lastRead = NIODeadline.now()
    /// The connection's one timer: idle timeout, head and body deadlines. It is moved earlier only when a
    /// new deadline comes before it, and otherwise re-armed when it fires, so back-to-back requests on a
    /// kept-alive connection schedule and cancel nothing (a timer per request cost ~8 % of the CPU).
    private var idleCheck: Scheduled<Void>?
    private var checkAt: NIODeadline?
    /// Framing overhead and the head and body deadlines (`RequestInputGuard`), fed by the `InputMeter`.
    private var inputGuard = RequestInputGuard()
    /// The last credential this connection presented (decoded and hashed once, not per request).
    private let credentials = CredentialMemo()
    /// When the request being read began (its head pending), and when its head ended (its body pending).
    private var headStarted: NIODeadline?
    private var bodyStarted: NIODeadline?

    init(shared: ProxyContext, tunnel: TunnelPlan? = nil) {
        self.shared = shared
        self.tunnel = tunnel
    }

    private var limits: ListenerLimits { shared.limits }
    /// What may wait behind the current request (pipelined) before reading stops: a head and up to
    /// 1 MiB of its body — the rest is read once the body is the current one, counted in `shared.bodies`.
    private var queueLimit: Int { limits.maxHeaderBytes + min(limits.maxRequestBodyBytes, 1024 * 1024) }
    /// The body limit of the request being read (the compatibility API's is smaller).
    private var bodyLimit = 0
    /// Bytes of the current request's body taken from `shared.bodies`, given back when it is finished.
    private var heldBodyBytes = 0

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let meter = try? context.pipeline.syncOperations.handler(type: InputMeter.self) { meter.handler = self }
        if context.channel.isActive { armIdleCheck(at: .now() + TimeAmount(limits.idleTimeout)) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        releaseBody()
        idleCheck?.cancel()
        cancelDeadlines()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if idleCheck == nil { armIdleCheck(at: .now() + TimeAmount(limits.idleTimeout)) }
        context.fireChannelActive()
    }

    // MARK: Inbound events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // The instance form: the optimizer specializes it, while the static `Self.unwrapInboundIn` stayed
        // generic here (metadata lookups and an unspecialized cast for every part).
        let part = unwrapInboundIn(data)
        switch state {
        case .discarding:
            return
        case .processing:
            enqueue(.part(part))
        case .idle, .collecting:
            if queued.isEmpty { deliver(part, context: context) } else { enqueue(.part(part)) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        lastRead = .now()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if readHeld { readPending = true } else { context.read() }
    }

    private func deliver(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            guard case .idle = state, !quiescing else { return }
            let requestID = RequestID.from(head.headers)
            var record = RequestRecord(requestID: requestID, method: head.method.rawValue, start: .now)
            shared.metrics.inFlight.increment()
            if let problem = Self.framingProblem(head, limits: limits) {
                return refuse(problem, head: head, record: &record)
            }
            bodyLimit = limits.maxRequestBodyBytes
            if head.method == .POST, head.uri.hasPrefix("/api/proxy-request"), Self.entry(of: head, tunnel: tunnel) == .compat {
                bodyLimit = limits.compatBodyBytes
            }
            if let declared = head.headers.first(name: "content-length").flatMap(Int.init), declared > bodyLimit {
                return refuse(.bodyTooLarge(limit: bodyLimit), head: head, record: &record)
            }
            headStarted = nil
            let chunked = head.headers.contains(name: "transfer-encoding")
            if inputGuard.head(contentLength: head.headers.first(name: "content-length").flatMap(Int.init), chunked: chunked) {
                let now = NIODeadline.now()
                bodyStarted = now
                armCheck(at: now + TimeAmount(limits.bodyTimeout))
            }
            if head.headers.first(name: "expect")?.lowercased() == "100-continue" {
                var interim = context.channel.allocator.buffer(capacity: 32)
                interim.writeStaticString(ResponseEncoder.continueLine)
                context.writeAndFlush(Self.wrapOutboundOut(interim), promise: nil)
            }
            state = .collecting(head: head, body: nil, record: record)
        case .body(var chunk):
            guard case .collecting(let head, var body, var record) = state else { return }
            state = .processing  // releases `body`'s storage for in-place appends
            inputGuard.body(chunk.readableBytes)
            if (body?.readableBytes ?? 0) + chunk.readableBytes > bodyLimit {
                return refuse(.bodyTooLarge(limit: bodyLimit), head: head, record: &record)
            }
            guard shared.bodies.take(chunk.readableBytes) else {
                return refuse(.overloaded(buffered: shared.bodies.current), head: head, record: &record)
            }
            heldBodyBytes += chunk.readableBytes
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
            state = .collecting(head: head, body: body, record: record)
        case .end:
            guard case .collecting(let head, let body, var record) = state else { return }
            state = .processing  // first: the record is then this one's alone, and changes it in place
            inputGuard.end()
            bodyStarted = nil
            record.bytesIn = body?.readableBytes ?? 0
            if head.method == .CONNECT, tunnel == nil { return openTunnel(head, record: consume record, context: context) }
            start(
                InboundRequest(head: head, body: body, requestID: record.requestID, tunnel: tunnel, credentials: credentials),
                record: consume record, context: context)
        }
    }

    private func enqueue(_ event: Queued) {
        guard !quiescing else { return }
        queued.append(event)
        if case .part(let part) = event { queuedBytes += Self.size(of: part) }
        if queuedBytes > queueLimit { readHeld = true }
    }

    /// Serves what queued up behind the response that just finished, until one of it is pending again.
    private func drainQueue(context: ChannelHandlerContext) {
        while !queued.isEmpty {
            switch state {
            case .processing, .discarding: return
            case .idle, .collecting: break
            }
            switch queued.removeFirst() {
            case .part(let part):
                queuedBytes -= Self.size(of: part)
                deliver(part, context: context)
            case .parseError(let error):
                answerParseError(error, context: context)
            }
        }
        if readHeld {
            readHeld = false
            if readPending {
                readPending = false
                context.read()
            }
        }
    }

    private static func size(of part: HTTPServerRequestPart) -> Int {
        switch part {
        case .head(let h): return h.uri.utf8.count + h.headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
        case .body(let b): return b.readableBytes
        case .end: return 0
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { resumeWriters(with: nil) }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleCheck?.cancel()
        cancelDeadlines()
        inFlight?.cancel()
        cancelInFlight?()
        resumeWriters(with: ChannelError.ioOnClosedChannel)
        if case .collecting(_, _, var record) = state {
            record.outcome = "client_closed"
            complete(&record)
        }
        state = .discarding
        queued.removeAll()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else { return context.fireUserInboundEventTriggered(event) }
        quiescing = true
        queued.removeAll()
        queuedBytes = 0
        if case .idle = state { context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // After a refusal or parse error the decoder may refuse further input: expected while discarding.
        if case .discarding = state { return }
        guard let parserError = error as? HTTPParserError else { return context.fireErrorCaught(error) }
        if case .processing = state {
            // It belongs to a pipelined request: answered in order, after the current response.
            return enqueue(.parseError(parserError))
        }
        answerParseError(parserError, context: context)
    }

    // MARK: Idle timeout and deadlines

    /// Makes the connection's check fire no later than `deadline`.
    private func armCheck(at deadline: NIODeadline) {
        if let checkAt, checkAt <= deadline { return }
        idleCheck?.cancel()
        armIdleCheck(at: deadline)
    }

    private func armIdleCheck(at deadline: NIODeadline) {
        guard let context else { return }
        checkAt = deadline
        // Strong, not weak: the check is cancelled when the handler is removed or the channel goes
        // inactive, and a weak reference would give the handler a side table, sending every retain and
        // release of it (several per request) down the runtime's slow path.
        idleCheck = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { self.idleCheckFired() }
    }

    private func idleCheckFired() {
        checkAt = nil
        guard let context else { return }
        let now = NIODeadline.now()
        if let started = headStarted, case .idle = state, queued.isEmpty, started + TimeAmount(limits.headerTimeout) <= now {
            return headDeadlinePassed()
        }
        if let started = bodyStarted, case .collecting = state, started + TimeAmount(limits.bodyTimeout) <= now {
            return bodyDeadlinePassed()
        }
        let idle = TimeAmount(limits.idleTimeout)
        var next: NIODeadline
        switch state {
        case .discarding:
            return
        case .processing:
            next = now + idle
        case .idle, .collecting:
            if lastRead + idle <= now { return context.close(promise: nil) }
            next = lastRead + idle
        }
        if let started = headStarted { next = min(next, started + TimeAmount(limits.headerTimeout)) }
        if let started = bodyStarted { next = min(next, started + TimeAmount(limits.bodyTimeout)) }
        armIdleCheck(at: next)
    }

    // MARK: Input limits (RequestInputGuard)

    /// A read arrived (from the `InputMeter`, before the decoder sees it).
    func inputArrived(_ buffer: ByteBuffer) {
        var betweenRequests = false
        if case .idle = state, queued.isEmpty { betweenRequests = true }
        switch inputGuard.input(buffer, betweenRequests: betweenRequests) {
        case .none:
            break
        case .startHeadDeadline:
            let now = NIODeadline.now()
            headStarted = now
            armCheck(at: now + TimeAmount(limits.headerTimeout))
        case .refuseFraming:
            guard case .collecting(let head, _, var record) = state else { return }
            refuse(
                .framing("the chunked body's framing (chunk-size lines, extensions, trailers) is over \(RequestInputGuard.overheadAllowance) bytes plus an eighth of its data"),
                head: head, record: &record)
        }
    }

    /// The request being read is over (answered, refused, or the connection went): no deadline is due.
    private func cancelDeadlines() {
        headStarted = nil
        bodyStarted = nil
    }

    /// The head did not arrive within `header_timeout` of its first byte: 408, then close.
    private func headDeadlinePassed() {
        headStarted = nil
        guard case .idle = state, queued.isEmpty, context?.channel.isActive == true else { return }
        shared.metrics.inFlight.increment()
        var record = RequestRecord(requestID: RequestID.generate(), method: "-", start: .now)
        refuse(GatewayError(.requestTimeout, "the request head did not arrive within \(limits.headerTimeout)"), head: nil, record: &record)
    }

    /// The body did not arrive within `body_timeout` of the head: 408, then close.
    private func bodyDeadlinePassed() {
        bodyStarted = nil
        guard case .collecting(let head, _, var record) = state, context?.channel.isActive == true else { return }
        refuse(GatewayError(.requestTimeout, "the request body did not arrive within \(limits.bodyTimeout)"), head: head, record: &record)
    }

    // MARK: Refusals before the pipeline

    /// Answers with a problem and closes: shuts our side, then discards input until the client closes or
    /// two seconds pass. Closing at once with unread input would make the kernel send a reset that can
    /// destroy the answer before the client reads it.
    private func refuse(_ problem: GatewayError, head: HTTPRequestHead?, record: inout RequestRecord) {
        releaseBody()  // before the answer leaves: a client told of it may send the next body at once
        guard let context else { return }
        inputGuard.reset()
        cancelDeadlines()
        record.outcome = problem.codeString
        // The entry as the request line names it, so a refusal here reads like one from the pipeline (the
        // compatibility API's answers carry `"success": false`).
        if record.entry == nil, let head { record.entry = Self.entry(of: head, tunnel: tunnel) }
        let response = ResponseMapper.problem(problem, requestID: record.requestID, entry: record.entry)
        let version = head?.version ?? .http1_1
        let method = head?.method ?? .GET
        record.status = Int(problem.status.code)
        var body = ByteBuffer()
        if case .buffer(let b) = response.body { body = b }
        let head = Self.head(response, method: method, version: version, bufferedLength: body.readableBytes, closing: true)
        let sent = Self.sentBody(head, body)
        record.bytesOut = sent?.readableBytes ?? 0
        digest(sent, into: &record)
        let (first, rest) = encodedWhole(head, body: sent, context: context)
        if rest != nil { context.write(Self.wrapOutboundOut(first), promise: nil) }
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(rest ?? first)).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
        complete(&record)
        state = .discarding
        queued.removeAll()
    }

    /// A request the decoder could not parse: one log line, then the problem answer.
    private func answerParseError(_ error: HTTPParserError, context: ChannelHandlerContext) {
        // The decoder reports a message cut off by end of input as it closes: the agent went away, there
        // is no one to answer, and `channelInactive` (next) logs a started request as `client_closed`.
        guard context.channel.isActive else { return }
        var mapped = GatewayError(parserError: error, maxHeaderBytes: limits.maxHeaderBytes)
        if inputGuard.isTLSHandshake {
            // A careless proxy setting, not an attack: say so where the operator looks (the agent's client
            // reads no HTTP answer on its TLS connection; it reports "wrong version number" or the like).
            mapped = .malformed("a TLS handshake reached the plain-HTTP proxy port: set HTTPS_PROXY to http://host:port (the sidecar intercepts CONNECT tunnels itself)")
            if let count = shared.tlsOnPlainPort.admit() {
                shared.logger.warning(
                    "a client spoke TLS to the plain-HTTP proxy port; its HTTPS_PROXY must be http://<host>:<port>, not https://",
                    metadata: ["connections": "\(count)"])
            }
        }
        var record: RequestRecord
        if case .collecting(_, _, let started) = state {
            record = started
        } else {
            // Nothing of it was understood: it gets a fresh id, and is counted in flight like any request
            // (`complete` counts it out).
            shared.metrics.inFlight.increment()
            record = RequestRecord(requestID: RequestID.generate(), method: "-", start: .now)
        }
        var head: HTTPRequestHead?
        if case .collecting(let h, _, _) = state { head = h }
        if head == nil, inputGuard.namesCompatibilityAPI { record.entry = .compat }
        refuse(mapped, head: head, record: &record)
    }

    /// Records a finished request: one access log line and the request metrics.
    private func complete(_ record: inout RequestRecord) {
        releaseBody()
        record.totalDuration = MonotonicInstant.now - record.start
        shared.metrics.inFlight.decrement()
        shared.finish(record)
    }

    /// Gives the current request's body bytes back to the shared budget (its request is finished, or the
    /// connection is gone).
    private func releaseBody() {
        guard heldBodyBytes > 0 else { return }
        shared.bodies.give(heldBodyBytes)
        heldBodyBytes = 0
    }

    // MARK: CONNECT

    /// A `CONNECT` on the plain listener: checked (`Pipeline.planTunnel`; a name http_fetch would reach
    /// is resolved and checked too), then answered `200` and the connection handed to the tunnel stack
    /// (`TunnelSetup`) — or refused with a problem answer, before any TLS.
    private func openTunnel(_ head: HTTPRequestHead, record: consuming RequestRecord, context: ChannelHandlerContext) {
        var record = record
        let plan: TunnelPlan
        do {
            plan = try shared.pipeline.planTunnel(head, record: &record)
        } catch {
            return refuseTunnel(error, head: head, passthrough: false, record: &record)
        }
        guard shared.pipeline.needsResolution(plan) else { return establishTunnel(plan, head: head, record: record) }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let pipeline = shared.pipeline
        let loop = context.eventLoop
        let waiting = record
        Task {
            let checked = await pipeline.checkTunnelDestination(plan)
            loop.execute {
                var record = waiting
                switch checked {
                case .success(let plan): handler.value.establishTunnel(plan, head: head, record: record)
                case .failure(let error): handler.value.refuseTunnel(error, head: head, passthrough: plan.passthrough, record: &record)
                }
            }
        }
    }

    private func refuseTunnel(_ error: GatewayError, head: HTTPRequestHead, passthrough: Bool, record: inout RequestRecord) {
        shared.metrics.tunnel(passthrough ? "passthrough" : "intercept", "refused")
        guard context?.channel.isActive == true else {
            record.outcome = "client_closed"
            return complete(&record)
        }
        refuse(error.forEntry(.tunnel), head: head, record: &record)
    }

    /// Answers `200 Connection established` and replaces this handler and the HTTP decoder with the
    /// tunnel's: the ClientHello is read next. The `CONNECT` itself is no request of its own in the
    /// metrics or the access log: the requests read inside the tunnel are (a pass-through tunnel gets
    /// one line when it closes).
    private func establishTunnel(_ plan: TunnelPlan, head: HTTPRequestHead, record: RequestRecord) {
        guard let context, context.channel.isActive, !quiescing else {
            var record = record
            record.outcome = "client_closed"
            return complete(&record)
        }
        shared.metrics.inFlight.decrement()
        var established = context.channel.allocator.buffer(capacity: 64)
        established.writeStaticString("HTTP/1.1 200 Connection established\r\n\r\n")
        context.writeAndFlush(Self.wrapOutboundOut(established), promise: nil)
        idleCheck?.cancel()
        state = .discarding
        do {
            try TunnelSetup.install(plan, record: record, replacing: context, shared: shared)
        } catch {
            context.close(promise: nil)
        }
    }

    // MARK: The pipeline

    /// Starts the pipeline on this loop. Most calls are answered on the loop alone (see
    /// `Pipeline.start`); the answer is written here as soon as it is complete.
    private func start(_ request: InboundRequest, record: consuming RequestRecord, context: ChannelHandlerContext) {
        let answeredBefore = answered
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let head = request.head
        let cancel = shared.pipeline.start(request, record: consume record, on: context.eventLoop) { handled in
            handler.value.respond(consume handled, to: head)
        }
        // An answer that was ready at once has been written already (and the next queued request may
        // have started, with its own cancel): only a pending call keeps this one.
        if answered == answeredBefore { cancelInFlight = cancel }
    }

    /// Writes an answer: a complete body at once, on the loop; a body still arriving from a task, which
    /// suspends while the socket is full. Then frees what the call held.
    private func respond(_ handled: consuming Pipeline.Handled, to request: HTTPRequestHead) {
        cancelInFlight = nil
        answered &+= 1
        let response = handled.response
        guard let context, context.channel.isActive else {
            // The agent went away while the call was in flight.
            if case .stream(let body, _) = response.body { body.cancel() }
            handled.record.outcome = "client_closed"
            finishRequest(handled.record, keepAlive: false)
            return response.completion.start(on: context?.eventLoop)
        }
        let stream: UpstreamBody
        let limit: Int
        switch Self.wholeBody(response, record: &handled.record) {
        case .whole(let answer, let body):
            // Moved on (`consume`): a record still held here would be copied when the write fills it in.
            let record = (consume handled).record
            // The slot and budgets are settled before the answer goes out: an agent that calls again as
            // soon as it has the answer — on this sidecar or another — finds its concurrency slot free.
            response.completion.start(on: context.eventLoop)
            return respondWhole(answer, body: body, to: request, record: consume record)
        case .stream(let body, let l):
            (stream, limit) = (body, l)
        }
        let sink = Sink(handler: NIOLoopBound(self, eventLoop: context.eventLoop), eventLoop: context.eventLoop, digest: shared.pipeline.receipts != nil)
        let head = Self.head(
            response, method: request.method, version: request.version, bufferedLength: nil,
            closing: closes(after: request))
        let record = handled.record
        let loop = context.eventLoop
        inFlight = Task {
            var record = record
            // Before the last byte is written (as for a whole answer), or after giving up: release the
            // concurrency slot, settle budgets.
            let settled = await sink.respond(stream, limit: limit, head: head, request: request, record: &record) {
                await response.completion.run(on: loop)
            }
            if !settled { await response.completion.run(on: loop) }
        }
    }

    private enum Whole {
        case whole(ProxyResponse, ByteBuffer)
        case stream(UpstreamBody, limit: Int)
    }

    /// The answer's body if it is all there: buffered, or an upstream body that has fully arrived (most
    /// small answers have, by the time their head is handed over). Over the size limit, the answer
    /// becomes the problem that says so.
    private static func wholeBody(_ response: ProxyResponse, record: inout RequestRecord) -> Whole {
        switch response.body {
        case .buffer(let body):
            return .whole(response, body)
        case .stream(let body, let limit):
            let taken: ByteBuffer?
            do { taken = try body.takeCompleteBody() } catch { return problem(GatewayError(error), instead: body, limit: limit, record: &record) }
            guard let complete = taken else { return .stream(body, limit: limit) }
            guard complete.readableBytes <= limit else {
                return problem(GatewayError(UpstreamError(.responseTooLarge, beforeSend: false, detail: "")), instead: body, limit: limit, record: &record)
            }
            return .whole(response, complete)
        }
    }

    /// The problem answered in place of a whole body that cannot be passed on (too large, or not decodable).
    private static func problem(_ error: GatewayError, instead body: UpstreamBody, limit: Int, record: inout RequestRecord) -> Whole {
        record.outcome = error.codeString
        let problem = ResponseMapper.problem(error, requestID: record.requestID)
        guard case .buffer(let text) = problem.body else { return .stream(body, limit: limit) }
        return .whole(problem, text)
    }

    /// The answer's head as framed for a request of `method` and `version` (`Connection: close` when
    /// the connection ends after it: `closing`, or a body delimited by the close).
    private static func head(
        _ response: ProxyResponse, method: HTTPMethod, version: HTTPVersion, bufferedLength: Int?, closing: Bool
    ) -> ResponseEncoder.Head {
        let framing = ResponseFraming.decide(
            headers: response.headers, requestMethod: method, status: response.status, version: version, bufferedLength: bufferedLength)
        return ResponseEncoder.Head(
            version: version, status: response.status, headers: response.headers, framing: framing, close: closing || framing.closeAfter)
    }

    /// Whether the connection ends after answering `request`: the agent asked for it, or the sidecar
    /// is draining.
    private func closes(after request: HTTPRequestHead) -> Bool { !request.isKeepAlive || shared.draining.isDraining }

    /// The SHA-256 of a whole answer's body, for the call's receipt (receipts on only).
    private func digest(_ body: ByteBuffer?, into record: inout RequestRecord) {
        guard shared.pipeline.receipts != nil else { return }
        record.responseDigest = (body ?? ByteBuffer()).withUnsafeReadableBytes { SHA256Value.of($0) }
    }

    /// The body that goes out after `head` (none for HEAD, 1xx, 204, 304, or when empty).
    private static func sentBody(_ head: ResponseEncoder.Head, _ body: ByteBuffer) -> ByteBuffer? {
        head.framing.sendBody && body.readableBytes > 0 ? body : nil
    }

    private func respondWhole(_ response: ProxyResponse, body: ByteBuffer, to request: HTTPRequestHead, record: consuming RequestRecord) {
        let head = Self.head(
            response, method: request.method, version: request.version, bufferedLength: body.readableBytes,
            closing: closes(after: request))
        record.status = Int(response.status.code)
        let sent = Self.sentBody(head, body)
        record.bytesOut = sent?.readableBytes ?? 0
        digest(sent, into: &record)
        if let start = record.upstreamStart, record.upstreamDuration == nil { record.upstreamDuration = .now - start }
        writeWhole(head, body: sent, completing: record, keepAlive: !head.close)
    }

    /// The task's only door into the event-loop-confined handler: every call runs on the loop (directly
    /// when the task is already there, which is the normal case).
    struct Sink: Sendable {
        let handler: NIOLoopBound<ProxyHTTPHandler>
        let eventLoop: any EventLoop
        /// Receipts are on: the body's SHA-256 is taken as it streams.
        let digest: Bool

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

        /// How much of a body the sidecar decodes is read before its head goes out (`respond`).
        static let readAhead = 64 * 1024

        /// What reading ahead found: the chunks read (the whole body when `ended`), or why it failed.
        private enum Ahead {
            case read([ByteBuffer], ended: Bool)
            case failed(any Error)
        }

        /// Up to `readAhead` bytes of the body, stopping at its end, a failure or `limit`.
        private static func readAhead(_ iterator: inout UpstreamBody.AsyncIterator, limit: Int) async -> Ahead {
            var chunks: [ByteBuffer] = []
            var bytes = 0
            do {
                while bytes < readAhead {
                    guard let chunk = try await iterator.next() else { return .read(chunks, ended: true) }
                    bytes += chunk.readableBytes
                    guard bytes <= limit else { throw UpstreamError(.responseTooLarge, beforeSend: false, detail: "decoded body over limit") }
                    chunks.append(chunk)
                }
                return .read(chunks, ended: false)
            } catch {
                return .failed(error)
            }
        }

        /// The problem answered, whole, in place of a body that failed before its head went out.
        private func answer(instead stream: UpstreamBody, failure: any Error, limit: Int, request: HTTPRequestHead, record: inout RequestRecord) async {
            stream.cancel()
            record.upstreamDuration = record.upstreamStart.map { .now - $0 }
            let error = GatewayError(HTTPClientTransport.classify(failure))
            guard !Task.isCancelled, case .whole(let problem, let text) = ProxyHTTPHandler.problem(error, instead: stream, limit: limit, record: &record) else {
                record.outcome = "client_closed"
                return await abort(record)
            }
            let final = record
            try? await onLoop { $0.respondWhole(problem, body: text, to: request, record: final) }
        }

        /// Writes a response whose body is still arriving, chunk by chunk, and completes the request.
        /// The final write and the completion happen in one step on the loop, and a pipelined next
        /// request is served only after it.
        ///
        /// A body the sidecar decodes (an upstream that ignored `Accept-Encoding: identity`) is read ahead
        /// before the head goes out: one that is corrupt, cut off or too large within the first
        /// `readAhead` bytes is answered as the problem it is, not as a head and then a cut connection.
        /// Not an event stream: its events must reach the agent as they come.
        /// Returns whether `beforeEnd` ran: it runs once the body has all been read and written, before
        /// the message's end is written.
        @discardableResult
        func respond(
            _ stream: UpstreamBody, limit: Int, head: ResponseEncoder.Head, request: HTTPRequestHead, record: inout RequestRecord,
            beforeEnd: () async -> Void = {}
        ) async -> Bool {
            let framing = head.framing
            var iterator = stream.makeAsyncIterator()
            var ahead: [ByteBuffer] = []  // last chunk first
            var ended = false
            var settled = false
            if stream.isDecoded, !HeaderRules.isEventStream(head.headers) {
                switch await Self.readAhead(&iterator, limit: limit) {
                case .read(let chunks, let end): (ahead, ended) = (chunks.reversed(), end)
                case .failed(let failure):
                    await answer(instead: stream, failure: failure, limit: limit, request: request, record: &record)
                    return false
                }
            }
            record.status = Int(head.status.code)

            do {
                try await onLoop { try $0.writeHead(head) }
                var hasher: SHA256? = digest ? SHA256() : nil
                while true {
                    let chunk: ByteBuffer?
                    do {
                        if let read = ahead.popLast() { chunk = read } else if ended { chunk = nil } else { chunk = try await iterator.next() }
                    } catch {
                        // The upstream failed mid-body: the head is gone, so the only honest signal left
                        // is to cut the connection instead of ending the message normally.
                        record.outcome = Task.isCancelled ? "client_closed" : GatewayError(HTTPClientTransport.classify(error)).codeString
                        throw error
                    }
                    guard let chunk else { break }
                    guard framing.sendBody else { continue }
                    if hasher != nil { chunk.withUnsafeReadableBytes { hasher!.update(bufferPointer: $0) } }
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
                if let hasher { record.responseDigest = SHA256Value(hasher.finalize()) }
                let final = record
                await beforeEnd()
                settled = true
                try await onLoop { try $0.writeEnd(completing: final, keepAlive: !head.close) }
                return true
            } catch {
                record.upstreamDuration = record.upstreamStart.map { .now - $0 }
                await abort(record)
                return settled
            }
        }

        /// Completes a request whose response could not be finished, and cuts the connection.
        func abort(_ record: RequestRecord) async {
            try? await onLoop { handler in
                handler.finishRequest(record, keepAlive: false)
                handler.context?.close(promise: nil)
            }
        }
    }

    // MARK: Writes (on the loop)

    private func writeWhole(_ head: ResponseEncoder.Head, body: ByteBuffer?, completing record: consuming RequestRecord, keepAlive: Bool) {
        guard let context else { return finishRequest(record, keepAlive: false) }
        let (first, rest) = encodedWhole(head, body: body, context: context)
        if rest != nil { context.write(Self.wrapOutboundOut(first), promise: nil) }
        releaseBody()
        writeFinal(rest ?? first, context: context, keepAlive: keepAlive)
        finishRequest(record, keepAlive: keepAlive)
    }

    /// A complete answer as bytes: head and body in one buffer (this connection's reusable one) when the
    /// body is small enough to copy, else the head's buffer and then the body itself.
    private func encodedWhole(_ head: ResponseEncoder.Head, body: ByteBuffer?, context: ChannelHandlerContext) -> (ByteBuffer, rest: ByteBuffer?) {
        let bodyBytes = body?.readableBytes ?? 0
        let coalesce = bodyBytes <= ResponseEncoder.coalesceLimit
        var buffer = writeBuffer.take(capacity: ResponseEncoder.headSize(head) + (coalesce ? bodyBytes : 0), allocator: context.channel.allocator)
        ResponseEncoder.writeHead(head, into: &buffer)
        if var body, coalesce { buffer.writeBuffer(&body) }
        // Kept only once complete: a reference held while writing would make the writes copy.
        writeBuffer.keep(buffer)
        return (buffer, coalesce ? nil : body)
    }

    private func writeHead(_ head: ResponseEncoder.Head) throws {
        guard let context, context.channel.isActive else { throw ChannelError.ioOnClosedChannel }
        chunkedResponse = head.framing.chunked
        var buffer = writeBuffer.take(capacity: ResponseEncoder.headSize(head), allocator: context.channel.allocator)
        ResponseEncoder.writeHead(head, into: &buffer)
        writeBuffer.keep(buffer)
        context.writeAndFlush(Self.wrapOutboundOut(buffer), promise: nil)
    }

    /// Returns true when the caller must wait for writability before sending more.
    private func writeBody(_ chunk: ByteBuffer) throws -> Bool {
        guard let context, context.channel.isActive else { throw ChannelError.ioOnClosedChannel }
        if chunkedResponse {
            guard chunk.readableBytes > 0 else { return !context.channel.isWritable }
            var framed = context.channel.allocator.buffer(capacity: chunk.readableBytes + 20)
            ResponseEncoder.writeChunk(chunk, into: &framed)
            context.writeAndFlush(Self.wrapOutboundOut(framed), promise: nil)
        } else {
            context.writeAndFlush(Self.wrapOutboundOut(chunk), promise: nil)
        }
        return !context.channel.isWritable
    }

    private func writeEnd(completing record: consuming RequestRecord, keepAlive: Bool) throws {
        guard let context, context.channel.isActive else { throw ChannelError.ioOnClosedChannel }
        var end = context.channel.allocator.buffer(capacity: chunkedResponse ? 8 : 0)
        if chunkedResponse { end.writeStaticString(ResponseEncoder.lastChunk) }
        releaseBody()
        writeFinal(end, context: context, keepAlive: keepAlive)
        finishRequest(record, keepAlive: keepAlive)
    }

    /// Writes the last bytes of a response; a connection that may not be reused is closed once they are
    /// flushed.
    private func writeFinal(_ buffer: ByteBuffer, context: ChannelHandlerContext, keepAlive: Bool) {
        if keepAlive && !quiescing {
            context.write(Self.wrapOutboundOut(buffer), promise: nil)
            deferredFlush.flush(context)
        } else {
            let channel = context.channel
            context.writeAndFlush(Self.wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// Records the request and makes the handler ready for the next one (after the final write). A
    /// connection that is not kept alive takes no further request (its close follows the final flush).
    private func finishRequest(_ record: consuming RequestRecord, keepAlive: Bool) {
        inFlight = nil
        chunkedResponse = false
        complete(&record)
        guard keepAlive, !quiescing else {
            state = .discarding
            queued.removeAll()
            return
        }
        if case .processing = state { state = .idle }
        if let context { drainQueue(context: context) }
    }

    private func resumeWriters(with error: (any Error)?) {
        let waiters = writabilityWaiters
        writabilityWaiters.removeAll()
        for w in waiters {
            if let error { w.resume(throwing: error) } else { w.resume() }
        }
    }

    /// The entry a request line names (before the pipeline has classified it).
    static func entry(of head: HTTPRequestHead, tunnel: TunnelPlan?) -> Entry? {
        if tunnel != nil || head.method == .CONNECT { return .tunnel }
        if head.uri.hasPrefix("/") {
            let path = head.uri.prefix { $0 != "?" }
            return path == "/api/proxy-request" ? .compat : .reverse
        }
        return .forward
    }

    // MARK: Framing checks

    /// Content-Length / Transfer-Encoding combinations that make the body's length ambiguous
    /// (request smuggling), and request-targets that are too long.
    static func framingProblem(_ head: HTTPRequestHead, limits: ListenerLimits) -> GatewayError? {
        if head.uri.utf8.count > limits.maxHeaderBytes { return .headersTooLarge(limit: limits.maxHeaderBytes) }
        let lengths = head.headers["content-length"]
        let te = head.headers["transfer-encoding"]
        if !lengths.isEmpty, !te.isEmpty { return .framing("both Content-Length and Transfer-Encoding are present") }
        if lengths.count > 1 || lengths.contains(where: { $0.utf8.contains(UInt8(ascii: ",")) }) { return .framing("duplicate Content-Length") }
        if let l = lengths.first, Int(l) == nil || l.hasPrefix("+") || l.hasPrefix("-") { return .framing("invalid Content-Length") }
        if te.count > 1 || te.contains(where: { $0.lowercased() != "chunked" }) {
            return .framing("only a single Transfer-Encoding: chunked is accepted")
        }
        return nil
    }
}
