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
    /// Per fingerprint, the times it was seen within the window (at most `maxRepeats + 1` of them).
    private var seen: [CallFingerprint: Times] = [:]
    /// The last calls, for cycles (at most three calls repeated `maxCycles` times, and one more).
    private var recent: [CallFingerprint] = []
    private var refused: [Int64] = []
    /// Fingerprints remembered at most, the least recently seen forgotten first: a call repeated with
    /// fewer than this many distinct calls between its repeats keeps its count. 1 024, not more: every
    /// call of a run looks up and, once full, evicts at a random place in this table, under the lock the
    /// run's calls share; at 4 096 the table and its queue (~0.5 MB) missed the caches on each call, for
    /// loops spaced by thousands of other calls — which is no runaway loop.
    static let maxFingerprints = 1024
    /// Every sighting in the order it came, oldest from `head`: the least recently seen fingerprint is
    /// found at the front, one at a time, instead of by filtering and sorting the whole table (which
    /// the previous halving did every 2 048 new fingerprints: ~0.5 µs per call, under the lock the
    /// run's calls share, for an agent whose calls all differ). At most `4 × maxFingerprints` are kept.
    private var order: [Sighting] = []
    private var head = 0
    /// Numbers the sightings, so a popped one tells whether it is its fingerprint's latest.
    private var sequence: UInt64 = 0

    private struct Sighting: Hashable {
        var fingerprint: CallFingerprint
        var sequence: UInt64
        var at: Int64
    }

    public init(settings: Settings = Settings()) { self.settings = settings }

    /// When one fingerprint was seen: most calls of a working agent are seen once, so the first time is
    /// kept inline and a list is made only for a repeat.
    private struct Times: Hashable {
        var first: Int64
        var more: [Int64] = []
        /// The sequence number of the latest sighting.
        var latest: UInt64

        var count: Int { 1 + more.count }

        /// Adds `now`, forgetting times older than `window` and keeping the last `keep`; returns the count.
        mutating func note(_ now: Int64, window: Int64, keep: Int) -> Int {
            more.append(now)
            // Times come in order: the old ones are at the front (and `now`, the last, always stays).
            while now - first > window || count > keep { first = more.removeFirst() }
            return count
        }
    }

    public static func == (l: Self, r: Self) -> Bool {
        l.settings == r.settings && l.refused == r.refused && l.recent == r.recent && l.seen == r.seen
    }

    public func hash(into h: inout Hasher) {
        h.combine(settings)
        h.combine(recent)
    }

    /// Records a call; the verdict when it makes the run a loop.
    public mutating func record(_ fingerprint: CallFingerprint, now: Int64) -> Verdict? {
        let window = settings.windowMilliseconds
        let keep = settings.maxRepeats + 1
        sequence &+= 1
        // One lookup, changed in place; a first sighting allocates nothing but its slot.
        let repeats: Int
        if let i = seen.index(forKey: fingerprint) {
            repeats = seen.values[i].note(now, window: window, keep: keep)
            seen.values[i].latest = sequence
        } else {
            seen[fingerprint] = Times(first: now, latest: sequence)
            repeats = 1
        }
        order.append(Sighting(fingerprint: fingerprint, sequence: sequence, at: now))
        forgetOld(now: now)
        let cycleSpan = 3 * (settings.maxCycles + 1)
        recent.append(fingerprint)
        if recent.count > 2 * cycleSpan { recent.removeFirst(recent.count - cycleSpan) }
        if repeats > settings.maxRepeats { return .repeated(count: repeats) }
        for length in 2...3 {
            let n = cycleRepetitions(length: length)
            if n >= settings.maxCycles { return .cycle(length: length, times: n) }
        }
        return nil
    }

    /// Pops the oldest sightings while they are outside the window, or while too many fingerprints or
    /// sightings are kept; a popped sighting that is its fingerprint's latest forgets the fingerprint
    /// (all its times are at least that old). Amortized O(1) per call: each sighting is popped once.
    private mutating func forgetOld(now: Int64) {
        let window = settings.windowMilliseconds
        while head < order.count {
            let oldest = order[head]
            guard now - oldest.at > window || seen.count > Self.maxFingerprints || order.count - head > 4 * Self.maxFingerprints else { break }
            head += 1
            if let i = seen.index(forKey: oldest.fingerprint), seen.values[i].latest == oldest.sequence { seen.remove(at: i) }
        }
        // The popped front is reclaimed once it is most of the array (a copy of what is left, now and then).
        if head >= 1024, head * 2 >= order.count {
            order.removeFirst(head)
            head = 0
        }
    }

    /// Fingerprints remembered now (tests).
    var remembered: Int { seen.count }

    /// Records a refused call; the verdict when refusals come faster than an agent that backs off sends
    /// them.
    public mutating func recordRefusal(now: Int64) -> Verdict? {
        refused.append(now)
        refused.removeAll { now - $0 > settings.windowMilliseconds }
        if refused.count > settings.maxRefusals + 1 { refused.removeFirst(refused.count - settings.maxRefusals - 1) }
        return refused.count > settings.maxRefusals ? .refusals(count: refused.count) : nil
    }

    /// How many times in a row the last `length` calls (not all the same) repeat at the end.
    private func cycleRepetitions(length: Int) -> Int {
        let n = recent.count
        guard n >= 2 * length else { return 0 }
        // The pattern's calls must differ from one another (a single repeated call is a repeat, not a cycle).
        for i in (n - length)..<n {
            for j in (i + 1)..<n where recent[i] == recent[j] { return 0 }
        }
        var times = 1
        var start = n - 2 * length
        while start >= 0 {
            for k in 0..<length where recent[start + k] != recent[n - length + k] { return times }
            times += 1
            start -= length
        }
        return times
    }
}

