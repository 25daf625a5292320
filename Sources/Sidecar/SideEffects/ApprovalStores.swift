import Foundation
import Synchronization

/// Approvals on one host, in memory: an approval lives minutes (`expires`), and one lost to a restart
/// only means the agent's next identical call asks again. Finished approvals are dropped a day after
/// they expire; at most `capacity` are kept (the oldest finished ones go first).
final class EmbeddedApprovalStore: ApprovalStore {
    private struct State {
        var byKey: [String: Approval] = [:]
        var keyByID: [String: String] = [:]
        /// The keys of each agent's pending approvals (some may have expired since), for the cap.
        var pendingByAgent: [String: Set<String>] = [:]

        mutating func put(_ a: Approval) {
            if let old = byKey[a.key], old.id != a.id { keyByID[old.id] = nil }
            byKey[a.key] = a
            keyByID[a.id] = a.key
            if a.status == .pending { pendingByAgent[a.agent, default: []].insert(a.key) } else { unlistPending(a) }
        }

        mutating func remove(_ a: Approval) {
            byKey[a.key] = nil
            keyByID[a.id] = nil
            unlistPending(a)
        }

        private mutating func unlistPending(_ a: Approval) {
            guard pendingByAgent[a.agent]?.remove(a.key) != nil, pendingByAgent[a.agent]?.isEmpty == true else { return }
            pendingByAgent[a.agent] = nil
        }

        /// `agent`'s pending approvals not expired at `now` (the expired ones are dropped from the list).
        mutating func livePending(_ agent: String, now: Int64) -> Int {
            guard let keys = pendingByAgent[agent] else { return 0 }
            let live = keys.filter { byKey[$0].map { $0.status == .pending && now < $0.expiresAt } ?? false }
            pendingByAgent[agent] = live.isEmpty ? nil : live
            return live.count
        }
    }

    private let state = Mutex(State())
    private let capacity: Int

    init(capacity: Int = 100_000) { self.capacity = capacity }

    func claim(_ fresh: Approval, now: Int64, maxPending: Int) async throws -> (ApprovalClaim, Approval) {
        state.withLock { s in
            let (claim, after) = ApprovalClaim.claim(latest: s.byKey[fresh.key], fresh: fresh, now: now)
            if claim == .created {
                guard s.livePending(fresh.agent, now: now) < maxPending else { return (.tooManyPending, fresh) }
                Self.prune(&s, now: now, capacity: capacity)
            }
            s.put(after)
            return (claim, after)
        }
    }

    func approval(id: String) async throws -> Approval? {
        state.withLock { s in s.keyByID[id].flatMap { s.byKey[$0] }.flatMap { $0.id == id ? $0 : nil } }
    }

    func decide(id: String, approve: Bool, by: String, reason: String?, now: Int64) async throws -> Result<Approval, GatewayError>? {
        state.withLock { s in
            guard let key = s.keyByID[id], let a = s.byKey[key], a.id == id else { return nil }
            let result = ApprovalClaim.decide(a, approve: approve, by: by, reason: reason, now: now)
            if case .success(let d) = result { s.put(d) }
            return result
        }
    }

    func restore(id: String, now: Int64) async throws {
        state.withLock { s in
            guard let key = s.keyByID[id], let a = s.byKey[key], a.id == id, let r = ApprovalClaim.restore(a) else { return }
            s.put(r)
        }
    }

    func pending(limit: Int, now: Int64) async throws -> [Approval] {
        state.withLock { s in
            Array(s.byKey.values.filter { $0.status == .pending && now < $0.expiresAt }.sorted { $0.createdAt < $1.createdAt }.prefix(limit))
        }
    }

    private static func prune(_ s: inout State, now: Int64, capacity: Int) {
        guard s.byKey.count >= capacity / 2 else { return }
        // Every approval a day past its expiry goes — a pending one never decided too (it reads as expired
        // from then on); at capacity, every one but the live pending ones.
        let full = s.byKey.count >= capacity
        for a in s.byKey.values where a.expiresAt + 86_400_000 < now || full && !(a.status == .pending && now < a.expiresAt) {
            s.remove(a)
        }
    }
}

/// Approvals of a fleet in Redis: the latest approval of each binding as JSON at `sidecar:apr:<key>`, its
/// id mapped to the key, pending ids in a sorted set for the API. The rule (`ApprovalClaim`) runs here;
/// Redis makes each change a compare-and-set, so two sidecars claiming one grant at once cannot both win.
final class RedisApprovalStore: ApprovalStore {
    private let redis: RedisClient
    private static let pendingSet = "sidecar:approvals:pending"
    /// One agent's pending approval ids, scored by expiry (for the cap `approvals.max_pending_per_agent`).
    static func agentPendingSet(_ agent: String) -> String { "sidecar:approvals:pending:" + agent }
    /// Decided approvals stay readable a day past their expiry.
    private static let keep: Int64 = 86_400_000

    init(redis: RedisClient) { self.redis = redis }

