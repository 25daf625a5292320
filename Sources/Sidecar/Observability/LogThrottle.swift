import NIOCore
import Synchronization

/// Lets a warning through at most once per `interval`, with how many were held back since: a flood of
/// refused connections or misdirected handshakes must not flood the log it is reported in.
final class LogThrottle: Sendable {
    private let interval: Int64
    private let last = Atomic<Int64>(Int64.min / 2)
    private let held = Atomic<Int>(0)

    init(interval: TimeAmount = .seconds(10)) { self.interval = interval.nanoseconds }

    /// nil: held back (counted). Otherwise log now; the value is how many occurred since the last line,
    /// this one included.
    func admit(now: NIODeadline = .now()) -> Int? {
        held.wrappingAdd(1, ordering: .relaxed)
        let clock = Int64(now.uptimeNanoseconds)
        let previous = last.load(ordering: .relaxed)
        guard clock - previous >= interval, last.compareExchange(expected: previous, desired: clock, ordering: .relaxed).exchanged else {
            return nil
        }
        return held.exchange(0, ordering: .relaxed)
    }
}
