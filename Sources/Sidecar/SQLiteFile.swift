import GRDB
import NIOPosix
import Synchronization

/// The embedded stores' SQLite files that are written from many tasks (runs, the idempotency ledger):
/// a WAL pool (readers beside one writer), `synchronous=NORMAL` (a commit survives the process
/// crashing, not the machine losing power mid-write), a 5 s busy wait; `:memory:` for tests.
enum SQLiteFile {
    /// `autocheckpoint: false` leaves the WAL's checkpoints to a `WALCheckpointer`.
    static func open(_ path: String, autocheckpoint: Bool = true) throws -> any DatabaseWriter {
        var config = Configuration()
        config.busyMode = .timeout(5)
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            if !autocheckpoint { try db.execute(sql: "PRAGMA wal_autocheckpoint = 0") }
        }
        return path == ":memory:" ? try DatabaseQueue(configuration: config) : try DatabasePool(path: path, configuration: config)
    }
}

/// Checkpoints a WAL file mostly from a connection of its own, on a thread beside the writer's, so that the
/// writer's commits do not wait for the disk. SQLite's automatic checkpoint runs inside the commit that
/// takes the WAL past 1 000 pages, on the writer, and ends in `fdatasync`: every caller waiting for that
/// commit (a Gmail send waiting for its claim) waits for the disk too.
///
/// Here a passive checkpoint beside the writer copies and syncs the bulk without blocking it. It cannot
/// catch up on its own while commits go on, and the WAL only starts over from its beginning at a commit
/// after a checkpoint that did; so once it is done, the writer copies the few pages committed meanwhile
/// itself (a short sync), and its next commit restarts the WAL.
final class WALCheckpointer: Sendable {
    private enum Step { case none, background, catchUp }
    /// Where the background checkpoint is: none, running, or done and waiting for the writer to catch up.
    private enum Phase { case idle, running, done }
    private let writer: any DatabaseWriter
    private let own: DatabaseQueue?
    private let threads: NIOThreadPool
    /// Whether `threads` was made here (and is shut down with the checkpointer).
    private let ownsThreads: Bool
    private let every: Int
    private let state = Mutex((commits: 0, phase: Phase.idle))

    /// `threads`: where the background checkpoint runs (not the writer's thread while it is busy); nil: a
    /// thread of its own, started here and stopped with the checkpointer. `every`: commits between
    /// checkpoints (a commit of the idempotency ledger appends a few pages).
    init(path: String, writer: any DatabaseWriter, threads: NIOThreadPool? = nil, every: Int = 256) throws {
        var config = Configuration()
        config.busyMode = .timeout(5)
        config.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        own = path == ":memory:" ? nil : try DatabaseQueue(path: path, configuration: config)
        self.writer = writer
        ownsThreads = threads == nil
        self.threads = threads ?? NIOThreadPool(numberOfThreads: 1)
        if ownsThreads { self.threads.start() }
        self.every = every
    }

    deinit { if ownsThreads { threads.shutdownGracefully { _ in } } }

    /// Whether a background checkpoint is under way (tests).
    var running: Bool { state.withLock { $0.phase == .running } }

    /// Called by the writer after each commit, on its thread: every `every` commits starts a background
    /// checkpoint; the commit after one finished catches up.
    func committed() {
        guard let own else { return }
        let step = state.withLock { s -> Step in
            if s.phase == .done {
                s.phase = .idle
                return .catchUp
            }
            s.commits += 1
            guard s.commits >= every, s.phase == .idle else { return .none }
            s.commits = 0
            s.phase = .running
            return .background
        }
        switch step {
        case .none: break
        case .catchUp:
            // A failed checkpoint is tried again at the next turn; the WAL only grows meanwhile.
            _ = try? writer.writeWithoutTransaction { try $0.checkpoint(.passive) }
        case .background:
            threads.submit { _ in
                _ = try? own.writeWithoutTransaction { try $0.checkpoint(.passive) }
                self.state.withLock { $0.phase = .done }
            }
        }
    }
}
