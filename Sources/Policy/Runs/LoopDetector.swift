/// A run's runaway-loop breaker (README "Agent runs"): each call's fingerprint (tool, action, digest of
/// its canonical parameters) is remembered with its time; the run has looped when one fingerprint came
/// more than `maxRepeats` times within `window`, or when the last calls repeat a short cycle (A→B→A→B…,
/// up to three distinct calls) `maxCycles` times in a row, or when more than `maxRefusals` of its calls
/// were refused within `window` (an agent that retries into its limits instead of backing off). A value
/// type with the time passed in.
public struct LoopDetector: Sendable, Hashable {
    public struct Settings: Sendable, Hashable {
        public var maxRepeats = 5
        public var windowMilliseconds: Int64 = 60_000
        public var maxCycles = 3
        public var maxRefusals = 10
        public var action = Action.pause

        public init() {}
    }

    /// What the breaker does to a run that loops.
    public enum Action: String, Sendable, Hashable, CaseIterable {
        /// Further calls are refused (429 `run_loop_detected`) until the run is resumed.
        case pause
        /// The run is cancelled (the kill switch).
        case cancel
        /// Counted and put on the run's stream only.
        case report
    }

    public enum Verdict: Sendable, Hashable {
        case repeated(count: Int)
        case cycle(length: Int, times: Int)
        case refusals(count: Int)

        /// Why, as the run's event and its `reason` say it.
        public var description: String {
            switch self {
            case .repeated(let n): return "the same call \(n) times within the loop window"
            case .cycle(let length, let times): return "a cycle of \(length) calls repeated \(times) times"
            case .refusals(let n): return "\(n) refused calls within the loop window"
            }
        }
    }

    public let settings: Settings
    private var recent: [(fingerprint: String, at: Int64)] = []
    private var refused: [Int64] = []

    public init(settings: Settings = Settings()) { self.settings = settings }

    public static func == (l: Self, r: Self) -> Bool {
        l.settings == r.settings && l.refused == r.refused && l.recent.elementsEqual(r.recent) { $0.fingerprint == $1.fingerprint && $0.at == $1.at }
    }

    public func hash(into h: inout Hasher) {
        h.combine(settings)
        for e in recent { h.combine(e.fingerprint) }
    }

    /// Records a call; the verdict when it makes the run a loop.
    public mutating func record(_ fingerprint: String, now: Int64) -> Verdict? {
        recent.append((fingerprint, now))
        // Only the window, and never more than the breaker needs to see.
        let keep = max(settings.maxRepeats + 1, 3 * (settings.maxCycles + 1)) * 4
        recent.removeAll { now - $0.at > settings.windowMilliseconds }
        if recent.count > keep { recent.removeFirst(recent.count - keep) }
        let repeats = recent.reduce(0) { $0 + ($1.fingerprint == fingerprint ? 1 : 0) }
        if repeats > settings.maxRepeats { return .repeated(count: repeats) }
        for length in 2...3 {
            let times = cycleRepetitions(length: length)
            if times >= settings.maxCycles { return .cycle(length: length, times: times) }
        }
        return nil
    }

    /// Records a refused call; the verdict when refusals come faster than an agent that backs off sends
    /// them.
    public mutating func recordRefusal(now: Int64) -> Verdict? {
        refused.append(now)
        refused.removeAll { now - $0 > settings.windowMilliseconds }
        if refused.count > settings.maxRefusals + 1 { refused.removeFirst(refused.count - settings.maxRefusals - 1) }
        return refused.count > settings.maxRefusals ? .refusals(count: refused.count) : nil
    }

    /// How many times in a row the last `length` calls (not all the same) repeat at the end of the window.
    private func cycleRepetitions(length: Int) -> Int {
        guard recent.count >= 2 * length else { return 0 }
        let pattern = recent.suffix(length).map(\.fingerprint)
        guard Set(pattern).count == length else { return 0 }
        var times = 0
        var end = recent.count
        while end >= length, recent[(end - length)..<end].map(\.fingerprint) == pattern {
            times += 1
            end -= length
        }
        return times
    }
}
