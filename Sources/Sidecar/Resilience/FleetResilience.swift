import Foundation
import Logging
import Synchronization
import Upstreams

/// The fleet-shared parts of resilience, through Redis: an open breaker is published so every sidecar
/// obeys it; one probe per fleet (a short `SET NX` lock) decides recovery; the retry budget counts the
/// fleet's requests and retries in 10-second windows. Every Redis failure degrades to local behaviour.
final class FleetResilience: Sendable {
    let redis: RedisClient
    let sidecarID: String
    let budgetRatio: Double
    let budgetMinimumPerWindow: Int
    private let pending = Mutex<[Tool: Int]>([:])

    static let breakerChannel = "sidecar:breaker"
    static let chaosChannel = "sidecar:chaos"

    init(redis: RedisClient, sidecarID: String, budgetRatio: Double, budgetMinimumPerSecond: Double) {
        self.redis = redis
        self.sidecarID = sidecarID
        self.budgetRatio = budgetRatio
        budgetMinimumPerWindow = Int(budgetMinimumPerSecond * 10)
    }

    static let openKeyPrefix = "{breaker}:open:"
    static let chaosKey = "{sidecar}:chaos"

    /// Publishes a trip, and keeps it as a key that expires when the open period ends, so a sidecar that
    /// starts (or reconnects) later obeys it too.
    func publishOpen(key: String, until: Int64) {
        let message = #"{"key":"\#(key)","state":"open","until":\#(until),"from":"\#(sidecarID)"}"#
        let ttl = max(1, until - unixMillis())
        Task {
            _ = try? await redis.send(["SET", Self.openKeyPrefix + key, String(until), "PX", String(ttl)])
            _ = try? await redis.send(["PUBLISH", Self.breakerChannel, message])
        }
    }

    func publishClosed(key: String) {
        let message = #"{"key":"\#(key)","state":"closed","from":"\#(sidecarID)"}"#
        Task {
            _ = try? await redis.send(["DEL", Self.openKeyPrefix + key])
            _ = try? await redis.send(["PUBLISH", Self.breakerChannel, message])
        }
    }

    /// The breakers the fleet holds open now: (breaker key, reopens at unix ms). Bounded SCAN.
    func openBreakers() async -> [(String, Int64)] {
        let keys = await redis.scan(matching: Self.openKeyPrefix + "*", route: Self.openKeyPrefix)
        guard !keys.isEmpty, let values = try? await redis.send(["MGET"] + keys), let list = values.array else { return [] }
        return zip(keys, list).compactMap { key, value in
            value.int.map { (String(key.dropFirst(Self.openKeyPrefix.count)), $0) }
        }
    }

    /// Stores fleet chaos settings (expiring with their auto-off time) and publishes them.
    func publishChaos(_ json: String, until: Int64?) async throws {
        var set = ["SET", Self.chaosKey, json]
        if let until { set += ["PX", String(max(1, until - unixMillis()))] }
        _ = try await redis.send(set)
        _ = try await redis.send(["PUBLISH", Self.chaosChannel, json])
    }

    /// The fleet's chaos settings, if any were published and have not expired.
    func currentChaos() async -> String? {
        try? await redis.send(["GET", Self.chaosKey]).string
    }

    /// One probe per fleet: whoever sets the lock probes; the others keep failing fast.
    func acquireProbe(_ key: String) async -> Bool {
        guard let reply = try? await redis.send(["SET", "{breaker}:probe:\(key)", sidecarID, "NX", "PX", "5000"]) else {
            return true  // Redis down: decide locally.
        }
        if case .simple("OK") = reply { return true }
        return false
    }

    /// Request counts are added in batches (see `flush`) so the hot path makes no Redis call for them.
    func countRequest(_ tool: Tool) { pending.withLock { $0[tool, default: 0] += 1 } }

    func flush() async {
        let batch = pending.withLock { p -> [Tool: Int] in
            defer { p = [:] }
            return p
        }
        let window = Int64(Date().timeIntervalSince1970) / 10
        for (tool, n) in batch {
            _ = try? await redis.send(["INCRBY", "{rb:\(tool.rawValue)}:req:\(window)", String(n)])
            _ = try? await redis.send(["EXPIRE", "{rb:\(tool.rawValue)}:req:\(window)", "30"])
        }
    }

    static let retryScript = LuaScript(
        """
        local reqs = (tonumber(redis.call('GET', KEYS[1])) or 0) + (tonumber(redis.call('GET', KEYS[2])) or 0)
        local retries = (tonumber(redis.call('GET', KEYS[3])) or 0) + (tonumber(redis.call('GET', KEYS[4])) or 0)
        if retries + 1 > reqs * tonumber(ARGV[1]) + tonumber(ARGV[2]) then return 0 end
        redis.call('INCR', KEYS[3])
        redis.call('EXPIRE', KEYS[3], 30)
        return 1
        """)

    /// Fleet-wide: retries in the last two windows stay under ratio × requests + a small floor.
    func mayRetry(_ tool: Tool) async -> Bool {
        let w = Int64(Date().timeIntervalSince1970) / 10
        let t = "{rb:\(tool.rawValue)}"
        let keys = ["\(t):req:\(w)", "\(t):req:\(w - 1)", "\(t):retry:\(w)", "\(t):retry:\(w - 1)"]
        guard let reply = try? await redis.evalsha(Self.retryScript, keys: keys, args: [String(budgetRatio), String(budgetMinimumPerWindow)]) else {
            return true  // Redis down: the local budget already decided.
        }
        return reply.int == 1
    }

    func runFlusher() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            await flush()
        }
    }
}
