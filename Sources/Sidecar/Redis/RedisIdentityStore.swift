import Foundation
import Logging
import NIOPosix

/// Agents, token metadata and revocations in Redis, shared by a fleet. Every change is also published on
/// `sidecar:identity`, so other sidecars apply it within milliseconds (`IdentitySubscriber`).
final class RedisIdentityStore: IdentityStore {
    let redis: RedisClient
    static let channel = "sidecar:identity"
    private let encoder = JSONEncoder()

    init(redis: RedisClient) { self.redis = redis }

    // One hash tag for every identity key: on a Redis Cluster they live on one node, so the epoch that
    // says "this data is whole" describes the agents, tokens and revocations beside it.
    static let agentsKey = "{sidecar}:agents"
    static let tokensKey = "{sidecar}:tokens"
    static let revokedKey = "{sidecar}:revoked"
    static func agentTokensKey(_ agent: String) -> String { "{sidecar}:agent-tokens:\(agent)" }

    /// Renames the keys an earlier version wrote without the hash tag (one server only: a cluster never
    /// worked with them). Bounded; a key already moved, or never written, is left alone.
    static func moveLegacyKeys(_ redis: RedisClient, logger: Logger) async {
        var moves = [("sidecar:agents", agentsKey), ("sidecar:tokens", tokensKey), ("sidecar:revoked", revokedKey), ("sidecar:epoch", epochKey)]
        for key in await redis.scan(matching: "sidecar:agent-tokens:*") {
            moves.append((key, agentTokensKey(String(key.dropFirst("sidecar:agent-tokens:".count)))))
        }
        var moved = 0
        for (old, new) in moves where (try? await redis.send(["RENAMENX", old, new]))?.int == 1 { moved += 1 }
        if moved > 0 { logger.notice("identity keys moved under the {sidecar} hash tag", metadata: ["keys": "\(moved)"]) }
    }

    private func check(_ v: RedisValue) throws -> RedisValue { try v.checked() }

    private func json<T: Encodable>(_ value: T) throws -> String { String(decoding: try encoder.encode(value), as: UTF8.self) }

    private func decode<T: Decodable>(_ type: T.Type, _ v: RedisValue) -> T? {
        guard case .bulk(let b?) = v else { return nil }
        return try? JSONDecoder().decode(T.self, from: Data(b))
    }

    private func publish(_ message: [String: String]) async throws {
        _ = try check(await redis.send(["PUBLISH", Self.channel, try json(message)]))
    }

    func createAgent(_ agent: AgentRecord) async throws {
        let reply = try check(await redis.send(["HSETNX", Self.agentsKey, agent.id, try json(agent)]))
        guard reply.int == 1 else { throw RedisError.server("agent \(agent.id) exists") }
        try await publish(["type": "agent", "id": agent.id, "status": agent.status.rawValue])
    }

    func agent(id: String) async throws -> AgentRecord? {
        decode(AgentRecord.self, try check(await redis.send(["HGET", Self.agentsKey, id])))
    }

