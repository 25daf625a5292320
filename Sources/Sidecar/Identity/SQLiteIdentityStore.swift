import Foundation
import GRDB

/// The embedded identity store: one SQLite file (WAL), so agents and revocations survive a restart.
public final class SQLiteIdentityStore: IdentityStore {
    let db: DatabaseQueue

    /// Opens (and migrates) the database at `path`; `:memory:` for tests.
    public init(path: String) throws {
        if path != ":memory:" {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        }
        var config = Configuration()
        config.busyMode = .timeout(5)
        db = path == ":memory:" ? try DatabaseQueue(configuration: config) : try DatabaseQueue(path: path, configuration: config)
        try Self.migrator.migrate(db)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-identity") { db in
            try db.execute(sql: """
                CREATE TABLE agents (
                    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, status TEXT NOT NULL,
                    created_by TEXT NOT NULL, created_at INTEGER NOT NULL);
                CREATE TABLE tokens (
                    jti TEXT PRIMARY KEY, agent_id TEXT NOT NULL, issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
                    scopes TEXT, source TEXT NOT NULL, revoked_at INTEGER);
                CREATE INDEX tokens_by_agent ON tokens(agent_id);
                """)
        }
        return m
    }

    public func createAgent(_ a: AgentRecord) async throws {
        try await db.write { db in
            try db.execute(
                sql: "INSERT INTO agents (id, name, role, status, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [a.id, a.name, a.role, a.status.rawValue, a.createdBy, a.createdAt])
        }
    }

    public func agent(id: String) async throws -> AgentRecord? {
        try await db.read { db in try Row.fetchOne(db, sql: "SELECT * FROM agents WHERE id = ?", arguments: [id]).map(Self.agent) }
    }

    public func agents(role: String?, status: AgentRecord.Status?) async throws -> [AgentRecord] {
        try await db.read { db in
            var sql = "SELECT * FROM agents WHERE 1=1"
            var args: [(any DatabaseValueConvertible)?] = []
            if let role { sql += " AND role = ?"; args.append(role) }
            if let status { sql += " AND status = ?"; args.append(status.rawValue) }
            return try Row.fetchAll(db, sql: sql + " ORDER BY created_at, id", arguments: StatementArguments(args)).map(Self.agent)
        }
    }

    public func setAgentStatus(id: String, status: AgentRecord.Status) async throws -> Bool {
        try await db.write { db in
            try db.execute(sql: "UPDATE agents SET status = ? WHERE id = ?", arguments: [status.rawValue, id])
            return db.changesCount > 0
        }
    }

    public func recordToken(_ t: TokenRecord) async throws {
        let scopes = t.scopes.map { String(data: try! JSONEncoder().encode($0), encoding: .utf8)! }
        try await db.write { db in
            try db.execute(
                sql: """
                    INSERT OR IGNORE INTO tokens (jti, agent_id, issued_at, expires_at, scopes, source, revoked_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [t.jti, t.agentId, t.issuedAt, t.expiresAt, scopes, t.source.rawValue, t.revokedAt])
        }
    }

    public func token(jti: String) async throws -> TokenRecord? {
        try await db.read { db in try Row.fetchOne(db, sql: "SELECT * FROM tokens WHERE jti = ?", arguments: [jti]).map(Self.token) }
    }

    public func tokens(agentId: String) async throws -> [TokenRecord] {
        try await db.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM tokens WHERE agent_id = ? ORDER BY issued_at, jti", arguments: [agentId]).map(Self.token)
        }
    }

    public func revokeToken(jti: String, at: Int64) async throws -> Bool {
        try await db.write { db in
            try db.execute(sql: "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE jti = ?", arguments: [at, jti])
            return db.changesCount > 0
        }
    }

    public func snapshot() async throws -> IdentitySnapshot {
        try await db.read { db in
            var s = IdentitySnapshot()
            for row in try Row.fetchAll(db, sql: "SELECT id, status FROM agents") {
                s.agents[row["id"]] = AgentRecord.Status(rawValue: row["status"]) ?? .disabled
            }
            s.revoked = Set(try String.fetchAll(db, sql: "SELECT jti FROM tokens WHERE revoked_at IS NOT NULL"))
            return s
        }
    }

    static func agent(_ row: Row) -> AgentRecord {
        AgentRecord(
            id: row["id"], name: row["name"], role: row["role"], status: AgentRecord.Status(rawValue: row["status"]) ?? .disabled,
            createdBy: row["created_by"], createdAt: row["created_at"])
    }

    static func token(_ row: Row) -> TokenRecord {
        let scopesText: String? = row["scopes"]
        return TokenRecord(
            jti: row["jti"], agentId: row["agent_id"], issuedAt: row["issued_at"], expiresAt: row["expires_at"],
            scopes: scopesText.flatMap { try? JSONDecoder().decode([String].self, from: Data($0.utf8)) },
            source: TokenRecord.Source(rawValue: row["source"]) ?? .observed, revokedAt: row["revoked_at"])
    }
}
