import Foundation
import Policy
import Upstreams

/// Runs shared by a fleet through Redis (`RunScripts` for the layout): any sidecar serves any run — its
/// calls, its ledger, its stream (`XRANGE` from `Last-Event-ID`). Every decision is one script, atomic in
/// Redis; the listing index (`sidecar:runs`, a sorted set by creation time) and idempotency keys
/// (`sidecar:runkey:<digest>`, 24 h) are plain keys beside them.
final class RedisRunStore: RunStore {
    let redis: RedisClient
    let maxEvents: Int
    static let index = "sidecar:runs"
    /// Runs not finished (a set), and running runs by the time their `max_duration` ends (a sorted set).
    static let active = "sidecar:runs:active"
    /// An agent's unfinished runs (the cap `runs.max_open_per_agent`).
    static func open(_ agent: String) -> String { "sidecar:runs:open:" + agent }
    static let deadlines = "sidecar:runs:deadlines"

    init(redis: RedisClient, maxEvents: Int = 10_000) {
        self.redis = redis
        self.maxEvents = max(10, maxEvents)
    }

    static func hash(_ id: String) -> String { "{r:\(Run.root(of: id))}:\(id)" }
    static func stream(_ id: String) -> String { hash(id) + ":ev" }

    private func checked(_ v: RedisValue) throws -> RedisValue { try v.checked() }

    // MARK: Encoding

    private static let encoder = JSONEncoder()
    private static let decoder = JSONDecoder()

    /// The hash fields of a new run.
    static func fields(_ run: Run) throws -> [String] {
        var f = [
            "doc", String(decoding: try encoder.encode(run), as: UTF8.self), "agent", run.agent, "status", run.status.rawValue,
            "started", run.startedAt.map(String.init) ?? "", "ended", "", "reason", run.reason ?? "",
            "maxdur", String(run.budget.maxDurationSeconds ?? 0), "created", String(run.createdAt),
        ]
        for (i, limit) in run.budget.limits.enumerated() {
            f += ["s\(i)", "0", "r\(i)", "0", "l\(i)", limit == Int.max ? "-1" : String(limit)]
        }
        return f
    }

    /// A run from its hash (`HGETALL`): the fixed description, with status, times and ledger as stored.
    static func decode(_ reply: RedisValue) -> Run? {
        guard let a = reply.array, !a.isEmpty else { return nil }
        var h: [String: String] = [:]
        var i = 0
        while i + 1 < a.count {
            if let k = a[i].string { h[k] = a[i + 1].string ?? "" }
            i += 2
        }
        guard let doc = h["doc"], var run = try? decoder.decode(Run.self, from: Data(doc.utf8)) else { return nil }
        if let s = h["status"].flatMap(RunStatus.init(rawValue:)) { run.status = s }
        if let agent = h["agent"] { run.agent = agent }
        run.startedAt = h["started"].flatMap { Int64($0) }
        run.endedAt = h["ended"].flatMap { Int64($0) }
        run.reason = h["reason"].flatMap { $0.isEmpty ? nil : $0 }
        run.spent = RunLedger(values: (0..<6).map { Int(h["s\($0)"] ?? "0") ?? 0 })
        run.reserved = RunLedger(values: (0..<6).map { Int(h["r\($0)"] ?? "0") ?? 0 })
        return run
    }

    static func event(_ entry: RedisValue) -> RunEvent? {
        guard let parts = entry.array, parts.count == 2, let id = parts[0].string, let kv = parts[1].array else { return nil }
        var f: [String: String] = [:]
        var i = 0
        while i + 1 < kv.count {
            if let k = kv[i].string { f[k] = kv[i + 1].string ?? "" }
            i += 2
        }
        return RunEvent(id: id, type: f["t"] ?? "run.event", at: Int64(f["a"] ?? "") ?? 0, json: f["d"] ?? "{}")
    }

    // MARK: RunStore

