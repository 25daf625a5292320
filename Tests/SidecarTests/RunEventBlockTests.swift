import Foundation
import GRDB
import Policy
import Synchronization
import Testing
import Upstreams

@testable import Sidecar

/// The embedded store keeps a run's events in blocks (`RunEventBlock`): what a reader gets back must be
/// exactly the events appended, in order, from any point, across block boundaries, trims and restarts —
/// and a database written with one row per event (before blocks) is read the same.
@Suite("Runs: event blocks")
struct RunEventBlockTests {
    @Test func aBlockGivesBackWhatWasPutIn() {
        let events = [
            RunEvent(id: "7", type: "tool.call", at: 1_700_000_000_000, json: #"{"a":1}"#),
            RunEvent(id: "8", type: "run.status", at: -1, json: ""),
            RunEvent(id: "9", type: "é", at: Int64.max, json: String(repeating: "😀", count: 5000)),
        ]
        let block = RunEventBlock(events)
        #expect(block.first == 7 && block.last == 9 && block.count == 3)
        #expect(RunEventBlock.decode(Data(block.bytes)) == events)
        #expect(RunEventBlock.decode(Data()) == [])
        // Cut anywhere inside, it is not a block.
        for cut in [1, 8, 17, 20, block.bytes.count - 1] { #expect(RunEventBlock.decode(Data(block.bytes.prefix(cut))) == nil, "\(cut)") }
    }

    static func startedRun(_ store: EmbeddedRunStore) async throws -> Run {
        let run = RunStoreContract.created(try await store.create(RunStoreContract.newRun(), caller: "agt_a", clientToken: nil, digest: ""))!
        _ = try await store.apply(.start, to: run.id, reason: nil, now: 2)
        return run
    }

    /// Many events in one write (as under load) span blocks; every slice reads back exactly.
    @Test func aLongWriteReadsBackFromAnyPoint() async throws {
        let store = try EmbeddedRunStore(path: ":memory:")
        let run = try await Self.startedRun(store)
        let n = 3 * RunEventBlock.capacity + 17
        for i in 0..<n { _ = store.appendNow(run.id, agent: nil, type: "tool.call", json: "{\"i\":\(i)}", now: Int64(10 + i)) }
        try await store.persist()
        let all = try await store.events(run.id, after: nil, limit: 100_000)
        #expect(all.count == n + 2)  // created, started, then the calls
        for (a, b) in zip(all, all.dropFirst()) { #expect(Int64(b.id)! == Int64(a.id)! + 1) }
        #expect(all.last?.json == "{\"i\":\(n - 1)}")
        for after in [0, 1, 2, 3, 500, 514, 515, 1000, n, n + 1, n + 2, n + 50] {
            let slice = try await store.events(run.id, after: String(after), limit: 7)
            let expected = all.filter { Int64($0.id)! > Int64(after) }.prefix(7)
            #expect(slice == Array(expected), "after \(after)")
        }
        let blocks = try await store.db.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM run_event_blocks WHERE run_id = ?", arguments: [run.id]) }
        #expect((blocks ?? 0) >= 4, "cut into blocks of at most \(RunEventBlock.capacity)")
    }

    /// A call's event is written with nobody asking again, also when it lands just as the writer stops
    /// (`flushSoon` answers without the lock while the writer runs): bursts from two threads, each
    /// followed by a quiet gap around the writer's gather, so some land as it stops; every burst's
    /// events must be readable soon, with no later call to carry them.
    @Test func eventsAppendedAsTheWriterStopsAreWritten() async throws {
        let store = try EmbeddedRunStore(path: ":memory:")
        let run = try await Self.startedRun(store)
        var last = 2  // created, started
        for burst in 0..<120 {
            let n = 1 + burst % 5
            await withTaskGroup(of: Void.self) { g in
                for _ in 0..<2 {
                    g.addTask { for _ in 0..<n { _ = store.appendNow(run.id, agent: nil, type: "tool.call", json: "{}", now: 10) } }
                }
            }
            last += 2 * n
            let deadline = ContinuousClock.now + .seconds(3)
            while try await store.events(run.id, after: String(last - 1), limit: 1).isEmpty {
                guard ContinuousClock.now < deadline else {
                    Issue.record("burst \(burst): its events were left unwritten")
                    return
                }
                try await Task.sleep(for: .milliseconds(1))
            }
            try await Task.sleep(for: .microseconds(2_000 + (burst * 397) % 4_000))
        }
    }

    /// The narrow case of the test above, made to happen: an event appended after the writer's last look
    /// at the book, while `running` still says it runs.
    @Test func anEventAppendedAsTheWriterDecidesToStopIsWritten() async throws {
        let store = try EmbeddedRunStore(path: ":memory:")
        let run = try await Self.startedRun(store)
        let once = Mutex(true)
        store.stopping.withLock {
            $0 = EmbeddedRunStore.Hook {
                guard once.withLock({ f in defer { f = false }; return f }) else { return }
                _ = store.appendNow(run.id, agent: nil, type: "tool.call", json: #"{"late":true}"#, now: 10)
            }
        }
        _ = store.appendNow(run.id, agent: nil, type: "tool.call", json: "{}", now: 10)
        let deadline = ContinuousClock.now + .seconds(3)
        while try await store.events(run.id, after: "3", limit: 1).isEmpty {
            guard ContinuousClock.now < deadline else {
                Issue.record("the event appended as the writer stopped was left unwritten")
                return
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(try await store.events(run.id, after: "3", limit: 1).first?.json == #"{"late":true}"#)
    }

    /// The run store's WAL is checkpointed beside its writer (SQLite's own checkpoint is off), and
    /// restarted: 320 writes of 40 kB of events, which leave a WAL of 29 MB unchecked, leave one under 12 MB
    /// (6.5 MB measured: the checkpoint runs beside writes that come as fast as the disk takes them).
    @Test func theRunStoresWALIsCheckpointedAndReused() async throws {
        let path = NSTemporaryDirectory() + "runs-wal-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let store = try EmbeddedRunStore(path: path, maxEvents: 2_000)
        let run = try await Self.startedRun(store)
        let data = "{\"pad\":\"" + String(repeating: "x", count: 2_000) + "\"}"
        for _ in 0..<320 {
            for _ in 0..<20 { _ = store.appendNow(run.id, agent: nil, type: "tool.call", json: data, now: 10) }
            try await store.persist()
        }
        let wal = (try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int) ?? 0
        #expect(wal < 12_000_000, "WAL of \(wal) bytes after 13 MB of events")
        #expect(try await store.events(run.id, after: nil, limit: 5_000).count <= 2_001)
    }

    /// A trim that falls inside a block, in the same write as the events it trims.
    @Test func aTrimInsideOneWriteKeepsExactlyTheNewest() async throws {
        let store = try EmbeddedRunStore(path: ":memory:", maxEvents: 10)
        let run = try await Self.startedRun(store)
        for i in 0..<25 { _ = store.appendNow(run.id, agent: nil, type: "tool.call", json: "{\"i\":\(i)}", now: Int64(10 + i)) }
        try await store.persist()
        let events = try await store.events(run.id, after: nil, limit: 100)
        #expect(events.count <= 11)
        #expect(events.last?.json == "{\"i\":24}")
        guard let marker = events.last(where: { $0.type == "run.events_trimmed" }),
            case .string(let before)? = marker.data["trimmed_before"], let mark = Int64(before)
        else {
            Issue.record("no trim marker in \(events.map(\.type))")
            return
        }
        #expect(events.allSatisfy { Int64($0.id)! >= mark }, "an event older than the mark was kept")
        for (a, b) in zip(events, events.dropFirst()) { #expect(Int64(b.id)! == Int64(a.id)! + 1) }
    }

    /// A database from before blocks (one row per event) is converted when opened: the same events,
    /// and numbering goes on after the last.
    @Test func eventsStoredOneRowEachAreReadAfterTheUpgrade() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("runs-v1-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("runs.sqlite").path
        var id = ""
        do {
            // Made by the current store, then turned back into the old layout.
            let store = try EmbeddedRunStore(path: path)
            id = try await Self.startedRun(store).id
            try await store.persist()
            let run = id
            try await store.db.write { db in
                try db.execute(
                    sql: """
                        CREATE TABLE run_events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, at INTEGER NOT NULL,
                            data TEXT NOT NULL, PRIMARY KEY (run_id, seq));
                        DROP TABLE run_event_blocks;
                        DELETE FROM grdb_migrations WHERE identifier = 'v2-event-blocks';
                        """)
                for seq in 1...1200 {
                    try db.execute(
                        sql: "INSERT INTO run_events VALUES (?, ?, ?, ?, ?)",
                        arguments: [run, seq, seq == 1 ? "run.created" : "tool.call", 100 + seq, "{\"seq\":\(seq)}"])
                }
                try db.execute(sql: "INSERT INTO run_events VALUES ('run_other', 1, 'run.created', 1, '{}')")
            }
        }
        let reopened = try EmbeddedRunStore(path: path)
        let events = try await reopened.events(id, after: nil, limit: 5000)
        #expect(events.count == 1200)
        #expect(events.map(\.id) == (1...1200).map(String.init))
        #expect(events[41].json == "{\"seq\":42}" && events[41].at == 142 && events[41].type == "tool.call")
        #expect(try await reopened.events("run_other", after: nil, limit: 10).count == 1)
        let next = try await reopened.append(id, agent: nil, type: "tool.call", data: [:], now: 5)!
        #expect(next.id == "1201")
    }
}
