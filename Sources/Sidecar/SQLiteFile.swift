import GRDB

/// The embedded stores' SQLite files that are written from many tasks (runs, the idempotency ledger):
/// a WAL pool (readers beside one writer), `synchronous=NORMAL` (a commit survives the process
/// crashing, not the machine losing power mid-write), a 5 s busy wait; `:memory:` for tests.
enum SQLiteFile {
    static func open(_ path: String) throws -> any DatabaseWriter {
        var config = Configuration()
        config.busyMode = .timeout(5)
        config.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        return path == ":memory:" ? try DatabaseQueue(configuration: config) : try DatabasePool(path: path, configuration: config)
    }
}
