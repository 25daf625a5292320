import Foundation
import GRDB
import Policy
import Synchronization
import Upstreams

/// Runs on one host: decided in memory (`RunBook`, under one lock) and written to SQLite in batches —
/// runs, their events and ledgers survive a restart, so an SSE client resumes after the sidecar
/// restarted and misses nothing.
///
/// An event is readable (`events`) and announced to streams (`onDurable`) only once it is written, so a
/// client never sees an event that a crash could take back and number again. Writes are grouped: each
/// write takes everything changed so far, inside the writer's serial queue (so batches land in the order
/// they were taken). SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives the process
/// crashing, not the machine losing power mid-write.
final class EmbeddedRunStore: RunStore {
    let db: any DatabaseWriter
    private let book: Mutex<RunBook>
    /// Told which runs have new events once they are written. (A closure inside a struct: a bare closure
    /// in a `Mutex` is reabstracted on every `withLock` and written back wrapped in one more thunk, so
    /// each read would make the next call slower.)
    private struct Listener: Sendable {
        let wake: @Sendable ([String]) -> Void
    }

    private let listener = Mutex<Listener?>(nil)
    private static let encoder = JSONEncoder()
    private static let decoder = JSONDecoder()
    /// Finished runs kept in memory beyond the active ones.
    private let memoryLimit = 10_000

    init(path: String, maxEvents: Int = 10_000) throws {
        db = try SQLiteFile.open(path, autocheckpoint: false)
        checkpointer = try WALCheckpointer(path: path, writer: db, every: Self.checkpointEvery)
        book = Mutex(RunBook(maxEvents: maxEvents))
        var m = DatabaseMigrator()
        m.registerMigration("v1-runs") { db in
            try db.execute(
                sql: """
                    CREATE TABLE runs (id TEXT PRIMARY KEY, agent TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
                        ended_at INTEGER, doc TEXT NOT NULL, state TEXT NOT NULL);
                    CREATE INDEX runs_by_created ON runs(created_at DESC, id DESC);
                    CREATE TABLE run_events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, at INTEGER NOT NULL,
                        data TEXT NOT NULL, PRIMARY KEY (run_id, seq));
                    CREATE TABLE run_keys (key TEXT PRIMARY KEY, run_id TEXT NOT NULL, digest TEXT NOT NULL, created_at INTEGER NOT NULL);
                    """)
        }
        m.registerMigration("v2-event-blocks") { db in
            try db.execute(
                sql: """
                    CREATE TABLE run_event_blocks (run_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
                        n INTEGER NOT NULL, events BLOB NOT NULL, PRIMARY KEY (run_id, last_seq));
                    """)
            // Events stored a row each (v1) become blocks, run by run.
            let rows = try Row.fetchCursor(db, sql: "SELECT run_id, seq, type, at, data FROM run_events ORDER BY run_id, seq")
            var run: String?
            var block = RunEventBlock()
            while let row = try rows.next() {
                let id: String = row["run_id"]
                if id != run || block.isFull {
                    if let run { try Self.write(db, run: run, block) }
                    run = id
                    block = RunEventBlock()
                }
                block.append(RunEvent(id: String(row["seq"] as Int64), type: row["type"], at: row["at"], json: row["data"]))
            }
            if let run { try Self.write(db, run: run, block) }
            try db.execute(sql: "DROP TABLE run_events")
        }
        try m.migrate(db)
        // Every unfinished run is kept in memory (the sweep of `max_duration` and the active count see them).
        let active: [(Run, Int64, Int)] = try db.read { db in
            try Row.fetchAll(db, sql: "SELECT doc, state FROM runs WHERE status IN ('created','running','paused')").map { row in
                let run = try Self.decode(row)
                let (last, n) = try Self.numbering(db, run: run.id)
                return (run, last, n)
            }
        }
        book.withLock { b in for (run, last, n) in active { b.insert(run, lastSeq: last, events: n) } }
    }

