import NIOCore

/// Pauses a connection's reads while the consumer of its `BodyStream` is behind: each chunk is handed
/// over, and reading resumes once the stream says the producer may send more (at once when it has room).
/// Shared by the pooled and the single-use upstream connection handlers; confined to the channel's loop.
final class ReadPause {
    private var paused = false
    private var pendingRead = false

    func feed(_ chunk: ByteBuffer, to stream: BodyStream, context: ChannelHandlerContext) {
        paused = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        stream.append(chunk, on: context.eventLoop).whenComplete { _ in
            let (gate, context) = bound.value
            gate.paused = false
            if gate.pendingRead {
                gate.pendingRead = false
                context.read()
            }
        }
    }

    /// The handler's `read(context:)`: held back while paused.
    func read(_ context: ChannelHandlerContext) {
        if paused { pendingRead = true } else { context.read() }
    }
}
