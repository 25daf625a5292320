import NIOCore

/// A connection's write buffer, used again for its next message.
///
/// Each answer or request used to allocate a fresh buffer (two allocations, and memory the CPU has not
/// touched lately). On a keep-alive connection the previous message has long been written by the time
/// the next is built, so its buffer is free again: `take` then reuses it in place. If the channel
/// still holds it (a write still pending), `clear` gives a fresh one instead — never shared bytes.
public struct ReusableBuffer {
    private var kept: ByteBuffer?
    /// Larger buffers are not kept: one big answer should not pin its memory for the connection's life.
    static let keepLimit = 64 * 1024

    public init() {}

    /// An empty buffer with room for at least `capacity` bytes.
    public mutating func take(capacity: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        guard var buffer = kept else { return allocator.buffer(capacity: capacity) }
        kept = nil
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }

    /// Remembers the buffer just written, for the next `take`.
    public mutating func keep(_ buffer: ByteBuffer) {
        if buffer.capacity <= Self.keepLimit { kept = buffer }
    }
}