    /// A run's last event number and how many events it has stored.
    private static func numbering(_ db: Database, run id: String) throws -> (last: Int64, count: Int) {
        let row = try Row.fetchOne(db, sql: "SELECT MAX(last_seq) AS last, SUM(n) AS n FROM run_event_blocks WHERE run_id = ?", arguments: [id])
        return ((row?["last"] as Int64?) ?? 0, (row?["n"] as Int?) ?? 0)
    }

    func onDurable(_ body: @escaping @Sendable ([String]) -> Void) { listener.withLock { $0 = Listener(wake: body) } }

    // MARK: Storage

    /// A run from its row: the description written once at creation (`doc`, with its `input` of up to
    /// 64 KiB), and the state that changes with every call (`state`: status, times, ledger) — only the
    /// latter is written again.
    private static func decode(_ row: Row) throws -> Run {
        var run = try decoder.decode(Run.self, from: Data((row["doc"] as String).utf8))
        try decoder.decode(RunState.self, from: Data((row["state"] as String).utf8)).apply(to: &run)
        return run
    }

    private static func state(_ run: Run) throws -> String { String(decoding: try encoder.encode(RunState(run)), as: UTF8.self) }

    private static func insert(_ db: Database, _ run: Run) throws {
        try db.execute(
            sql: "INSERT INTO runs (id, agent, status, created_at, ended_at, doc, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
            arguments: [
                run.id, run.agent, run.status.rawValue, run.createdAt, run.endedAt, String(decoding: try encoder.encode(run), as: UTF8.self),
                try state(run),
            ])
    }

    private static func update(_ db: Database, _ run: Run) throws {
        // Cached statements: compiled once per connection, not once per row (a batch writes many).
        try db.cachedStatement(sql: "UPDATE runs SET agent = ?, status = ?, ended_at = ?, state = ? WHERE id = ?")
            .execute(arguments: [run.agent, run.status.rawValue, run.endedAt, try state(run), run.id])
    }

    private static func write(_ db: Database, run id: String, _ block: RunEventBlock) throws {
        guard block.count > 0 else { return }
        try db.cachedStatement(sql: "INSERT OR REPLACE INTO run_event_blocks (run_id, first_seq, last_seq, n, events) VALUES (?, ?, ?, ?, ?)")
            .execute(arguments: [id, block.first, block.last, block.count, Data(block.bytes)])
    }

    /// Forgets a run's events numbered below `before` (the trim of `max_events`): whole blocks go, and
    /// the block that straddles the mark is written again without its older events.
    private static func trim(_ db: Database, run id: String, before: Int64) throws {
        try db.execute(sql: "DELETE FROM run_event_blocks WHERE run_id = ? AND last_seq < ?", arguments: [id, before])
        let straddling = try Row.fetchAll(
            db, sql: "SELECT last_seq, events FROM run_event_blocks WHERE run_id = ? AND first_seq < ?", arguments: [id, before])
        for row in straddling {
            guard let kept = RunEventBlock.decode(row["events"], after: before - 1).map(RunEventBlock.init) else { continue }
            try db.execute(sql: "DELETE FROM run_event_blocks WHERE run_id = ? AND last_seq = ?", arguments: [id, row["last_seq"] as Int64])
            try write(db, run: id, kept)
        }
    }