    func agents(role: String?, status: AgentRecord.Status?) async throws -> [AgentRecord] {
        let all = try check(await redis.send(["HVALS", Self.agentsKey])).array ?? []
        return all.compactMap { decode(AgentRecord.self, $0) }
            .filter { (role == nil || $0.role == role) && (status == nil || $0.status == status) }
            .sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    func setAgentStatus(id: String, status: AgentRecord.Status) async throws -> Bool {
        guard var agent = try await agent(id: id) else { return false }
        agent.status = status
        _ = try check(await redis.send(["HSET", Self.agentsKey, id, try json(agent)]))
        try await publish(["type": "agent", "id": id, "status": status.rawValue])
        return true
    }

    func recordToken(_ token: TokenRecord) async throws {
        let reply = try check(await redis.send(["HSETNX", Self.tokensKey, token.jti, try json(token)]))
        if reply.int == 1 { _ = try check(await redis.send(["SADD", Self.agentTokensKey(token.agentId), token.jti])) }
    }

    func token(jti: String) async throws -> TokenRecord? {
        decode(TokenRecord.self, try check(await redis.send(["HGET", Self.tokensKey, jti])))
    }

    func tokens(agentId: String) async throws -> [TokenRecord] {
        let ids = try check(await redis.send(["SMEMBERS", Self.agentTokensKey(agentId)])).array?.compactMap(\.string) ?? []
        guard !ids.isEmpty else { return [] }
        let values = try check(await redis.send(["HMGET", Self.tokensKey] + ids)).array ?? []
        return values.compactMap { decode(TokenRecord.self, $0) }.sorted { ($0.issuedAt, $0.jti) < ($1.issuedAt, $1.jti) }
    }

    func revokeToken(jti: String, at: Int64) async throws -> Bool {
        guard var record = try await token(jti: jti) else { return false }
        if record.revokedAt == nil {
            record.revokedAt = at
            _ = try check(await redis.send(["HSET", Self.tokensKey, jti, try json(record)]))
        }
        _ = try check(await redis.send(["SADD", Self.revokedKey, jti]))
        try await publish(["type": "revoke", "jti": jti])
        return true
    }

    func snapshot() async throws -> IdentitySnapshot {
        var s = IdentitySnapshot()
        // The epoch first: data written after it belongs to its generation.
        s.epoch = try check(await redis.send(["GET", Self.epochKey])).string
        for v in try check(await redis.send(["HVALS", Self.agentsKey])).array ?? [] {
            if let a = decode(AgentRecord.self, v) {
                s.agents[a.id] = a.status
                s.agentRecords.append(a)
            }
        }
        s.revoked = Set(try check(await redis.send(["SMEMBERS", Self.revokedKey])).array?.compactMap(\.string) ?? [])
        return s
    }

    /// The fleet's generation of identity data: set once when a fleet first uses a Redis, gone (or
    /// different) when that Redis lost its data — which is how a sidecar tells "no revocations" from
    /// "revocations forgotten".
    static let epochKey = "{sidecar}:epoch"

    var tracksEpochs: Bool { true }

    func claimEpoch(_ candidate: String) async throws -> String {
        _ = try check(await redis.send(["SET", Self.epochKey, candidate, "NX"]))
        guard let epoch = try check(await redis.send(["GET", Self.epochKey])).string else { throw RedisError.server("epoch not readable") }
        return epoch
    }

    func merge(_ snapshot: IdentitySnapshot) async throws {
        for agent in snapshot.agentRecords {
            _ = try check(await redis.send(["HSETNX", Self.agentsKey, agent.id, try json(agent)]))
        }
        let revoked = snapshot.revoked.sorted()
        for start in stride(from: 0, to: revoked.count, by: 500) {
            _ = try check(await redis.send(["SADD", Self.revokedKey] + revoked[start..<min(start + 500, revoked.count)]))
        }
        // Every sidecar reloads the merged data at once.
        try await publish(["type": "reload"])
    }
}

/// Keeps this sidecar in step with the fleet through Redis pub/sub: identity changes (revocations,
/// disabled agents) apply at once, as do breaker states and chaos switches published by other sidecars.
/// After (re)connecting, and every 30 s, the identity snapshot is reloaded whole, in case a message was
/// missed while disconnected.
struct FleetSubscriber: Sendable {
    /// Where to listen, in order of preference (a cluster's masters; one server's address).
    let endpoints: @Sendable () -> [RedisEndpoint]
    let state: IdentityState
    let authenticator: Authenticator?
    let logger: Logger
    /// Other channels and their handlers (breakers, chaos).
    var handlers: [String: @Sendable (String) -> Void] = [:]
    /// Runs after each (re)subscription: catches up on state published while this sidecar was away.
    var onConnect: @Sendable () async -> Void = {}

    func run() async {
        var backoff: Duration = .milliseconds(50)
        var attempt = 0
        let channels = [RedisIdentityStore.channel] + handlers.keys.sorted()
        while !Task.isCancelled {
            do {
                let (stream, continuation) = AsyncStream<RedisValue>.makeStream()
                let candidates = endpoints()
                let endpoint = candidates[attempt % candidates.count]
                attempt += 1
                let connection = try await RedisConnection.connect(
                    endpoint, timeout: .milliseconds(500), group: MultiThreadedEventLoopGroup.singleton,
                    onPush: { continuation.yield($0) })
                connection.channel.closeFuture.whenComplete { _ in continuation.finish() }
                _ = try await connection.send(["SUBSCRIBE"] + channels, timeout: .seconds(1))
                try? await state.refresh()
                await onConnect()
                backoff = .milliseconds(50)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        while !Task.isCancelled {
                            try await Task.sleep(for: .seconds(30))
                            try? await state.refresh()
                        }
                    }
                    group.addTask {
                        for await message in stream { dispatch(message) }
                    }
                    _ = try await group.next()
                    group.cancelAll()
                }
                connection.close()
            } catch {
                if Task.isCancelled { return }
                logger.warning("fleet subscription lost; retrying", metadata: ["backoff_ms": "\(backoff.milliseconds)"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(2))
            }
        }
    }

    func dispatch(_ message: RedisValue) {
        guard let parts = message.array, parts.count == 3, parts[0].string == "message", let channel = parts[1].string,
            let text = parts[2].string
        else { return }
        if channel == RedisIdentityStore.channel { apply(text) } else { handlers[channel]?(text) }
    }

    func apply(_ text: String) {
        guard let json = try? JSONDecoder().decode([String: String].self, from: Data(text.utf8)) else { return }
        switch json["type"] {
        case "revoke":
            guard let jti = json["jti"] else { return }
            state.apply { $0.revoked.insert(jti) }
            authenticator?.evict(jti: jti)
        case "reload":
            let state = self.state
            Task { try? await state.refresh() }
        case "agent":
            guard let id = json["id"], let status = json["status"].flatMap(AgentRecord.Status.init(rawValue:)) else { return }
            state.apply { s in
                s.agents[id] = status
                if let i = s.agentRecords.firstIndex(where: { $0.id == id }) { s.agentRecords[i].status = status }
            }
            if status == .disabled { authenticator?.evict(agent: id) }
        default:
            break
        }
    }
}
