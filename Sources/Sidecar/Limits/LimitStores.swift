import Foundation
import GRDB
import NIOCore
import Logging
import Policy
import Synchronization

/// Wall-clock milliseconds for the stores that use host time (embedded store, local fallback).
let unixMillis: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }

/// A limit store that can also decide and settle from the connection's event loop, without a Swift
/// task: the loop path of a request with stateful limits (`Pipeline.start`). Same decisions as the
/// async methods; only the cost differs (no task, no continuations: +12 % Redis-limited req/s in an
/// A/B on this 2-core VM).
protocol LoopLimitStore: LimitStore {
    /// Decides on `loop`; the future completes there. nil when this cannot be done from the loop now
    /// (no live Redis connection): the caller uses the async `admit`, which connects or degrades.
    func admit(agent: String, checks: [LimitCheck], leaseID: String, on loop: any EventLoop) -> EventLoopFuture<Admission>?
    /// Settles without the caller waiting: a failure is treated as the async `settle`'s (ignored; the
    /// lease expires on its own).
    func settleSoon(agent: String, _ settlement: Settlement, on loop: any EventLoop)
}

/// Counters in this process, behind a lock. Used as the embedded store's engine and as the local
/// limiter the Redis store falls back to.
final class LocalLimiter: Sendable {
    let state = Mutex(LimitState())
    private let now: @Sendable () -> Int64
    /// How long a concurrency lease lasts without renewal (ms).
    let leaseTTL: Int64

    init(leaseTTL: Duration = .seconds(30), now: @escaping @Sendable () -> Int64 = unixMillis) {
        self.now = now
        self.leaseTTL = leaseTTL.milliseconds
    }

    func admit(agent: String, checks: [LimitCheck], leaseID: String) -> Admission {
        let now = self.now()
        return state.withLock { $0.admit(agent: agent, checks: checks, leaseID: leaseID, now: now, leaseTTL: leaseTTL) }
    }

    func renew(agent: String, leaseIDs: [String]) {
        let now = self.now()
        state.withLock { $0.renew(agent: agent, leaseIDs: leaseIDs, now: now, ttl: leaseTTL) }
    }

    func settle(agent: String, _ settlement: Settlement) {
        let now = self.now()
        state.withLock { $0.settle(agent: agent, settlement, now: now) }
    }
}

/// The embedded store: counters in memory, quota and budget usage persisted to SQLite (written behind,
/// every 200 ms and at shutdown), so a restart does not hand out a fresh day's quota. A crash loses at
/// most the last 200 ms of counts.
final class EmbeddedLimitStore: LoopLimitStore {
    let limiter: LocalLimiter
    private let db: DatabaseQueue

    init(databasePath: String, leaseTTL: Duration = .seconds(30), now: @escaping @Sendable () -> Int64 = unixMillis) throws {
        limiter = LocalLimiter(leaseTTL: leaseTTL, now: now)
        var config = Configuration()
        config.busyMode = .timeout(5)
        db = databasePath == ":memory:" ? try DatabaseQueue(configuration: config) : try DatabaseQueue(path: databasePath, configuration: config)
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-limits") { db in
            try db.execute(sql: "CREATE TABLE IF NOT EXISTS limit_counters (key TEXT PRIMARY KEY, used INTEGER NOT NULL, expires INTEGER NOT NULL)")
        }
        try migrator.migrate(db)
        let nowMS = now()
        let rows = try db.read { db in try Row.fetchAll(db, sql: "SELECT key, used, expires FROM limit_counters WHERE expires > ?", arguments: [nowMS]) }
        limiter.state.withLock { state in
            for row in rows { state.counters[row["key"]] = LimitState.Counter(used: row["used"], expires: row["expires"]) }
        }
    }

    func admit(agent: String, checks: [LimitCheck], leaseID: String) async throws -> Admission {
        limiter.admit(agent: agent, checks: checks, leaseID: leaseID)
    }

    func settle(agent: String, _ settlement: Settlement) async throws {
        limiter.settle(agent: agent, settlement)
    }

    func renew(agent: String, leaseIDs: [String]) async throws {
        limiter.renew(agent: agent, leaseIDs: leaseIDs)
    }

    func admit(agent: String, checks: [LimitCheck], leaseID: String, on loop: any EventLoop) -> EventLoopFuture<Admission>? {
        loop.makeSucceededFuture(limiter.admit(agent: agent, checks: checks, leaseID: leaseID))
    }

    func settleSoon(agent: String, _ settlement: Settlement, on loop: any EventLoop) {
        limiter.settle(agent: agent, settlement)
    }

    /// Writes changed counters; drops expired ones. On GRDB's writer queue, never on the caller's
    /// thread: the flusher is a task on an event loop, and a blocking commit (an fsync can take
    /// hundreds of milliseconds) stalled every connection of that loop.
    func flush() async throws {
        let (changes, nowMS): ([(String, LimitState.Counter?)], Int64) = limiter.state.withLock { state in
            let keys = state.takeDirty()
            return (keys.map { ($0, state.counters[$0]) }, unixMillis())
        }
        guard !changes.isEmpty else { return }
        do {
            try await write(changes, now: nowMS)
        } catch {
            // Not written (cancelled, disk full): the next flush tries these keys again.
            limiter.state.withLock { $0.markDirty(changes.map(\.0)) }
            throw error
        }
    }

    private func write(_ changes: [(String, LimitState.Counter?)], now nowMS: Int64) async throws {
        try await db.write { db in
            for (key, counter) in changes {
                if let c = counter {
                    try db.execute(sql: "INSERT OR REPLACE INTO limit_counters (key, used, expires) VALUES (?, ?, ?)", arguments: [key, c.used, c.expires])
                } else {
                    try db.execute(sql: "DELETE FROM limit_counters WHERE key = ?", arguments: [key])
                }
            }
            try db.execute(sql: "DELETE FROM limit_counters WHERE expires <= ?", arguments: [nowMS])
        }
    }

    func runFlusher(logger: Logger) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(200))
            if Task.isCancelled { break }
            do { try await flush() } catch { logger.error("cannot persist limit counters", metadata: ["error": "\(error)"]) }
            limiter.state.withLock { $0.prune(now: unixMillis()) }
        }
        // The last write at shutdown, outside this cancelled task (GRDB's async write refuses to start
        // in a cancelled one).
        await Task { try? await self.flush() }.value
    }
}