    static func docKey(_ key: String) -> String { "sidecar:apr:" + key }
    static func idKey(_ id: String) -> String { "sidecar:apr:id:" + id }

    /// KEYS: the document. ARGV: the JSON expected now ('' for none), the new JSON, TTL ms. 1 when written.
    static let compareAndSet = LuaScript(
        """
        local cur = redis.call('GET', KEYS[1])
        if (cur or '') ~= ARGV[1] then return 0 end
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
        return 1
        """)
    /// Adds a pending approval to its agent's set, and makes the set live at least `ARGV[3]` ms: as long
    /// as its longest-lived member. (`PEXPIRE … GT` would say it in one command, from Redis 7 only; the
    /// managed Redis services still run 6.x.)
    static let addPending = LuaScript(
        """
        redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
        local left = redis.call('PTTL', KEYS[1])
        if left < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
        return 1
        """)
    static let scripts = [compareAndSet, addPending]

    private static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = .sortedKeys
        return e
    }()

    private func load(_ key: String) async throws -> (String, Approval?) {
        guard let text = try await redis.send(["GET", Self.docKey(key)]).string else { return ("", nil) }
        return (text, try JSONDecoder().decode(Approval.self, from: Data(text.utf8)))
    }

    /// Reads, applies `change`, writes back if nothing changed meanwhile; retried a few times.
    private func update<T>(_ key: String, now: Int64, _ change: (Approval?) async throws -> (T, Approval?)) async throws -> T {
        for _ in 0..<8 {
            let (old, current) = try await load(key)
            let (result, next) = try await change(current)
            guard let next, next != current else { return result }
            let text = String(decoding: try Self.encoder.encode(next), as: UTF8.self)
            let ttl = max(1, next.expiresAt + Self.keep - now)
            if try await redis.evalsha(Self.compareAndSet, keys: [Self.docKey(key)], args: [old, text, String(ttl)]).int == 1 {
                if next.id != current?.id {
                    _ = try await redis.send(["SET", Self.idKey(next.id), key, "PX", String(ttl)])
                }
                if next.status == .pending {
                    _ = try await redis.send(["ZADD", Self.pendingSet, String(next.createdAt), next.id])
                    _ = try await redis.evalsha(Self.addPending, keys: [Self.agentPendingSet(next.agent)], args: [String(next.expiresAt), next.id, String(ttl)])
                } else {
                    _ = try await redis.send(["ZREM", Self.pendingSet, next.id])
                    _ = try await redis.send(["ZREM", Self.agentPendingSet(next.agent), next.id])
                }
                return result
            }
        }
        throw RedisError(kind: .server, message: "approval changed concurrently too often")
    }

    func claim(_ fresh: Approval, now: Int64, maxPending: Int) async throws -> (ApprovalClaim, Approval) {
        try await update(fresh.key, now: now) { latest in
            let (claim, after) = ApprovalClaim.claim(latest: latest, fresh: fresh, now: now)
            if claim == .created, try await livePending(fresh.agent, now: now) >= maxPending { return ((.tooManyPending, fresh), nil) }
            return ((claim, after), after)
        }
    }

    /// `agent`'s pending approvals not expired at `now` (the expired ones are dropped from its set).
    private func livePending(_ agent: String, now: Int64) async throws -> Int {
        let set = Self.agentPendingSet(agent)
        _ = try await redis.send(["ZREMRANGEBYSCORE", set, "-inf", String(now)])
        return Int(try await redis.send(["ZCARD", set]).int ?? 0)
    }

    private func key(of id: String) async throws -> String? { try await redis.send(["GET", Self.idKey(id)]).string }

    func approval(id: String) async throws -> Approval? {
        guard let key = try await key(of: id) else { return nil }
        let (_, a) = try await load(key)
        return a?.id == id ? a : nil
    }

    func decide(id: String, approve: Bool, by: String, reason: String?, now: Int64) async throws -> Result<Approval, GatewayError>? {
        guard let key = try await key(of: id) else { return nil }
        return try await update(key, now: now) { current -> (Result<Approval, GatewayError>?, Approval?) in
            guard let current, current.id == id else { return (nil, nil) }
            let result = ApprovalClaim.decide(current, approve: approve, by: by, reason: reason, now: now)
            return (result, try? result.get())
        }
    }

    func restore(id: String, now: Int64) async throws {
        guard let key = try await key(of: id) else { return }
        try await update(key, now: now) { current -> (Void, Approval?) in
            guard let current, current.id == id else { return ((), nil) }
            return ((), ApprovalClaim.restore(current))
        }
    }

    func pending(limit: Int, now: Int64) async throws -> [Approval] {
        let ids = (try await redis.send(["ZRANGE", Self.pendingSet, "0", String(limit * 2)]).array ?? []).compactMap(\.string)
        var out: [Approval] = []
        for id in ids where out.count < limit {
            if let a = try await approval(id: id), a.status == .pending, now < a.expiresAt {
                out.append(a)
            } else {
                _ = try await redis.send(["ZREM", Self.pendingSet, id])
            }
        }
        return out
    }
}
