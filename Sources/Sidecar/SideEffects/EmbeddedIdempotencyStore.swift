import Foundation
import GRDB
import NIOPosix
import Synchronization

/// The idempotency ledger on one host: decided in memory under one lock, made durable in a SQLite file
/// under `state.dir` by group commit — every claim and outcome waits until the transaction that holds it
/// is committed, and concurrent calls share that transaction. So a claim is on disk before the call is
/// sent (a crash cannot lose it and let the email go twice after a restart), at the cost of one commit
/// per batch of calls rather than two per call.
///
/// The file is the ledger; memory holds only the keys this process is deciding or has not committed yet
/// (a claim in flight, an outcome waiting for its commit), so memory stays the size of the concurrency,
/// not of a day of sends. A key that is being looked up is held too: an identical call meanwhile is in
/// flight by definition.
final class EmbeddedIdempotencyStore: IdempotencyStore {
    /// A key's state; the raw value is the code the file's `state` column holds (`released` is never
    /// written: its row is deleted).
    private enum Phase: String {
        case inFlight = "p"
        case done = "d"
        case unknown = "u"
        case released = "r"
    }

    private struct Held {
        var owner: String
        var digest: String
        var state: Phase
        var expires: Int64
        var answer: StoredAnswer?
    }

    private enum Write {
        case upsert(key: String, Held)
        case delete(key: String)
        case purge(before: Int64)
    }

    private struct State {
        /// Keys being decided, in flight, or with an outcome not yet committed (nil value: being looked up).
        var live: [String: Held?] = [:]
        var pending: [Write] = []
        var waiters: [CheckedContinuation<Void, any Error>] = []
        var flushing = false
        var sincePrune = 0
    }

    private let db: any DatabaseWriter
    private let now: @Sendable () -> Int64
    private let state = Mutex(State())

    init(path: String, now: @escaping @Sendable () -> Int64) throws {
        db = try SQLiteFile.open(path)
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
        // 1. A key this process holds decides at once; otherwise it is held while the file is read.
        let claim = Held(owner: owner, digest: digest, state: .inFlight, expires: at + inFlight.milliseconds, answer: nil)
        let held = state.withLock { s -> IdempotencyDecision? in
            s.sincePrune += 1
            if s.sincePrune >= 1024 {
                s.sincePrune = 0
                s.pending.append(.purge(before: at))
            }
            switch s.live[key] {
            case .some(.some(let h)) where h.state == .released:
                // Released a moment ago (its delete not yet committed): claimed again, written after it.
                s.live[key] = .some(claim)
                s.pending.append(.upsert(key: key, claim))
                return .proceed
            case .some(.some(let h)) where h.expires > at: return IdempotencyDecision.decide(Self.entry(h), digest: digest)
            case .some(.none): return .inFlight
            default:
                s.live[key] = .some(nil)
                return nil
            }
        }
        if let held {
            if held == .proceed { try await committed() }
            return held
        }
        // 2. What the file holds.
        let row: Row?
        do {
            // A read of one indexed row from the WAL (microseconds): done here rather than on another
            // thread, which would cost more in the hop than in the read.
            row = try lookUp(key, at: at)
        } catch {
            state.withLock { s in if case .some(.none) = s.live[key] { s.live[key] = nil } }
            throw error
        }
        let decision = IdempotencyDecision.decide(try row.map(Self.entry), digest: digest)
        // 3. Claimed: on disk before the call goes out.
        let wrote = state.withLock { s -> Bool in
            guard decision == .proceed else {
                if case .some(.none) = s.live[key] { s.live[key] = nil }
                return false
            }
            s.live[key] = .some(claim)
            s.pending.append(.upsert(key: key, claim))
            return true
        }
        if wrote { try await committed() }
        return decision
    }

