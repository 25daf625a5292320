import NIOCore

/// What NIO's request decoder does not bound, decided from the raw bytes as they arrive (`InputMeter`)
/// and the parts the decoder makes of them. A value type with event-named methods returning what the
/// connection must do; the handler owns the timers.
///
/// - **Framing overhead.** The body limit counts chunk *data*; a chunk-size line may carry extensions
///   of any length (`2;` and a gigabyte, or tens of thousands of `;a=b`), which llhttp reads and drops
///   (the class of Node's CVE-2024-22019). Every raw byte of a chunked body that is not body data —
///   size lines, extensions, CRLFs, trailers — counts as overhead, refused past
///   `overheadAllowance + body/8` (a client chunking 1 MiB in 100-byte pieces spends about 6 %).
/// - **A drip-fed head.** The first byte of a request starts `header_timeout`; the whole head must
///   arrive before it passes (an idle keep-alive connection keeps `idle_timeout`; stray CR/LF between
///   requests starts nothing).
/// - **A drip-fed body.** The end of the head starts `body_timeout` for a request that has a body.
struct RequestInputGuard {
    /// Framing bytes allowed in any chunked body, on top of an eighth of its data.
    static let overheadAllowance = 16 * 1024

    enum Action: Equatable {
        case none
        /// The first bytes of a request: start the head deadline.
        case startHeadDeadline
        /// The chunked body's framing is over its allowance: refuse and close.
        case refuseFraming
    }

    private(set) var rawBytes = 0
    private var rawAtHead = 0
    private var bodyBytes = 0
    private var chunkedBody = false
    private var headPending = false
    /// The first bytes of the request being read, until its head is parsed: a head the decoder refuses
    /// is still answered as its entry's (the compatibility API's problems carry `"success": false`).
    private var linePrefix: [UInt8] = []

    /// Bytes arrived, before the decoder reads them. `betweenRequests`: no request is being read or
    /// answered (the handler is idle with nothing queued).
    mutating func input(_ buffer: ByteBuffer, betweenRequests: Bool) -> Action {
        defer { rawBytes += buffer.readableBytes }
        if chunkedBody, overhead > Self.overheadAllowance + bodyBytes / 8 { return .refuseFraming }
        if headPending, linePrefix.count < 64 { linePrefix += buffer.readableBytesView.prefix(64 - linePrefix.count) }
        guard betweenRequests, !headPending else { return .none }
        guard let first = buffer.readableBytesView.firstIndex(where: { $0 != 0x0D && $0 != 0x0A }) else { return .none }
        headPending = true
        linePrefix = Array(buffer.readableBytesView[first...].prefix(64))
        return .startHeadDeadline
    }

    /// The decoder produced a request head. Returns whether a body deadline starts (the request has one).
    mutating func head(contentLength: Int?, chunked: Bool) -> Bool {
        headPending = false
        linePrefix.removeAll(keepingCapacity: true)
        rawAtHead = rawBytes
        bodyBytes = 0
        chunkedBody = chunked
        return chunked || (contentLength ?? 0) > 0
    }

    mutating func body(_ count: Int) { bodyBytes += count }

    /// The request's end: its body deadline (if any) is over.
    mutating func end() { chunkedBody = false }

    /// A request that never finished (refused, or the connection went): nothing pending any more.
    mutating func reset() {
        chunkedBody = false
        headPending = false
    }

    /// Whether the connection opened with a TLS handshake record (content type 22, version 3.x): a client
    /// told `HTTPS_PROXY=https://…`, which speaks TLS to this plain-HTTP port.
    var isTLSHandshake: Bool {
        rawAtHead == 0 && linePrefix.count >= 3 && linePrefix[0] == 0x16 && linePrefix[1] == 0x03 && linePrefix[2] <= 0x04
    }

    /// Whether the request being read names the compatibility API in its request line.
    var namesCompatibilityAPI: Bool {
        guard let space = linePrefix.firstIndex(of: 0x20) else { return false }
        let target = linePrefix[(space + 1)...]
        let path = Array("/api/proxy-request".utf8)
        guard target.starts(with: path) else { return false }
        let next = target.dropFirst(path.count).first
        return next == nil || next == 0x20 || next == UInt8(ascii: "?")
    }

    /// Raw bytes of the current body that were not body data. An underestimate by at most one read (the
    /// read that carried the head counts before `rawAtHead`), which only makes the check more lenient.
    var overhead: Int { max(0, rawBytes - rawAtHead - bodyBytes) }
}

/// Sits before the request decoder and shows the connection's handler each read as it arrives, so
/// framing and time limits see the bytes the decoder consumes without a trace.
final class InputMeter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Set by the handler when it joins the pipeline.
    var handler: ProxyHTTPHandler?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        handler?.inputArrived(unwrapInboundIn(data))
        context.fireChannelRead(data)
    }

    func handlerRemoved(context: ChannelHandlerContext) { handler = nil }
}