    /// Group commit: callers that need their changes written wait for the next write, which takes
    /// everything changed so far; while one write runs, the next callers gather for the one after it. So
    /// under load one transaction carries many calls' events, and an idle store writes at once.
    private let waiters = Mutex<[CheckedContinuation<Void, Never>]>([])
    /// Whether the writer runs. An atomic, not a field under `waiters`' lock: every call of a run ends in
    /// `flushSoon`, from both event loops, and while the writer runs (always, under load) one read answers
    /// it without a lock they would share. The writer clears it before it looks at the book one last
    /// time (`writeBatches`), so a change made just as it stops is seen by one of the two.
    private let running = Atomic<Bool>(false)
    private let checkpointer: WALCheckpointer
    /// Tests: runs as the writer decides to stop, after its last look at the book (the moment a change
    /// whose `flushSoon` still sees `running` set must not be left behind).
    struct Hook: Sendable { let run: @Sendable () -> Void }
    let stopping = Mutex<Hook?>(nil)
    /// How long events and ledger changes nobody waits for are gathered before a write: a few
    /// milliseconds on an event's way to its streams, for far fewer transactions under load.
    static let gather: Duration = .milliseconds(4)
    /// The gather once a write has carried `busyWrite` events or more: under a load of thousands of run
    /// calls a second, a transaction's fixed pages (the run's row, the blocks' B-tree) and the writer's
    /// wake-ups are shared by four times as many events, for events at most ~16 ms later on their streams.
    static let busyGather: Duration = .milliseconds(16)
    static let busyWrite = 64
    /// Writes between two checkpoints of the WAL, which run beside the writer (`WALCheckpointer`): with
    /// SQLite's own, the write that took the WAL past 1 000 pages copied them to the database and waited
    /// for the disk, and every call of a run waited behind it once the backlog filled. Under load (a
    /// write per 16 ms) about a second of events.
    static let checkpointEvery = 64
    /// Events waiting to be written past which calls of runs wait for the writer (`reserve`) instead of
    /// being admitted at once (`reserveNow`): without it a writer slower than the calls (SQLite sharing two
    /// cores with the proxy at 25 000 run calls/s) let the backlog grow by gigabytes.
    static let maxBacklog = 8_192

