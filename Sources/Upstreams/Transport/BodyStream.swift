import NIOConcurrencyHelpers
import NIOCore

/// A single-consumer buffer between an event-loop producer (the HTTP client delegate) and an async
/// consumer (the proxy writing to the agent).
///
/// Built for the common case of small upstream answers: when the whole body has already arrived, `next()`
/// returns without suspending and `completeBody()` hands it over in one piece, so the proxy writes head,
/// body and end in a single flush. Large bodies get backpressure: past `highWater` buffered bytes the
/// producer's future is held until the consumer catches up.
public final class BodyStream: @unchecked Sendable {
    private struct State {
        var chunks = CircularBuffer<ByteBuffer>(initialCapacity: 4)
        var buffered = 0
        var finished = false
        var failure: (any Error)?
        var consumer: CheckedContinuation<ByteBuffer?, any Error>?
        var producer: EventLoopPromise<Void>?
        var cancelled = false

        /// The next chunk, with whatever else has arrived behind it (up to `coalesceLimit`): the consumer
        /// writes what it gets at once, so a read of many small upstream chunks (SSE events, one per
        /// chunk) becomes one write to the agent instead of one write — one syscall — per event.
        mutating func popCoalesced() -> ByteBuffer? {
            guard var first = chunks.popFirst() else { return nil }
            while let more = chunks.first, first.readableBytes + more.readableBytes <= BodyStream.coalesceLimit {
                var next = chunks.removeFirst()
                first.writeBuffer(&next)
            }
            buffered -= first.readableBytes
            return first
        }
    }

    /// At most this many bytes are joined into one chunk for the consumer.
    static let coalesceLimit = 64 * 1024

    private let lock = NIOLock()
    private var state = State()
    private let highWater: Int
    /// Told when the consumer gives up, so the upstream call is aborted (no closure and weak box per
    /// body); held strongly until `detach` or a cancel (an owner that holds the body detaches once its
    /// exchange is over, which ends the cycle).
    private var owner: (any BodyStreamOwner)?

    public init(highWater: Int = 256 * 1024) { self.highWater = highWater }

    /// Routes the consumer's cancel to `owner` until `detach()`.
    public func attach(_ owner: any BodyStreamOwner) { lock.withLock { self.owner = owner } }

    /// Ends the link to the owner (breaks the owner ↔ body reference cycle once the exchange is over).
    public func detach() { lock.withLock { owner = nil } }

    // MARK: Producer side (event loop)

    /// Adds a chunk; the returned future completes when the producer may send more.
    public func append(_ chunk: ByteBuffer, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let action: (CheckedContinuation<ByteBuffer?, any Error>?, EventLoopFuture<Void>) = lock.withLock {
            if state.cancelled { return (nil, eventLoop.makeSucceededVoidFuture()) }
            if let consumer = state.consumer {
                state.consumer = nil
                return (consumer, eventLoop.makeSucceededVoidFuture())
            }
            state.chunks.append(chunk)
            state.buffered += chunk.readableBytes
            if state.buffered > highWater {
                let p = eventLoop.makePromise(of: Void.self)
                state.producer = p
                return (nil, p.futureResult)
            }
            return (nil, eventLoop.makeSucceededVoidFuture())
        }
        action.0?.resume(returning: chunk)
        return action.1
    }

    public func finish() {
        let consumer: CheckedContinuation<ByteBuffer?, any Error>? = lock.withLock {
            state.finished = true
            defer { state.consumer = nil }
            return state.consumer
        }
        consumer?.resume(returning: nil)
    }

    public func fail(_ error: any Error) {
        let consumer: CheckedContinuation<ByteBuffer?, any Error>? = lock.withLock {
            if state.finished { return nil }
            state.failure = error
            state.finished = true
            defer { state.consumer = nil }
            return state.consumer
        }
        consumer?.resume(throwing: error)
    }

    // MARK: Consumer side

    /// The whole body, if it has fully arrived and nothing was consumed yet; nil otherwise.
    public func completeBody() -> ByteBuffer? {
        lock.withLock {
            guard state.finished, state.failure == nil else { return nil }
            var all = state.chunks.popFirst() ?? ByteBuffer()
            while var next = state.chunks.popFirst() { all.writeBuffer(&next) }
            state.buffered = 0
            return all
        }
    }

    public func next() async throws -> ByteBuffer? {
        enum Immediate {
            case chunk(ByteBuffer, EventLoopPromise<Void>?)
            case end
            case failed(any Error)
            case wait
        }
        let immediate: Immediate = lock.withLock {
            // Cancelled (the consumer gave up, or the call was killed): never a clean end of what is left.
            if state.cancelled { return .failed(CancellationError()) }
            if let c = state.popCoalesced() {
                var release: EventLoopPromise<Void>?
                if state.buffered <= highWater / 2, let p = state.producer {
                    state.producer = nil
                    release = p
                }
                return .chunk(c, release)
            }
            if let f = state.failure { return .failed(f) }
            if state.finished { return .end }
            return .wait
        }
        switch immediate {
        case .chunk(let c, let release):
            release?.succeed(())
            return c
        case .end: return nil
        case .failed(let e): throw e
        case .wait: break
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<ByteBuffer?, any Error>) in
                let resumeNow: Result<ByteBuffer?, any Error>? = lock.withLock {
                    if let c = state.popCoalesced() { return .success(c) }
                    if let f = state.failure { return .failure(f) }
                    if state.finished { return .success(nil) }
                    if state.cancelled { return .failure(CancellationError()) }
                    state.consumer = cont
                    return nil
                }
                if let resumeNow { cont.resume(with: resumeNow) }
            }
        } onCancel: {
            self.cancel()
        }
    }

    /// The consumer is gone: drop buffered data, release the producer, abort the upstream call.
    public func cancel() {
        let (consumer, producer, owner): (CheckedContinuation<ByteBuffer?, any Error>?, EventLoopPromise<Void>?, (any BodyStreamOwner)?) = lock.withLock {
            guard !state.cancelled else { return (nil, nil, nil) }
            state.cancelled = true
            state.chunks.removeAll()
            state.buffered = 0
            defer {
                state.consumer = nil
                state.producer = nil
                self.owner = nil
            }
            return (state.consumer, state.producer, self.owner)
        }
        consumer?.resume(throwing: CancellationError())
        producer?.succeed(())
        owner?.bodyCancelled()
    }
}

/// What a `BodyStream` tells when its consumer gives up (the agent went away, a size limit, a retry).
public protocol BodyStreamOwner: AnyObject, Sendable {
    func bodyCancelled()
}
