import Foundation
import NIOCore
import NIOHTTP1
import Upstreams

/// The fleet's second cache level: where a sidecar looks after a local miss, and where it also puts what
/// it stores. A protocol so the caller's tests can use a fake.
protocol SharedCacheStore: Sendable {
    func get(_ key: String) async -> CachedResponse?
    func put(_ key: String, _ response: CachedResponse)
}

/// Cacheable answers kept in Redis (`cache:<sha256>`) until their stale-if-error time. Any Redis failure
/// is a miss: the shared cache only ever saves upstream calls, it never fails one.
struct RedisSharedCache: SharedCacheStore {
    let redis: RedisClient
    let now: @Sendable () -> Int64

    static func redisKey(_ key: String) -> String { "cache:\(key)" }

    func get(_ key: String) async -> CachedResponse? {
        guard let text = try? await redis.send(["GET", Self.redisKey(key)]).string else { return nil }
        return Self.decode(text)
    }

    func put(_ key: String, _ response: CachedResponse) {
        let ttl = response.staleUntil - now()
        guard ttl > 0, let text = Self.encode(response) else { return }
        Task { _ = try? await redis.send(["SET", Self.redisKey(key), text, "PX", String(ttl)]) }
    }

    /// Stored form: JSON with the body in base64 (RESP arguments are sent as text here).
    struct Stored: Codable {
        var status: Int
        var headers: [[String]]
        var body: String
        var storedAt: Int64
        var expiresAt: Int64
        var staleUntil: Int64
    }

    static func encode(_ r: CachedResponse) -> String? {
        let stored = Stored(
            status: Int(r.status.code), headers: r.headers.map { [$0.name, $0.value] },
            body: Data(r.body.readableBytesView).base64EncodedString(), storedAt: r.storedAt, expiresAt: r.expiresAt, staleUntil: r.staleUntil)
        return (try? JSONEncoder().encode(stored)).map { String(decoding: $0, as: UTF8.self) }
    }

    static func decode(_ text: String) -> CachedResponse? {
        guard let s = try? JSONDecoder().decode(Stored.self, from: Data(text.utf8)), let body = Data(base64Encoded: s.body),
            (200...599).contains(s.status), s.headers.allSatisfy({ $0.count == 2 })
        else { return nil }
        return CachedResponse(
            status: HTTPResponseStatus(statusCode: s.status), headers: HTTPHeaders(s.headers.map { ($0[0], $0[1]) }),
            body: ByteBuffer(bytes: body), storedAt: s.storedAt, expiresAt: s.expiresAt, staleUntil: s.staleUntil)
    }
}