    func create(_ run: Run, caller: String, clientToken: String?, digest: String) async throws -> RunCreation {
        let created = Run.createdEvent(run)
        let keys = [Self.hash(run.id), Self.stream(run.id)]
        let args = [String(maxEvents), created.type, String(run.createdAt), created.data.serialized] + (try Self.fields(run))
        guard try await redis.evalsha(RunScripts.create, keys: keys, args: args).int == 1 else { throw RedisError.server("run id collision") }
        if let clientToken {
            let key = Self.idempotencyKey(caller: caller, clientToken: clientToken)
            let value = run.id + " " + digest
            for _ in 0..<3 {
                if case .simple("OK") = try checked(try await redis.send(["SET", key, value, "NX", "PX", String(RunKeys.window)])) { break }
                guard let held = Self.held(try await redis.send(["GET", key]).string) else { continue }
                // Another create with this key won: ours is undone.
                _ = try await redis.send(["DEL", Self.hash(run.id), Self.stream(run.id)])
                guard held.digest == digest else { return .conflict }
                if let existing = try await self.run(held.id) { return .existing(existing) }
                // The key outlived its run (retention shorter than a day): it names this one now.
                _ = try await redis.send(["SET", key, value, "XX", "PX", String(RunKeys.window)])
                _ = try await redis.evalsha(RunScripts.create, keys: keys, args: args)
                break
            }
        }
        _ = try checked(try await redis.send(["ZADD", Self.index, String(run.createdAt), run.id]))
        _ = try await redis.send(["SADD", Self.active, run.id])
        if !run.agent.isEmpty { _ = try await redis.send(["SADD", Self.open(run.agent), run.id]) }
        return .created(run)
    }

    func previous(caller: String, clientToken: String, digest: String, now: Int64) async throws -> RunCreation? {
        let key = Self.idempotencyKey(caller: caller, clientToken: clientToken)
        guard let held = Self.held(try checked(try await redis.send(["GET", key])).string) else { return nil }
        guard held.digest == digest else { return .conflict }
        return try await run(held.id).map { .existing($0) }
    }

    private static func idempotencyKey(caller: String, clientToken: String) -> String {
        "sidecar:runkey:" + RunKeys.idempotency(caller: caller, clientToken: clientToken)
    }

    /// An idempotency key's value: "<run id> <body digest>".
    private static func held(_ value: String?) -> (id: String, digest: String)? {
        guard let parts = value?.split(separator: " ", maxSplits: 1), parts.count == 2 else { return nil }
        return (String(parts[0]), String(parts[1]))
    }

    func run(_ id: String) async throws -> Run? {
        Self.decode(try checked(try await redis.send(["HGETALL", Self.hash(id)])))
    }

    func list(status: RunStatus?, agent: String?, cursor: String?, limit: Int) async throws -> (runs: [Run], next: String?) {
        var maxScore = "+inf"
        var after: (score: Int64, id: String)?
        if let cursor, let score = try await redis.send(["ZSCORE", Self.index, cursor]).string.flatMap({ Double($0) }) {
            maxScore = String(Int64(score))
            after = (Int64(score), cursor)
        }
        var runs: [Run] = []
        var scanned = 0
        var offset = 0
        var next: String?
        // Newest first, ties by id descending (the embedded store's order); at most 1 000 entries looked
        // at per page, so a filter that matches little still answers quickly (with a cursor to go on).
        scan: while scanned < 1000 {
            let page = try checked(
                try await redis.send(["ZREVRANGEBYSCORE", Self.index, maxScore, "-inf", "WITHSCORES", "LIMIT", String(offset), "200"])
            ).array ?? []
            if page.isEmpty { break }
            offset += page.count / 2
            var ids: [String] = []
            var i = 0
            while i + 1 < page.count {
                defer { i += 2 }
                guard let id = page[i].string, let score = page[i + 1].string.flatMap({ Double($0) }).map({ Int64($0) }) else { continue }
                if let after, score == after.score, id >= after.id { continue }
                ids.append(id)
            }
            // The page's runs fetched at once (pipelined on the connection), not one round trip each.
            let fetched = try await withThrowingTaskGroup(of: (Int, Run?).self) { group in
                for (k, id) in ids.enumerated() { group.addTask { (k, try await self.run(id)) } }
                var out = [Run?](repeating: nil, count: ids.count)
                for try await (k, run) in group { out[k] = run }
                return out
            }
            for (id, found) in zip(ids, fetched) {
                scanned += 1
                guard let run = found else { continue }
                if let status, run.status != status { continue }
                if let agent, run.agent != agent { continue }
                if runs.count == limit {
                    next = runs.last?.id
                    break scan
                }
                runs.append(run)
                if scanned >= 1000 {
                    next = id
                    break scan
                }
            }
        }
        return (runs, next)
    }

