import Foundation

/// The idempotency ledger of a fleet: one Redis hash per key (`sidecar:idem:<key>`), claimed and finished
/// by scripts, so of two identical calls on two sidecars exactly one proceeds, and the other sidecar
/// replays the first one's answer.
final class RedisIdempotencyStore: IdempotencyStore {
    private let redis: RedisClient

    init(redis: RedisClient) { self.redis = redis }

    static func key(_ key: String) -> String { "sidecar:idem:" + key }

    /// KEYS: the entry. ARGV: owner, digest, in-flight ms. Returns {'go'} when claimed, else the entry's
    /// state, digest and answer.
    static let begin = LuaScript(
        """
        local v = redis.call('HMGET', KEYS[1], 'state', 'digest', 'answer')
        if not v[1] then
          redis.call('HSET', KEYS[1], 'state', 'p', 'owner', ARGV[1], 'digest', ARGV[2])
          redis.call('PEXPIRE', KEYS[1], ARGV[3])
          return {'go'}
        end
        return {v[1], v[2] or '', v[3] or ''}
        """)

    /// KEYS: the entry. ARGV: owner, outcome (`r` release, `u` unknown, `d` done), window ms, answer.
    static let finish = LuaScript(
        """
        if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
        if ARGV[2] == 'r' then redis.call('DEL', KEYS[1]); return 1 end
        redis.call('HSET', KEYS[1], 'state', ARGV[2], 'answer', ARGV[4])
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
        return 1
        """)

    static let scripts = [begin, finish]

    func begin(key: String, digest: String, owner: String, inFlight: Duration) async throws -> IdempotencyDecision {
        let reply = try await redis.evalsha(Self.begin, keys: [Self.key(key)], args: [owner, digest, String(max(1, inFlight.milliseconds))])
        guard let a = reply.array, let state = a.first?.string else {
            throw RedisError(kind: .protocolError, message: "unexpected idempotency reply")
        }
        if state == "go" { return .proceed }
        guard a.count == 3, let held = a[1].string else { throw RedisError(kind: .protocolError, message: "unexpected idempotency reply") }
        let entry: LedgerEntry
        switch state {
        case "d":
            let answer = try JSONDecoder().decode(StoredAnswer.self, from: Data((a[2].string ?? "").utf8))
            entry = .completed(digest: held, answer)
        case "u": entry = .unknown(digest: held)
        default: entry = .inFlight(digest: held)
        }
        return IdempotencyDecision.decide(entry, digest: digest)
    }

    func finish(key: String, owner: String, outcome: LedgerOutcome, window: Duration) async throws {
        let args: [String]
        switch outcome {
        case .released: args = [owner, "r", "0", ""]
        case .unknown: args = [owner, "u", String(window.milliseconds), ""]
        case .completed(let answer):
            args = [owner, "d", String(window.milliseconds), String(decoding: try JSONEncoder().encode(answer), as: UTF8.self)]
        }
        _ = try await redis.evalsha(Self.finish, keys: [Self.key(key)], args: args)
    }
}