    func finish(key: String, owner: String, outcome: LedgerOutcome, window: Duration) async throws {
        let expires = now() + window.milliseconds
        let wrote = state.withLock { s -> Bool in
            guard case .some(.some(var held)) = s.live[key], held.owner == owner else { return false }
            switch outcome {
            case .released:
                held.state = .released
                s.pending.append(.delete(key: key))
            case .unknown:
                held.state = .unknown
                held.expires = expires
                s.pending.append(.upsert(key: key, held))
            case .completed(let answer):
                held.state = .done
                held.answer = answer
                held.expires = expires
                s.pending.append(.upsert(key: key, held))
            }
            s.live[key] = .some(held)
            return true
        }
        guard wrote else { return }
        try await committed()
        // Committed: the file answers for the key from now on.
        state.withLock { s in
            if case .some(.some(let h)) = s.live[key], h.owner == owner, h.state != .inFlight { s.live[key] = nil }
        }
    }

    private func lookUp(_ key: String, at: Int64) throws -> Row? {
        try db.read { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT digest, state, answer FROM ledger WHERE key = ? AND expires > ?"), arguments: [key, at])
        }
    }

    private static func entry(_ h: Held) -> LedgerEntry? {
        switch h.state {
        case .done: return .completed(digest: h.digest, h.answer ?? StoredAnswer(status: 0, headers: [], body: nil))
        case .unknown: return .unknown(digest: h.digest)
        case .released: return nil
        case .inFlight: return .inFlight(digest: h.digest)
        }
    }

    private static func entry(_ row: Row) throws -> LedgerEntry {
        let digest: String = row["digest"]
        switch Phase(rawValue: row["state"] as String) {
        case .done?:
            let data: Data = row["answer"] ?? Data()
            guard let answer = StoredAnswer(bytes: data) else { throw DatabaseError(message: "unreadable idempotency answer") }
            return .completed(digest: digest, answer)
        case .unknown?: return .unknown(digest: digest)
        default: return .inFlight(digest: digest)
        }
    }

    /// Waits until everything written so far is committed. The first waiter with nothing being flushed
    /// flushes: it takes every pending write, commits them in one transaction and wakes every waiter of
    /// that batch; writes that arrived meanwhile go in the next.
    private func committed() async throws {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            let start = state.withLock { s -> Bool in
                s.waiters.append(cont)
                guard !s.flushing else { return false }
                s.flushing = true
                return true
            }
            if start { NIOThreadPool.singleton.submit { _ in self.flushLoop() } }
        }
    }

    /// Synchronous on purpose — GRDB's blocking `write` — on NIO's blocking-I/O pool, never on Swift's
    /// cooperative pool: a commit that checkpoints the WAL waits for `fdatasync`, and on two cores that
    /// would stall half the threads every task (every Gmail send) runs on.
    private func flushLoop() {
        while true {
            let batch = state.withLock { s -> ([Write], [CheckedContinuation<Void, any Error>])? in
                guard !s.waiters.isEmpty else {
                    s.flushing = false
                    return nil
                }
                defer {
                    s.pending.removeAll(keepingCapacity: true)
                    s.waiters.removeAll(keepingCapacity: true)
                }
                return (s.pending, s.waiters)
            }
            guard let (writes, waiters) = batch else { return }
            do {
                // One transaction for the batch, on this thread: the commit is a WAL append (no fsync
                // with synchronous=NORMAL), cheaper than a hop to the writer's queue and back.
                try db.write { db in
                    for w in writes {
                        switch w {
                        case .upsert(let key, let h):
                            try db.cachedStatement(sql: "INSERT OR REPLACE INTO ledger (key, owner, digest, state, expires, answer) VALUES (?, ?, ?, ?, ?, ?)")
                                .execute(arguments: [key, h.owner, h.digest, h.state.rawValue, h.expires, h.answer.map { Data($0.bytes) }])
                        case .delete(let key):
                            try db.cachedStatement(sql: "DELETE FROM ledger WHERE key = ?").execute(arguments: [key])
                        case .purge(let before):
                            try db.execute(sql: "DELETE FROM ledger WHERE rowid IN (SELECT rowid FROM ledger WHERE expires <= ? LIMIT 4096)", arguments: [before])
                        }
                    }
                }
                for w in waiters { w.resume() }
            } catch {
                for w in waiters { w.resume(throwing: error) }
            }
        }
    }
}