    func apply(_ command: RunStatus.Command, to id: String, reason: String?, now: Int64) async throws -> Result<Run, RunStatus.Refusal>? {
        let outcomes = RunStatus.allCases.map { status -> String in
            switch status.applying(command) {
            case .success(let s): return s.rawValue
            case .failure(let refusal): return "!" + refusal.rawValue
            }
        }
        let reply = try await redis.evalsha(
            RunScripts.apply, keys: [Self.hash(id), Self.stream(id)],
            args: [String(now), reason ?? "", command.rawValue, String(maxEvents)] + outcomes)
        guard let a = reply.array, let code = a.first?.int else { throw RedisError(kind: .protocolError, message: "unexpected apply reply") }
        switch code {
        case 1:
            guard a.count == 2, let run = Self.decode(a[1]) else { throw RedisError(kind: .protocolError, message: "unexpected apply reply") }
            try await track(run)
            return .success(run)
        case 2:
            guard a.count == 2, let refusal = a[1].string.flatMap(RunStatus.Refusal.init(rawValue:)) else {
                throw RedisError(kind: .protocolError, message: "unexpected apply reply")
            }
            return .failure(refusal)
        default:
            return nil
        }
    }

    /// Keeps the active set and the deadline index in step with a run's status (beside the script:
    /// they are fleet-wide keys, not the run's own). A missed update is harmless: the sweep re-checks
    /// the run's own status, and the active count is a gauge.
    private func track(_ run: Run) async throws {
        if run.status.isTerminal {
            _ = try await redis.send(["SREM", Self.active, run.id])
            if !run.agent.isEmpty { _ = try await redis.send(["SREM", Self.open(run.agent), run.id]) }
            _ = try await redis.send(["ZREM", Self.deadlines, run.id])
        } else if run.status == .running, let max = run.budget.maxDurationSeconds, let started = run.startedAt {
            _ = try await redis.send(["ZADD", Self.deadlines, String(started + Int64(max) * 1000), run.id])
        }
    }

    func expired(now: Int64) async throws -> [String] {
        let due = try checked(try await redis.send(["ZRANGEBYSCORE", Self.deadlines, "-inf", String(now), "LIMIT", "0", "100"])).array ?? []
        var out: [String] = []
        for id in due.compactMap(\.string) {
            // Failed at a reservation already, completed, or purged: no longer due.
            if try await redis.send(["HGET", Self.hash(id), "status"]).string == RunStatus.running.rawValue {
                out.append(id)
            } else {
                _ = try await redis.send(["ZREM", Self.deadlines, id])
            }
        }
        return out
    }

    func activeCount() async throws -> Int { Int(try checked(try await redis.send(["SCARD", Self.active])).int ?? 0) }

    /// The agent's set; once it reaches the cap, less members that finished or are gone (a missed `SREM`
    /// must not hold a place), which are removed. Below the cap a stale member changes no decision.
    func openCount(agent: String, cap: Int) async throws -> Int {
        let key = Self.open(agent)
        let count = Int(try checked(try await redis.send(["SCARD", key])).int ?? 0)
        guard count >= cap else { return count }
        // At the cap each member is read again (one a purge or another path ended may linger): the reads go
        // out together, pipelined a hundred at a time, not one round trip after another (1 000 open runs
        // made every refused create wait on 1 000 replies in turn).
        let members = (try checked(try await redis.send(["SMEMBERS", key])).array ?? []).compactMap(\.string)
        var stale: [String] = []
        for batch in stride(from: 0, to: members.count, by: 100).map({ members[$0..<min($0 + 100, members.count)] }) {
            stale += try await withThrowingTaskGroup(of: String?.self) { group in
                for id in batch {
                    group.addTask {
                        let status = try await self.redis.send(["HGET", Self.hash(id), "status"]).string.flatMap(RunStatus.init(rawValue:))
                        return status.map({ !$0.isTerminal }) == true ? nil : id
                    }
                }
                return try await group.reduce(into: []) { if let id = $1 { $0.append(id) } }
            }
        }
        if !stale.isEmpty { _ = try await redis.send(["SREM", key] + stale) }
        return members.count - stale.count
    }

