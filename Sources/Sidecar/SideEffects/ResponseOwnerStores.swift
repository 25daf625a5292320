import Foundation
import GRDB
import Synchronization

/// Stored-response owners on one host, in a SQLite file under `state.dir`: an agent polling a background
/// response finds it again after the sidecar restarted. Expired rows are deleted every 1 024 claims.
final class EmbeddedResponseOwnerStore: ResponseOwnerStore {
    private let db: any DatabaseWriter
    private let claims = Atomic<Int>(0)

    init(path: String) throws {
        db = try SQLiteFile.open(path)
        var m = DatabaseMigrator()
        m.registerMigration("v1-response-owners") { db in
            try db.execute(
                sql: """
                    CREATE TABLE owners (id TEXT NOT NULL, agent TEXT NOT NULL, expires INTEGER NOT NULL, PRIMARY KEY (id, agent)) WITHOUT ROWID;
                    CREATE INDEX owners_by_expiry ON owners(expires);
                    """)
        }
        try m.migrate(db)
    }

    func claim(_ id: String, agent: String, ttl: Int64, now: Int64) async throws {
        let purge = claims.wrappingAdd(1, ordering: .relaxed).newValue % 1024 == 0
        try await db.write { db in
            try db.execute(
                sql: "INSERT INTO owners (id, agent, expires) VALUES (?, ?, ?) ON CONFLICT (id, agent) DO UPDATE SET expires = excluded.expires",
                arguments: [id, agent, now + ttl])
            if purge { try db.execute(sql: "DELETE FROM owners WHERE expires <= ?", arguments: [now]) }
        }
    }

    func owns(_ id: String, agent: String, now: Int64) async throws -> Bool {
        try await db.read { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM owners WHERE id = ? AND agent = ? AND expires > ?", arguments: [id, agent, now]) ?? false
        }
    }
}

/// Stored-response owners of a fleet in Redis: one key per response and agent
/// (`sidecar:openai:response:<id>:<agent>`), expiring with the response — any sidecar finds a response
/// another one handed out.
final class RedisResponseOwnerStore: ResponseOwnerStore {
    private let redis: RedisClient

    init(redis: RedisClient) { self.redis = redis }

    static func key(_ id: String, agent: String) -> String { "sidecar:openai:response:" + id + ":" + agent }

    func claim(_ id: String, agent: String, ttl: Int64, now: Int64) async throws {
        _ = try await redis.send(["SET", Self.key(id, agent: agent), "1", "PX", String(ttl)]).checked()
    }

    func owns(_ id: String, agent: String, now: Int64) async throws -> Bool {
        try await redis.send(["EXISTS", Self.key(id, agent: agent)]).checked().int == 1
    }
}
