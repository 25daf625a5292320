import Foundation
import GRDB

/// The idempotency ledger on one host: a SQLite file under `state.dir`, so an answer is still replayed
/// — and an email still not sent twice — after the sidecar restarted. Side effects are rare calls, so
/// each decision is one short transaction; `begin` runs in an immediate transaction, which makes the
/// claim atomic between concurrent calls (and between processes sharing the file).
final class EmbeddedIdempotencyStore: IdempotencyStore {
    private let db: any DatabaseWriter
    private let now: @Sendable () -> Int64

    init(path: String, now: @escaping @Sendable () -> Int64) throws {
        var config = Configuration()
        config.busyMode = .timeout(5)
        config.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        db = path == ":memory:" ? try DatabaseQueue(configuration: config) : try DatabasePool(path: path, configuration: config)
        self.now = now
        var m = DatabaseMigrator()
        m.registerMigration("v1-idempotency") { db in
            try db.execute(
                sql: """
                    CREATE TABLE ledger (key TEXT PRIMARY KEY, owner TEXT NOT NULL, digest TEXT NOT NULL, state TEXT NOT NULL,
                        expires INTEGER NOT NULL, answer BLOB);
                    CREATE INDEX ledger_by_expiry ON ledger(expires);
                    """)
        }
        try m.migrate(db)
    }

    func begin(key: String, digest: String, owner: String, inFlight: Duration) async throws -> IdempotencyDecision {
        let at = now()
        let expires = at + inFlight.milliseconds
        return try await db.write { db in
            // Expired rows go a few at a time, so the file stays the size of one window.
            try db.execute(sql: "DELETE FROM ledger WHERE rowid IN (SELECT rowid FROM ledger WHERE expires <= ? LIMIT 64)", arguments: [at])
            let row = try Row.fetchOne(db, sql: "SELECT digest, state, answer FROM ledger WHERE key = ? AND expires > ?", arguments: [key, at])
            let decision = IdempotencyDecision.decide(try row.map(Self.entry), digest: digest)
            if decision == .proceed {
                try db.execute(
                    sql: "INSERT OR REPLACE INTO ledger (key, owner, digest, state, expires, answer) VALUES (?, ?, ?, 'p', ?, NULL)",
                    arguments: [key, owner, digest, expires])
            }
            return decision
        }
    }

    func finish(key: String, owner: String, outcome: LedgerOutcome, window: Duration) async throws {
        let expires = now() + window.milliseconds
        try await db.write { db in
            switch outcome {
            case .released:
                try db.execute(sql: "DELETE FROM ledger WHERE key = ? AND owner = ?", arguments: [key, owner])
            case .unknown:
                try db.execute(sql: "UPDATE ledger SET state = 'u', expires = ? WHERE key = ? AND owner = ?", arguments: [expires, key, owner])
            case .completed(let answer):
                let data = try JSONEncoder().encode(answer)
                try db.execute(
                    sql: "UPDATE ledger SET state = 'd', expires = ?, answer = ? WHERE key = ? AND owner = ?", arguments: [expires, data, key, owner])
            }
        }
    }

    private static func entry(_ row: Row) throws -> LedgerEntry {
        let digest: String = row["digest"]
        switch row["state"] as String {
        case "d":
            let data: Data = row["answer"] ?? Data()
            return .completed(digest: digest, try JSONDecoder().decode(StoredAnswer.self, from: data))
        case "u": return .unknown(digest: digest)
        default: return .inFlight(digest: digest)
        }
    }
}