    /// Returns once everything changed before the call has been written (or the write failed: the next
    /// one takes it again).
    func durable() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            // Under the lock the writer's last look holds: it sees this waiter, or has stopped already.
            let start = waiters.withLock { w -> Bool in
                w.append(cont)
                return startWriter()
            }
            if start { Task { await self.writeBatches() } }
        }
    }

    /// Starts a write of what has changed, unless one is running (which is followed by another).
    func flushSoon() {
        if running.load(ordering: .sequentiallyConsistent) { return }
        if startWriter() { Task { await self.writeBatches() } }
    }

    /// Marks the writer running; true when it was not (the caller starts it).
    private func startWriter() -> Bool {
        running.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
    }

    private func writeBatches() async {
        var again = true
        var busy = false
        while again {
            // Nobody waiting (calls' events and ledgers): gather a few milliseconds' worth into one
            // transaction (longer while writes are large). An API change someone waits for is written at once.
            if waiters.withLock({ $0.isEmpty }) { try? await Task.sleep(for: busy ? Self.busyGather : Self.gather) }
            let waiting = waiters.withLock { w in
                defer { w.removeAll() }
                return w
            }
            busy = ((try? await persist()) ?? 0) >= Self.busyWrite
            for w in waiting { w.resume() }
            again = waiters.withLock { w in
                if w.isEmpty, !book.withLock({ $0.hasPending }) {
                    stopping.withLock { $0 }?.run()
                    running.store(false, ordering: .sequentiallyConsistent)
                    return false
                }
                return true
            }
        }
        // A change made after the look above whose `flushSoon` still saw `running` set: written now.
        if book.withLock({ $0.hasPending }) { flushSoon() }
    }

    /// Writes everything changed so far; announces the runs that got events. Returns how many events it wrote.
    @discardableResult
    func persist() async throws -> Int {
        let taken = Taken()
        let announced: [String]
        do {
            announced = try await writeBatch(taken)
        } catch {
            // Not written (disk full, I/O error): what was taken goes back, ahead of what came since.
            if let batch = taken.batch.withLock({ $0 }) { book.withLock { $0.restore(batch) } }
            throw error
        }
        book.withLock { $0.evict(keeping: memoryLimit) }
        if !announced.isEmpty, let listener = listener.withLock({ $0 }) { listener.wake(announced) }
        return taken.batch.withLock { $0?.events.count ?? 0 }
    }

    /// What a write took from the book, so a failed write can give it back.
    private final class Taken: Sendable {
        let batch = Mutex<RunBook.Pending?>(nil)
    }

    /// One transaction: takes what changed, inside the writer's serial queue (so batches land in the
    /// order they were taken), and writes it.
    private func writeBatch(_ taken: Taken) async throws -> [String] {
        defer { checkpointer.committed() }
        return try await db.write { db in
            let batch = self.book.withLock { $0.take() }
            taken.batch.withLock { $0 = batch }
            guard !batch.isEmpty else { return [] }
            for run in batch.runs { try Self.update(db, run) }
            // Each run's events of this write as blocks: one row per run (per `capacity` events).
            var blocks: [String: RunEventBlock] = [:]
            for (run, event) in batch.events {
                if blocks[run]?.isFull == true { try Self.write(db, run: run, blocks.removeValue(forKey: run)!) }
                blocks[run, default: RunEventBlock()].append(event)
            }
            for (run, block) in blocks { try Self.write(db, run: run, block) }
            // After the events: a trim can name events of this same write.
            for (run, before) in batch.trims { try Self.trim(db, run: run, before: before) }
            return Array(blocks.keys)
        }
    }

    /// Brings runs into memory from SQLite (with their event numbering).
    private func load(_ ids: [String]) async throws {
        let missing = book.withLock { $0.missing(ids) }
        guard !missing.isEmpty else { return }
        let loaded: [(Run, Int64, Int)] = try await db.read { db in
            try missing.compactMap { id in
                guard let stored = try Row.fetchOne(db, sql: "SELECT doc, state FROM runs WHERE id = ?", arguments: [id]) else { return nil }
                let (last, n) = try Self.numbering(db, run: id)
                return (try Self.decode(stored), last, n)
            }
        }
        book.withLock { b in for (run, last, n) in loaded { b.insert(run, lastSeq: last, events: n) } }
    }

    // MARK: RunStore

    func create(_ run: Run, caller: String, clientToken: String?, digest: String) async throws -> RunCreation {
        let created = Run.createdEvent(run)
        let event = RunEvent(id: "1", type: created.type, at: run.createdAt, data: created.data)
        let creation: RunCreation = try await db.write { db in
            if let clientToken {
                let key = RunKeys.idempotency(caller: caller, clientToken: clientToken)
                try db.execute(sql: "DELETE FROM run_keys WHERE created_at < ?", arguments: [run.createdAt - RunKeys.window])
                if let row = try Row.fetchOne(db, sql: "SELECT run_id, digest FROM run_keys WHERE key = ?", arguments: [key]) {
                    guard row["digest"] as String == digest else { return .conflict }
                    if let stored = try Row.fetchOne(db, sql: "SELECT doc, state FROM runs WHERE id = ?", arguments: [row["run_id"] as String]) {
                        return .existing(try Self.decode(stored))
                    }
                }
                try db.execute(
                    sql: "INSERT OR REPLACE INTO run_keys (key, run_id, digest, created_at) VALUES (?, ?, ?, ?)",
                    arguments: [key, run.id, digest, run.createdAt])
            }
            try Self.insert(db, run)
            try Self.write(db, run: run.id, RunEventBlock([event]))
            return .created(run)
        }
        if case .existing(let existing) = creation {
            // The stored copy may be behind the one in memory (ledger, status).
            try await load([existing.id])
            return .existing(book.withLock { $0.runs[existing.id] } ?? existing)
        }
        if case .created = creation {
            book.withLock { $0.insert(run, lastSeq: 1, events: 1) }
            listener.withLock { $0 }?.wake([run.id])
        }
        return creation
    }

    func previous(caller: String, clientToken: String, digest: String, now: Int64) async throws -> RunCreation? {
        let key = RunKeys.idempotency(caller: caller, clientToken: clientToken)
        let found: (id: String, digest: String)? = try await db.read { db in
            try Row.fetchOne(
                db, sql: "SELECT run_id, digest FROM run_keys WHERE key = ? AND created_at >= ?", arguments: [key, now - RunKeys.window]
            ).map { ($0["run_id"], $0["digest"]) }
        }
        guard let found else { return nil }
        guard found.digest == digest else { return .conflict }
        return try await run(found.id).map { .existing($0) }
    }

    func run(_ id: String) async throws -> Run? {
        try await load([id])
        return book.withLock { $0.runs[id] }
    }

    func list(status: RunStatus?, agent: String?, cursor: String?, limit: Int) async throws -> (runs: [Run], next: String?) {
        try await persist()
        return try await db.read { db in
            var sql = "SELECT doc, state FROM runs WHERE 1=1"
            var args: [(any DatabaseValueConvertible)?] = []
            if let status {
                sql += " AND status = ?"
                args.append(status.rawValue)
            }
            if let agent {
                sql += " AND agent = ?"
                args.append(agent)
            }
            if let cursor, let at = try Int64.fetchOne(db, sql: "SELECT created_at FROM runs WHERE id = ?", arguments: [cursor]) {
                sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                args += [at, at, cursor]
            }
            sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
            args.append(limit + 1)
            var runs = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Self.decode)
            let next = runs.count > limit ? runs[limit - 1].id : nil
            if runs.count > limit { runs.removeLast(runs.count - limit) }
            return (runs, next)
        }
    }

    func apply(_ command: RunStatus.Command, to id: String, reason: String?, now: Int64) async throws -> Result<Run, RunStatus.Refusal>? {
        try await load([id])
        let result = book.withLock { $0.apply(command, to: id, reason: reason, now: now) }
        await durable()
        return result
    }

    func reserve(_ id: String, agent: String, charge: RunCharge, now: Int64) async throws -> RunReservation {
        // Back-pressure: while more events wait for the disk than it writes in a moment, calls of runs
        // are admitted only as writes complete, so memory holds a bounded backlog however fast agents call.
        // One wait per call: a write that fails puts its batch back, and a call must not wait on a broken
        // disk for ever (the writer keeps trying).
        if book.withLock({ $0.backlog >= Self.maxBacklog }) { await durable() }
        if let decided = book.withLock({ $0.reserveIfLoaded(id, agent: agent, charge: charge, now: now) }) {
            if case .expired = decided { await durable() }
            return decided
        }
        try await load([id])
        guard let chain = book.withLock({ $0.runs[id]?.chain }) else { return .unknown }
        try await load(chain)
        let decided = book.withLock { $0.reserve(id, agent: agent, charge: charge, now: now) }
        if case .expired = decided { await durable() }
        return decided
    }

    func settle(chain: [String], reserved: RunLedger, actual: RunLedger) async throws {
        if !book.withLock({ $0.hasAll(chain) }) { try await load(chain) }
        book.withLock { $0.settle(chain: chain, reserved: reserved, actual: actual) }
    }

    func append(_ id: String, agent: String?, type: String, json: String, now: Int64) async throws -> RunEvent? {
        try await load([id])
        let event = book.withLock { $0.append(id, agent: agent, type: type, json: json, now: now) ?? nil }
        guard event != nil else { return nil }
        await durable()
        return event
    }

    func events(_ id: String, after: String?, limit: Int) async throws -> [RunEvent] {
        let from = after.flatMap { Int64($0) } ?? 0
        return try await db.read { db in
            var out: [RunEvent] = []
            let rows = try Row.fetchCursor(
                db, sql: "SELECT events FROM run_event_blocks WHERE run_id = ? AND last_seq > ? ORDER BY last_seq", arguments: [id, from])
            while out.count < limit, let row = try rows.next() {
                guard let events = RunEventBlock.decode(row["events"], after: from) else {
                    throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "a stored block of run \(id)'s events cannot be read")
                }
                out += events.prefix(limit - out.count)
            }
            return out
        }
    }

    func validEventID(_ id: String) -> Bool { !id.isEmpty && id.utf8.count <= 19 && id.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }

    func purge(endedBefore cutoff: Int64) async throws -> Int {
        try await persist()
        let ids: [String] = try await db.write { db in
            let ids = try String.fetchAll(
                db, sql: "SELECT id FROM runs WHERE status IN ('completed','failed','cancelled') AND ended_at < ?", arguments: [cutoff])
            for id in ids {
                try db.execute(sql: "DELETE FROM run_event_blocks WHERE run_id = ?", arguments: [id])
                try db.execute(sql: "DELETE FROM run_keys WHERE run_id = ?", arguments: [id])
                try db.execute(sql: "DELETE FROM runs WHERE id = ?", arguments: [id])
            }
            return ids
        }
        book.withLock { $0.forget(ids) }
        return ids.count
    }

    // MARK: At once (the request's event loop: no task, no wait)

    /// The reservation, when the run and its ancestors are in memory (nil: use `reserve`, which loads).
    func reserveNow(_ id: String, agent: String, charge: RunCharge, now: Int64) -> RunReservation? {
        let decided = book.withLock { b -> RunReservation? in
            guard b.backlog < Self.maxBacklog else { return nil }
            return b.reserveIfLoaded(id, agent: agent, charge: charge, now: now)
        }
        if case .expired? = decided { flushSoon() }
        return decided
    }

    /// false when a run of `chain` is not in memory (use `settle`).
    func settleNow(chain: [String], reserved: RunLedger, actual: RunLedger) -> Bool {
        finishNow(settle: (chain, reserved, actual), event: nil, now: 0) != nil
    }

    /// The event, written soon (readable and announced once written); `.some(nil)` when the run is not
    /// `agent`'s; nil when it is not in memory (use `append`).
    func appendNow(_ id: String, agent: String?, type: String, json: String, now: Int64) -> RunEvent?? {
        finishNow(settle: nil, event: (id, agent, type, json), now: now) ?? nil
    }

    /// The end of a call of a run in one step under the lock (the lock is shared by every loop: taken
    /// once per call's end, not once to settle and again to append). nil when a run of `settle`'s chain
    /// is not in memory: nothing was done (use `settle` and `append`). Else settled, and `event` as
    /// `appendNow` answers it (`.some(nil)` when no event was asked for).
    func finishNow(
        settle: (chain: [String], reserved: RunLedger, actual: RunLedger)?, event: (id: String, agent: String?, type: String, json: String)?,
        now: Int64
    ) -> RunEvent??? {
        let done = book.withLock { b -> RunEvent??? in
            if let settle, !b.settleIfLoaded(chain: settle.chain, reserved: settle.reserved, actual: settle.actual) { return nil }
            guard let event else { return .some(.some(nil)) }
            return .some(b.append(event.id, agent: event.agent, type: event.type, json: event.json, now: now))
        }
        if case .some(.some(.some)) = done { flushSoon() }
        return done
    }

    /// A command, written soon; nil when the run is not in memory (use `apply`).
    func applyNow(_ command: RunStatus.Command, to id: String, reason: String?, now: Int64) -> Result<Run, RunStatus.Refusal>? {
        let result = book.withLock { $0.apply(command, to: id, reason: reason, now: now) }
        if result != nil { flushSoon() }
        return result
    }

    func expired(now: Int64) async throws -> [String] { book.withLock { $0.expired(now: now) } }

    func activeCount() async throws -> Int { book.withLock { $0.activeCount } }
    func openCount(agent: String, cap: Int) async throws -> Int { book.withLock { $0.openCount(agent: agent) } }

    /// Writes the ledgers of calls that settled without an event since (every second until shutdown).
    func runFlusher() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            flushSoon()
        }
        await Task { await self.durable() }.value
    }
}

/// Key names shared by both stores.
enum RunKeys {
    /// How long a `client_token` names its run.
    static let window: Int64 = 86_400_000

    /// The idempotency key of (`caller`, `clientToken`): a digest, so neither needs escaping, and one
    /// caller's key can never name another caller's run.
    static func idempotency(caller: String, clientToken: String) -> String {
        Digest.sha256Hex([caller, clientToken])
    }
}