/// What to do with each class of limit when the shared store cannot be reached.
struct StateFailurePolicy: Sendable, Hashable {
    enum Action: String, Sendable, Hashable {
        /// Refuse the request: 503 `state_unavailable`.
        case closed
        /// Decide with this host's own counters at the configured limits.
        case local
        /// Let the request through unchecked.
        case open
    }

    var rate: Action = .local
    var concurrency: Action = .local
    var quota: Action = .closed
    var budget: Action = .closed

    func action(for kind: LimitCheck.Kind) -> Action {
        switch kind {
        case .rate: return rate
        case .concurrency: return concurrency
        case .quota: return quota
        case .budget: return budget
        }
    }
}

/// The shared state was unreachable and a limit of a fail-closed class applied.
struct StateUnavailable: Error, Sendable {
    let kind: LimitCheck.Kind
}

/// Limits shared across a fleet in Redis: one `EVALSHA` per request; on Redis failure, each class follows
/// its failure policy, counted in `gateway_state_fallback_total{class}`.
final class RedisLimitStore: LoopLimitStore {
    let redis: RedisClient
    let failure: StateFailurePolicy
    let local: LocalLimiter
    let metrics: GatewayMetrics
    let logger: Logger
    private let leaseTTL: Int64
    private let degraded = Atomic<Bool>(false)

    init(redis: RedisClient, failure: StateFailurePolicy, leaseTTL: Duration = .seconds(30), metrics: GatewayMetrics, logger: Logger) {
        self.redis = redis
        self.failure = failure
        self.metrics = metrics
        self.logger = logger
        self.leaseTTL = leaseTTL.milliseconds
        local = LocalLimiter(leaseTTL: leaseTTL)
    }

    /// Extends leases in Redis (and in the local fallback limiter, which holds the leases admitted while
    /// Redis was away; extending an absent one does nothing).
    func renew(agent: String, leaseIDs: [String]) async throws {
        local.renew(agent: agent, leaseIDs: leaseIDs)
        _ = try await redis.evalsha(AdmissionScripts.renew, keys: ["\(Self.tag(agent)):c"], args: [String(leaseTTL)] + leaseIDs)
    }

    static func tag(_ agent: String) -> String { "{a:\(agent)}" }

    func admit(agent: String, checks: [LimitCheck], leaseID: String) async throws -> Admission {
        try await admit(agent: agent, checks: checks, leaseID: leaseID, wants: nil).admission
    }

    func admit(agent: String, checks: [LimitCheck], leaseID: String, on loop: any EventLoop) -> EventLoopFuture<Admission>? {
        admit(agent: agent, checks: checks, leaseID: leaseID, wants: nil, on: loop)?.map(\.admission)
    }

