import Foundation
import Synchronization

/// Wakes the event streams of a run when it has something new: events written here (the embedded
/// store says so once they are durable) or on another sidecar (its pub/sub message). A stream reads
/// the events themselves from the store, after the last id it sent — the hub carries no events, so a
/// missed or duplicated wake can delay a stream by a heartbeat at most, never make it skip or repeat.
///
/// Also counts the streams per run, for the cap (`runs.max_streams_per_run`).
final class RunHub: Sendable {
    private struct Waiter {
        let continuation: AsyncStream<Void>.Continuation
    }

    private let waiters = Mutex<[String: [UUID: Waiter]]>([:])
    let maxStreamsPerRun: Int

    init(maxStreamsPerRun: Int) { self.maxStreamsPerRun = maxStreamsPerRun }

    /// A wake-up sequence for one stream of `run`, or nil when the run has its cap of streams here.
    /// Subscribe before reading the store, so nothing written in between goes unnoticed.
    func subscribe(_ run: String) -> (wakes: AsyncStream<Void>, wake: @Sendable () -> Void, cancel: @Sendable () -> Void)? {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = UUID()
        let added = waiters.withLock { w -> Bool in
            if (w[run]?.count ?? 0) >= maxStreamsPerRun { return false }
            w[run, default: [:]][id] = Waiter(continuation: continuation)
            return true
        }
        guard added else { return nil }
        let cancel: @Sendable () -> Void = { [self] in
            waiters.withLock { w in
                w[run]?[id] = nil
                if w[run]?.isEmpty == true { w[run] = nil }
            }
            continuation.finish()
        }
        return (stream, { continuation.yield() }, cancel)
    }

    func wake(_ runs: [String]) {
        let conts: [AsyncStream<Void>.Continuation] = waiters.withLock { w in runs.flatMap { w[$0]?.values.map(\.continuation) ?? [] } }
        for c in conts { c.yield() }
    }

    func streams(_ run: String) -> Int { waiters.withLock { $0[run]?.count ?? 0 } }
}
