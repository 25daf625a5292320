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
/// flight by definition. Every file access — the claims, the outcomes and the reads of keys this process
/// does not hold — happens on one writer thread, in the batch's transaction: a key is read and claimed
/// in one step, and no caller's thread ever waits for the disk.
final class EmbeddedIdempotencyStore: CallbackIdempotencyStore {
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

    /// A key this process does not hold: read from the file and, when free, claimed — both inside the
    /// writer's next transaction.
    private struct Lookup {
        var key: String
        var digest: String
        var claim: Held
        var at: Int64
        var then: @Sendable (Result<IdempotencyDecision, any Error>) -> Void
    }

    private struct State {
        /// Keys being decided, in flight, or with an outcome not yet committed (nil value: being looked up).
        var live: [String: Held?] = [:]
        var pending: [Write] = []
        var lookups: [Lookup] = []
        /// Called once the transaction holding everything pending when they came is committed.
        var waiters: [@Sendable (Result<Void, any Error>) -> Void] = []
        var flushing = false
        var sincePrune = 0

        /// Whether the caller must start the writer (nothing is being flushed).
        mutating func startsFlush() -> Bool {
            guard !flushing else { return false }
            flushing = true
            return true
        }
    }

    private let db: any DatabaseWriter
    /// The ledger's own two threads, the writer's and the checkpointer's — not NIO's shared blocking
    /// pool, where `http_fetch`'s name lookups wait: a busy ledger must not hold them up.
    private let threads = NIOThreadPool(numberOfThreads: 2)
    private let checkpointer: WALCheckpointer
    private let now: @Sendable () -> Int64
    private let state = Mutex(State())

    init(path: String, now: @escaping @Sendable () -> Int64) throws {
        db = try SQLiteFile.open(path, autocheckpoint: false)
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
        checkpointer = try WALCheckpointer(path: path, writer: db, threads: threads)
        threads.start()
    }

    deinit { threads.shutdownGracefully { _ in } }

    func begin(key: String, digest: String, owner: String, inFlight: Duration) async throws -> IdempotencyDecision {
        try await withCheckedThrowingContinuation { cont in
            begin(key: key, digest: digest, owner: owner, inFlight: inFlight) { cont.resume(with: $0) }
        }
    }

