import Foundation
import Synchronization

/// Approvals on one host, in memory: an approval lives minutes (`expires`), and one lost to a restart
/// only means the agent's next identical call asks again. Finished approvals are dropped a day after
/// they expire; at most `capacity` are kept (the oldest finished ones go first).
final class EmbeddedApprovalStore: ApprovalStore {
    private struct State {
        var byKey: [String: Approval] = [:]
        var keyByID: [String: String] = [:]
    }

    private let state = Mutex(State())
    private let capacity: Int

    init(capacity: Int = 100_000) { self.capacity = capacity }

    func claim(_ fresh: Approval, now: Int64) async throws -> (ApprovalClaim, Approval) {
        state.withLock { s in
            let (claim, after) = ApprovalClaim.claim(latest: s.byKey[fresh.key], fresh: fresh, now: now)
            if claim == .created { Self.prune(&s, now: now, capacity: capacity) }
            if let old = s.byKey[fresh.key], old.id != after.id { s.keyByID[old.id] = nil }
            s.byKey[fresh.key] = after
            s.keyByID[after.id] = after.key
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
            if case .success(let d) = result { s.byKey[key] = d }
            return result
        }
    }

    func restore(id: String, now: Int64) async throws {
        state.withLock { s in
            guard let key = s.keyByID[id], let a = s.byKey[key], a.id == id, let r = ApprovalClaim.restore(a) else { return }
            s.byKey[key] = r
        }
    }

    func pending(limit: Int) async throws -> [Approval] {
        state.withLock { s in Array(s.byKey.values.filter { $0.status == .pending }.sorted { $0.createdAt < $1.createdAt }.prefix(limit)) }
    }

    private static func prune(_ s: inout State, now: Int64, capacity: Int) {
        guard s.byKey.count >= capacity / 2 else { return }
        // Decided, used or expired approvals a day past their expiry go; at capacity, every one not pending.
        let full = s.byKey.count >= capacity
        for (key, a) in s.byKey where a.status != .pending && (full || a.status != .approved && a.expiresAt + 86_400_000 < now) {
            s.byKey[key] = nil
            s.keyByID[a.id] = nil
        }
    }
}

/// Approvals of a fleet in Redis: the latest approval of each binding as JSON at `sidecar:apr:<key>`, its
/// id mapped to the key, pending ids in a sorted set for the API. The rule (`ApprovalClaim`) runs here;
/// Redis makes each change a compare-and-set, so two sidecars claiming one grant at once cannot both win.
final class RedisApprovalStore: ApprovalStore {
    private let redis: RedisClient
    private static let pendingSet = "sidecar:approvals:pending"
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
    static let scripts = [compareAndSet]

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
    private func update<T>(_ key: String, now: Int64, _ change: (Approval?) -> (T, Approval?)) async throws -> T {
        for _ in 0..<8 {
            let (old, current) = try await load(key)
            let (result, next) = change(current)
            guard let next, next != current else { return result }
            let text = String(decoding: try Self.encoder.encode(next), as: UTF8.self)
            let ttl = max(1, next.expiresAt + Self.keep - now)
            if try await redis.evalsha(Self.compareAndSet, keys: [Self.docKey(key)], args: [old, text, String(ttl)]).int == 1 {
                if next.id != current?.id {
                    _ = try await redis.send(["SET", Self.idKey(next.id), key, "PX", String(ttl)])
                }
                if next.status == .pending {
                    _ = try await redis.send(["ZADD", Self.pendingSet, String(next.createdAt), next.id])
                } else {
                    _ = try await redis.send(["ZREM", Self.pendingSet, next.id])
                }
                return result
            }
        }
        throw RedisError(kind: .server, message: "approval changed concurrently too often")
    }

    func claim(_ fresh: Approval, now: Int64) async throws -> (ApprovalClaim, Approval) {
        try await update(fresh.key, now: now) { latest in
            let (claim, after) = ApprovalClaim.claim(latest: latest, fresh: fresh, now: now)
            return ((claim, after), after)
        }
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

    func pending(limit: Int) async throws -> [Approval] {
        let ids = (try await redis.send(["ZRANGE", Self.pendingSet, "0", String(limit * 2)]).array ?? []).compactMap(\.string)
        var out: [Approval] = []
        for id in ids where out.count < limit {
            if let a = try await approval(id: id), a.status == .pending { out.append(a) } else { _ = try await redis.send(["ZREM", Self.pendingSet, id]) }
        }
        return out
    }
}