    /// A decision with its lease grants: `wants` extra units per check (`LimitLeases.wants`), the
    /// grant per check in `extras` (none when Redis was away and the failure policy decided).
    func admit(agent: String, checks: [LimitCheck], leaseID: String, wants: [Int]?) async throws -> (admission: Admission, extras: [Int]) {
        guard !checks.isEmpty else { return (Admission(admitted: true, results: [], leaseID: leaseID), []) }
        let (keys, args) = admitCommand(agent: agent, checks: checks, leaseID: leaseID, wants: wants)
        do {
            return try admission(try await redis.evalsha(AdmissionScripts.admit, keys: keys, args: args), checks: checks, leaseID: leaseID)
        } catch let error as RedisError {
            return (try fallback(agent: agent, checks: checks, leaseID: leaseID, error: error), [])
        }
    }

    func admit(agent: String, checks: [LimitCheck], leaseID: String, wants: [Int]?, on loop: any EventLoop) -> EventLoopFuture<(admission: Admission, extras: [Int])>? {
        guard !checks.isEmpty else { return loop.makeSucceededFuture((Admission(admitted: true, results: [], leaseID: leaseID), [])) }
        let (keys, args) = admitCommand(agent: agent, checks: checks, leaseID: leaseID, wants: wants)
        return redis.evalsha(AdmissionScripts.admit, keys: keys, args: args, on: loop)?
            .flatMapThrowing { try self.admission($0, checks: checks, leaseID: leaseID) }
            .flatMapErrorThrowing { error in
                guard let error = error as? RedisError else { throw error }
                return (try self.fallback(agent: agent, checks: checks, leaseID: leaseID, error: error), [])
            }
    }

    /// The admission script's keys and arguments (see `AdmissionScripts.admit`).
    private func admitCommand(agent: String, checks: [LimitCheck], leaseID: String, wants: [Int]?) -> (keys: [String], args: [String]) {
        let tag = Self.tag(agent)
        var keys: [String] = []
        var args: [String] = [leaseID, String(leaseTTL), String(checks.count)]
        for (i, c) in checks.enumerated() {
            let want = wants.map { i < $0.count ? String($0[i]) : "0" } ?? "0"
            switch c.kind {
            case .concurrency:
                keys.append("\(tag):c")
                args += ["c", c.mode == .enforce ? "1" : "0", String(c.limit), "0", "0", "0", want]
            case .rate:
                keys.append("\(tag):\(c.key)")
                let g = c.gcra
                args += ["r", c.mode == .enforce ? "1" : "0", String(c.limit), String(Int64(g.interval * 1000)), String(Int64(g.tolerance * 1000)), "0", want]
            case .quota, .budget:
                let w = c.window!
                keys += ["\(tag):\(c.key):\(w.currentID)", "\(tag):\(c.key):\(w.nextID)"]
                args += [c.kind == .quota ? "q" : "b", c.mode == .enforce ? "1" : "0", String(c.limit), String(c.cost), String(w.currentEnd), String(w.nextEnd), want]
            }
        }
        return (keys, args)
    }

    /// The script's reply as the decision and the lease grants.
    private func admission(_ reply: RedisValue, checks: [LimitCheck], leaseID: String) throws -> (admission: Admission, extras: [Int]) {
        guard let a = reply.array, a.count == 2 + 5 * checks.count, let admitted = a[0].int else {
            throw RedisError(kind: .protocolError, message: "unexpected admission reply")
        }
        recovered()
        var results: [LimitResult] = []
        results.reserveCapacity(checks.count)
        var extras: [Int] = []
        extras.reserveCapacity(checks.count)
        for i in 0..<checks.count {
            let b = 2 + i * 5
            results.append(
                LimitResult(
                    allowed: a[b].int == 1, remaining: Int(a[b + 1].int ?? 0), resetMilliseconds: a[b + 2].int ?? 0,
                    windowIndex: Int(a[b + 3].int ?? 0)))
            extras.append(Int(a[b + 4].int ?? 0))
        }
        return (Admission(admitted: admitted == 1, results: results, leaseID: leaseID), extras)
    }