    func finish(key: String, owner: String, outcome: LedgerOutcome, window: Duration) async throws {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            finish(key: key, owner: owner, outcome: outcome, window: window) { cont.resume(with: $0) }
        }
    }

    /// `begin` without a task. A key this process holds decides at once (`then` runs before this
    /// returns); any other is read and, when free, claimed by the writer's next transaction, and `then`
    /// runs on the writer's thread once it is committed — a claim is on disk before the call goes out.
    func begin(
        key: String, digest: String, owner: String, inFlight: Duration, then: @escaping @Sendable (Result<IdempotencyDecision, any Error>) -> Void
    ) {
        let at = now()
        let claim = Held(owner: owner, digest: digest, state: .inFlight, expires: at + inFlight.milliseconds, answer: nil)
        let (decided, flush) = state.withLock { s -> (IdempotencyDecision?, Bool) in
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
                s.waiters.append { then($0.map { .proceed }) }
                return (nil, s.startsFlush())
            case .some(.some(let h)) where h.expires > at: return (IdempotencyDecision.decide(Self.entry(h), digest: digest), false)
            case .some(.none): return (.inFlight, false)
            default:
                s.live[key] = .some(nil)
                s.lookups.append(Lookup(key: key, digest: digest, claim: claim, at: at, then: then))
                return (nil, s.startsFlush())
            }
        }
        if let decided { then(.success(decided)) }
        if flush { startFlush() }
    }

    /// `finish` without a task: `then` runs once the outcome is committed (at once when `owner` no
    /// longer holds the key).
    func finish(key: String, owner: String, outcome: LedgerOutcome, window: Duration, then: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let expires = now() + window.milliseconds
        let (wrote, flush) = state.withLock { s -> (Bool, Bool) in
            guard case .some(.some(var held)) = s.live[key], held.owner == owner else { return (false, false) }
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
            s.waiters.append { [self] result in
                // Committed: the file answers for the key from now on.
                if case .success = result {
                    state.withLock { s in
                        if case .some(.some(let h)) = s.live[key], h.owner == owner, h.state != .inFlight { s.live[key] = nil }
                    }
                }
                then(result)
            }
            return (true, s.startsFlush())
        }
        if !wrote { then(.success(())) }
        if flush { startFlush() }
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

    /// Synchronous on purpose — GRDB's blocking `write` — on a thread of its own, never on an event loop
    /// or Swift's cooperative pool: a key's row may have to come from the disk.
    private func startFlush() { threads.submit { _ in self.flushLoop() } }

    /// The writer: takes every pending write and lookup, runs them in one transaction, and tells every
    /// caller of that batch; what arrived meanwhile goes in the next. Stops when nothing is waiting.
    private func flushLoop() {
        while true {
            let batch = state.withLock { s -> ([Write], [Lookup], [@Sendable (Result<Void, any Error>) -> Void])? in
                guard !s.waiters.isEmpty || !s.lookups.isEmpty else {
                    s.flushing = false
                    return nil
                }
                defer {
                    s.pending.removeAll(keepingCapacity: true)
                    s.lookups.removeAll(keepingCapacity: true)
                    s.waiters.removeAll(keepingCapacity: true)
                }
                return (s.pending, s.lookups, s.waiters)
            }
            guard let (writes, lookups, waiters) = batch else { return }
            let decisions: [Result<IdempotencyDecision, any Error>]
            do {
                // One transaction for the batch, on this thread: the commit is a WAL append (no fsync
                // with synchronous=NORMAL), cheaper than a hop to the writer's queue and back.
                decisions = try db.write { db in
                    for w in writes {
                        switch w {
                        case .upsert(let key, let h): try Self.upsert(key, h, db)
                        case .delete(let key):
                            try db.cachedStatement(sql: "DELETE FROM ledger WHERE key = ?").execute(arguments: [key])
                        case .purge(let before):
                            try db.execute(sql: "DELETE FROM ledger WHERE rowid IN (SELECT rowid FROM ledger WHERE expires <= ? LIMIT 4096)", arguments: [before])
                        }
                    }
                    // Each lookup decided by what the file holds, and claimed in this same transaction.
                    var decisions: [Result<IdempotencyDecision, any Error>] = []
                    decisions.reserveCapacity(lookups.count)
                    for l in lookups {
                        let row = try Row.fetchOne(
                            db.cachedStatement(sql: "SELECT digest, state, answer FROM ledger WHERE key = ? AND expires > ?"), arguments: [l.key, l.at])
                        let decision = Result { IdempotencyDecision.decide(try row.map(Self.entry), digest: l.digest) }
                        if case .success(.proceed) = decision { try Self.upsert(l.key, l.claim, db) }
                        decisions.append(decision)
                    }
                    return decisions
                }
            } catch {
                state.withLock { s in
                    for l in lookups { if case .some(.none) = s.live[l.key] { s.live[l.key] = nil } }
                }
                for w in waiters { w(.failure(error)) }
                for l in lookups { l.then(.failure(error)) }
                continue
            }
            checkpointer.committed()
            state.withLock { s in
                for (l, d) in zip(lookups, decisions) {
                    guard case .some(.none) = s.live[l.key] else { continue }
                    if case .success(.proceed) = d { s.live[l.key] = .some(l.claim) } else { s.live[l.key] = nil }
                }
            }
            for w in waiters { w(.success(())) }
            for (l, d) in zip(lookups, decisions) { l.then(d) }
        }
    }

    /// A claim or an outcome, written in place when the key's row exists. Not `INSERT OR REPLACE`: that
    /// deletes the row and inserts it again under a new rowid, so every outcome also rewrote the key's
    /// entry in the key index — a page at a random place in a large B-tree, written to the WAL and again
    /// by the checkpoint. In place, an outcome touches only its row (claimed moments ago, on a recent
    /// page) and the expiry index.
    private static func upsert(_ key: String, _ h: Held, _ db: Database) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO ledger (key, owner, digest, state, expires, answer) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, digest = excluded.digest, state = excluded.state,
                    expires = excluded.expires, answer = excluded.answer
                """)
            .execute(arguments: [key, h.owner, h.digest, h.state.rawValue, h.expires, h.answer.map { Data($0.bytes) }])
    }
}
