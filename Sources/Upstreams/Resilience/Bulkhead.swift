import Synchronization

/// Caps concurrent upstream calls of one tool, with a bounded FIFO wait queue and a wait timeout, so one
/// slow tool cannot take every connection and task of the sidecar.
public final class Bulkhead: Sendable {
    public struct Saturated: Error, Sendable {}

    private struct State {
        var active = 0
        var waiters: [(id: Int, continuation: CheckedContinuation<Void, any Error>)] = []
        var nextID = 0
    }

    public let maxConcurrent: Int
    public let maxQueue: Int
    public let wait: Duration
    private let state = Mutex(State())

    public init(maxConcurrent: Int, maxQueue: Int, wait: Duration) {
        self.maxConcurrent = maxConcurrent
        self.maxQueue = maxQueue
        self.wait = wait
    }

    public var queueLength: Int { state.withLock { $0.waiters.count } }
    public var active: Int { state.withLock { $0.active } }

    /// Takes a free slot without waiting; false when none is free or others already wait (they go first).
    public func tryAcquire() -> Bool {
        state.withLock { s in
            guard s.active < maxConcurrent, s.waiters.isEmpty else { return false }
            s.active += 1
            return true
        }
    }

    /// Takes a slot, waiting (in order) up to `wait`; throws `Saturated` when the queue is full or the
    /// wait times out.
    public func acquire() async throws {
        enum Immediate { case granted, full, wait(Int) }
        let immediate: Immediate = state.withLock { s in
            if s.active < maxConcurrent {
                s.active += 1
                return .granted
            }
            if s.waiters.count >= maxQueue { return .full }
            s.nextID += 1
            return .wait(s.nextID)
        }
        switch immediate {
        case .granted: return
        case .full: throw Saturated()
        case .wait(let id):
            let timeout = Task {
                try await Task.sleep(for: wait)
                self.expire(id)
            }
            defer { timeout.cancel() }
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                state.withLock { $0.waiters.append((id, c)) }
            }
        }
    }

    private func expire(_ id: Int) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return s.waiters.remove(at: i).continuation
        }
        waiter?.resume(throwing: Saturated())
    }

    /// Frees a slot; the oldest waiter (if any) takes it over.
    public func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            if !s.waiters.isEmpty { return s.waiters.removeFirst().continuation }
            s.active = max(0, s.active - 1)
            return nil
        }
        next?.resume()
    }
}