/// What the loop breaker compares calls by: 128 bits of a call's digest (tool, action, canonical
/// parameters — `RunCall.fingerprint` in the sidecar). Two words, not text: hashed and compared without
/// touching the heap, on every call of a run.
public struct CallFingerprint: Sendable, Hashable {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// A fingerprint of a text (`CallFingerprint.Hasher`): for callers that describe a call in words.
    public init(_ text: String) {
        var h = Hasher()
        h.add(text)
        self = h.fingerprint
    }

    /// FNV-1a over length-prefixed parts, 64 bits twice (different offsets): a fingerprint compares calls
    /// of one run, so it needs to tell calls apart, not to resist an adversary.
    public struct Hasher {
        public private(set) var a: UInt64 = 0xcbf2_9ce4_8422_2325
        public private(set) var b: UInt64 = 0x8422_2325_cbf2_9ce4

        public init() {}

        public var fingerprint: CallFingerprint { CallFingerprint(high: a, low: b) }

        public mutating func add(_ s: String) {
            var s = s
            s.withUTF8 { add(bytes: UnsafeRawBufferPointer($0)) }
        }

        public mutating func add(bytes: UnsafeRawBufferPointer) {
            mix(UInt64(bytes.count))
            for byte in bytes { mix(UInt64(byte)) }
        }

        /// Another digest as a part (a member's value, an element).
        public mutating func add(_ other: Hasher) {
            mix(other.a)
            mix(other.b)
        }

        public mutating func add(_ sum: Sum) {
            mix(UInt64(sum.count))
            mix(sum.a)
            mix(sum.b)
        }

        @inline(__always)
        public mutating func mix(_ v: UInt64) {
            a = (a ^ v) &* 0x100_0000_01b3
            b = (b ^ v) &* 0x100_0000_01b3 ^ (b >> 29)
        }

        /// Digests added in any order (an object's members, a query's pairs): each one avalanched, then
        /// summed, so the order does not count and two parts cannot cancel out by a plain xor.
        public struct Sum {
            public private(set) var a: UInt64 = 0
            public private(set) var b: UInt64 = 0
            public private(set) var count = 0

            public init() {}

            public mutating func add(_ h: Hasher) {
                a &+= Self.avalanche(h.a)
                b &+= Self.avalanche(h.b ^ 0x9e37_79b9_7f4a_7c15)
                count += 1
            }

            /// splitmix64's finalizer.
            private static func avalanche(_ x: UInt64) -> UInt64 {
                var z = x
                z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
                z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
                return z ^ (z >> 31)
            }
        }
    }
}