    /// Gives back leased units and slots this sidecar did not spend, one script call per agent.
    func giveBack(_ items: [LimitLeases.GiveBack]) async throws {
        for (agent, group) in Dictionary(grouping: items, by: \.agent) {
            let tag = Self.tag(agent)
            var keys: [String] = []
            var args: [String] = [String(group.count)]
            for g in group {
                switch g.kind {
                case .concurrency:
                    keys.append("\(tag):c")
                    args += ["c", "0", String(g.slots.count)] + g.slots
                case .rate:
                    keys.append("\(tag):\(g.key)")
                    args += ["r", String(Int64(Double(g.units) * g.intervalMicros)), "0"]
                case .quota, .budget:
                    keys.append("\(tag):\(g.key):\(g.window ?? "-")")
                    args += ["q", String(g.units), "0"]
                }
            }
            _ = try await redis.evalsha(AdmissionScripts.giveBack, keys: keys, args: args)
        }
    }

    /// Applies the per-class failure policy when Redis cannot answer.
    private func fallback(agent: String, checks: [LimitCheck], leaseID: String, error: RedisError) throws -> Admission {
        if !degraded.exchange(true, ordering: .relaxed) {
            logger.error("shared state unavailable; applying the failure policy", metadata: ["error": "\(error)"])
        }
        for kind in Set(checks.map(\.kind)) { metrics.stateFallback(kind.rawValue) }
        if let closed = checks.first(where: { $0.mode == .enforce && failure.action(for: $0.kind) == .closed }) {
            throw StateUnavailable(kind: closed.kind)
        }
        let localChecks = checks.filter { failure.action(for: $0.kind) == .local }
        let decided = local.admit(agent: agent, checks: localChecks, leaseID: leaseID)
        var results: [LimitResult] = []
        var iterator = decided.results.makeIterator()
        for c in checks {
            if failure.action(for: c.kind) == .local {
                results.append(iterator.next()!)
            } else {
                results.append(LimitResult(allowed: true, remaining: c.limit, resetMilliseconds: 0))
            }
        }
        return Admission(admitted: decided.admitted, results: results, leaseID: leaseID, local: true)
    }

    private func recovered() {
        if degraded.exchange(false, ordering: .relaxed) { logger.notice("shared state reachable again") }
    }

    func settle(agent: String, _ s: Settlement) async throws {
        if s.local {
            local.settle(agent: agent, s)
            return
        }
        switch settleCommand(agent: agent, s) {
        case nil: return
        case .command(let command)?: _ = try await redis.send(command)
        case .script(let keys, let args)?: _ = try await redis.evalsha(AdmissionScripts.settle, keys: keys, args: args)
        }
    }

    func settleSoon(agent: String, _ s: Settlement, on loop: any EventLoop) {
        if s.local { return local.settle(agent: agent, s) }
        // A concurrency slot goes back at once (written before the answer's last bytes, which follow on
        // this loop): the agent's next call, on any sidecar, must find it free. Other settlements may
        // wait a moment to share a write.
        let lazy = !s.checks.contains { $0.kind == .concurrency }
        let sent: EventLoopFuture<RedisValue>?
        switch settleCommand(agent: agent, s) {
        case nil: return
        case .command(let command)?: sent = redis.start(command, on: loop, lazy: lazy)
        case .script(let keys, let args)?: sent = redis.evalsha(AdmissionScripts.settle, keys: keys, args: args, on: loop, lazy: lazy)
        }
        // No live connection on this loop: the async path connects (or fails, as `settle` may).
        if sent == nil { Task { try? await self.settle(agent: agent, s) } }
    }

    private enum SettleCommand {
        case command([String])
        case script(keys: [String], args: [String])
    }

    /// What settles `s` in Redis; nil when nothing has to (a rate check only).
    private func settleCommand(agent: String, _ s: Settlement) -> SettleCommand? {
        let tag = Self.tag(agent)
        var keys: [String] = []
        var args: [String] = [s.leaseID, "0"]
        var n = 0
        for (c, r) in zip(s.checks, s.results) {
            switch c.kind {
            case .concurrency:
                keys.append("\(tag):c")
                args += ["c", "0"]
            case .rate:
                continue
            case .quota, .budget:
                let id = r.windowIndex == 0 ? c.window!.currentID : c.window!.nextID
                let delta: Int
                switch s.outcome {
                case .refunded: delta = -c.cost
                case .completed(let usage?) where c.kind == .budget: delta = usage - c.cost
                case .completed: continue
                }
                keys.append("\(tag):\(c.key):\(id)")
                args += ["q", String(delta)]
            }
            n += 1
        }
        guard n > 0 else { return nil }
        // The common settlement only frees a concurrency lease: a plain ZREM costs Redis about a tenth
        // of a script call, and Redis (one thread, shared by the fleet) is what every request waits on.
        if n == 1, args[2] == "c" { return .command(["ZREM", keys[0], s.leaseID]) }
        args[1] = String(n)
        return .script(keys: keys, args: args)
    }
}
