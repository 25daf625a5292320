import NIOCore

/// Flushes a channel once its loop has handled the current round of I/O events, so the writes of one
/// round leave in a burst (the peer wakes once for several of them) instead of one wake-up each. One
/// per connection, confined to its loop.
public final class DeferredFlush {
    private var pending = false

    public init() {}

    public func flush(_ context: ChannelHandlerContext) {
        guard !pending else { return }
        pending = true
        let channel = context.channel
        context.eventLoop.assumeIsolated().execute {
            self.pending = false
            channel.flush()
        }
    }
}