    func reserve(_ id: String, agent: String, charge: RunCharge, now: Int64) async throws -> RunReservation {
        let chain = Run.chain(of: id)
        let reply = try await redis.evalsha(
            RunScripts.reserve, keys: chain.map(Self.hash) + chain.map(Self.stream),
            args: [String(now), agent, String(maxEvents)] + charge.fixed.values.map(String.init)
                + [String(charge.fetchUpTo), String(charge.microsPerMB)])
        guard let a = reply.array, let kind = a.first?.string else { throw RedisError(kind: .protocolError, message: "unexpected reserve reply") }
        func run(_ i: Int) -> String { chain[max(0, min(chain.count - 1, Int(a[i].int ?? 1) - 1))] }
        switch kind {
        case "ok" where a.count == 7:
            return .reserved(RunLedger(values: a[1...].map { Int($0.int ?? 0) }), chain: chain)
        case "unknown": return .unknown
        case "forbidden": return .forbidden
        case "status" where a.count == 4:
            let reason = a[3].string.flatMap { $0.isEmpty ? nil : $0 }
            return .notRunning(run: run(1), RunStatus(rawValue: a[2].string ?? "") ?? .cancelled, reason: reason)
        case "expired" where a.count == 2:
            return .expired(run: run(1))
        case "exhausted" where a.count == 3:
            let d = Int(a[2].int ?? 1) - 1
            return .exhausted(run: run(1), dimension: RunBudget.Dimension.allCases[max(0, min(5, d))])
        default:
            throw RedisError(kind: .protocolError, message: "unexpected reserve reply")
        }
    }

    func settle(chain: [String], reserved: RunLedger, actual: RunLedger) async throws {
        _ = try await redis.evalsha(
            RunScripts.settle, keys: chain.map(Self.hash), args: (reserved.values + actual.values).map(String.init))
    }

    func append(_ id: String, agent: String?, type: String, json: String, now: Int64) async throws -> RunEvent? {
        let reply = try await redis.evalsha(
            RunScripts.append, keys: [Self.hash(id), Self.stream(id)], args: [agent ?? "", String(maxEvents), type, String(now), json])
        guard let eventID = reply.string else { return nil }
        return RunEvent(id: eventID, type: type, at: now, json: json)
    }

    func events(_ id: String, after: String?, limit: Int) async throws -> [RunEvent] {
        let start = after.map(Self.successor(of:)) ?? "-"
        let reply = try checked(try await redis.send(["XRANGE", Self.stream(id), start, "+", "COUNT", String(limit)]))
        return (reply.array ?? []).compactMap(Self.event)
    }

    /// The first id a stream can hold after `id` (`ms-seq` → `ms-(seq+1)`), where `XRANGE` starts to read
    /// the events after it: its exclusive `(id` start is Redis 6.2's, and managed services still run 6.0.
    /// (A valid id's parts have at most 19 digits, so `seq + 1` fits.)
    static func successor(of id: String) -> String {
        let parts = id.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let ms = UInt64(parts[0]), let seq = UInt64(parts[1]), seq < UInt64.max else { return "(" + id }
        return "\(ms)-\(seq + 1)"
    }

    func validEventID(_ id: String) -> Bool {
        let parts = id.split(separator: "-", omittingEmptySubsequences: false)
        return parts.count == 2 && parts.allSatisfy { !$0.isEmpty && $0.utf8.count <= 19 && $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }
    }

    func purge(endedBefore cutoff: Int64) async throws -> Int {
        // Only runs created before the cutoff can have ended before it.
        let candidates = try checked(try await redis.send(["ZRANGEBYSCORE", Self.index, "-inf", String(cutoff), "LIMIT", "0", "500"])).array ?? []
        var purged = 0
        for candidate in candidates {
            guard let id = candidate.string else { continue }
            let f = try await redis.send(["HMGET", Self.hash(id), "status", "ended"]).array ?? []
            let status = f.first?.string.flatMap(RunStatus.init(rawValue:))
            let ended = f.count > 1 ? f[1].int : nil
            if status == nil {
                _ = try await redis.send(["ZREM", Self.index, id])
                continue
            }
            guard status!.isTerminal, let ended, ended < cutoff else { continue }
            _ = try await redis.send(["DEL", Self.hash(id), Self.stream(id)])
            _ = try await redis.send(["ZREM", Self.index, id])
            _ = try await redis.send(["SREM", Self.active, id])
            purged += 1
        }
        return purged
    }
}
