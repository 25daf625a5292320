import Foundation
import GRDB
import NIOPosix
import Synchronization
import Testing

@testable import Sidecar

/// The exactly-once ledger: the rule (pure, table-tested) and the one contract both stores keep.
@Suite struct IdempotencyTests {
    static let answer = StoredAnswer(status: 200, headers: [["Content-Type", "application/json"]], body: Data(#"{"id":"m1"}"#.utf8))

    @Test(arguments: [
        (nil, "d1", IdempotencyDecision.proceed),
        (LedgerEntry.inFlight(digest: "d1"), "d1", .inFlight),
        (.completed(digest: "d1", answer), "d1", .replay(answer)),
        (.unknown(digest: "d1"), "d1", .outcomeUnknown),
        (.inFlight(digest: "d1"), "d2", .conflict),
        (.completed(digest: "d1", answer), "d2", .conflict),
        (.unknown(digest: "d1"), "d2", .conflict),
    ] as [(LedgerEntry?, String, IdempotencyDecision)])
    func theRule(existing: LedgerEntry?, digest: String, expected: IdempotencyDecision) {
        #expect(IdempotencyDecision.decide(existing, digest: digest) == expected)
    }

    @Test func keysSeparateAgentsRunsAndTheAgentsOwnKey() {
        let base = IdempotencyKey.make(agent: "a", run: nil, clientKey: nil, digest: "d")
        #expect(base == IdempotencyKey.make(agent: "a", run: nil, clientKey: nil, digest: "d"))
        #expect(base != IdempotencyKey.make(agent: "b", run: nil, clientKey: nil, digest: "d"))
        #expect(base != IdempotencyKey.make(agent: "a", run: "run_1", clientKey: nil, digest: "d"))
        #expect(base != IdempotencyKey.make(agent: "a", run: nil, clientKey: "d", digest: "d"))
        // With the agent's key, the digest is checked, not keyed on.
        #expect(IdempotencyKey.make(agent: "a", run: nil, clientKey: "k", digest: "d1") == IdempotencyKey.make(agent: "a", run: nil, clientKey: "k", digest: "d2"))
    }

    /// The contract: one claim wins; the outcome decides what the next identical call gets.
    static func contract(_ store: any IdempotencyStore, advance: @Sendable (Int64) -> Void) async throws {
        let window = Duration.seconds(60)
        #expect(try await store.begin(key: "k1", digest: "d", owner: "o1", inFlight: .seconds(5)) == .proceed)
        #expect(try await store.begin(key: "k1", digest: "d", owner: "o2", inFlight: .seconds(5)) == .inFlight)
        #expect(try await store.begin(key: "k1", digest: "x", owner: "o2", inFlight: .seconds(5)) == .conflict)
        // Another owner cannot finish it.
        try await store.finish(key: "k1", owner: "o2", outcome: .released, window: window)
        #expect(try await store.begin(key: "k1", digest: "d", owner: "o3", inFlight: .seconds(5)) == .inFlight)
        try await store.finish(key: "k1", owner: "o1", outcome: .completed(answer), window: window)
        #expect(try await store.begin(key: "k1", digest: "d", owner: "o3", inFlight: .seconds(5)) == .replay(answer))
        // Released: free again.
        #expect(try await store.begin(key: "k2", digest: "d", owner: "o1", inFlight: .seconds(5)) == .proceed)
        try await store.finish(key: "k2", owner: "o1", outcome: .released, window: window)
        #expect(try await store.begin(key: "k2", digest: "d", owner: "o2", inFlight: .seconds(5)) == .proceed)
        // Unknown: refused for the window.
        try await store.finish(key: "k2", owner: "o2", outcome: .unknown, window: window)
        #expect(try await store.begin(key: "k2", digest: "d", owner: "o3", inFlight: .seconds(5)) == .outcomeUnknown)
        // An owner that died frees its key after `in_flight`.
        #expect(try await store.begin(key: "k3", digest: "d", owner: "o1", inFlight: .milliseconds(200)) == .proceed)
        advance(300)
        #expect(try await store.begin(key: "k3", digest: "d", owner: "o2", inFlight: .seconds(5)) == .proceed)
        // Concurrent identical claims: exactly one proceeds.
        let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<16 {
                group.addTask { try await store.begin(key: "k4", digest: "d", owner: "c\(i)", inFlight: .seconds(5)) == .proceed }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(wins == 1)
    }

    /// The embedded ledger's answer form reads back exactly, reads the JSON rows earlier versions wrote,
    /// and refuses anything cut short or of another version rather than replay a wrong answer.
    @Test func storedAnswersRoundTripTheirBytes() throws {
        let answers = [
            StoredAnswer(status: 200, headers: [["Content-Type", "application/json"], ["ETag", "\"x\""]], body: Data(#"{"id":"m1"}"#.utf8)),
            StoredAnswer(status: 201, headers: [], body: nil),
            StoredAnswer(status: 204, headers: [["Location", "https://é.example/ü"]], body: Data()),
        ]
        for answer in answers {
            let bytes = answer.bytes
            #expect(StoredAnswer(bytes: Data(bytes)) == answer)
            #expect(StoredAnswer(bytes: try JSONEncoder().encode(answer)) == answer)
            for cut in 0..<bytes.count { #expect(StoredAnswer(bytes: Data(bytes[..<cut])) == nil, "cut at \(cut)") }
            #expect(StoredAnswer(bytes: Data(bytes + [0])) == nil)
            #expect(StoredAnswer(bytes: Data([2] + bytes.dropFirst())) == nil)
        }
    }

    @Test func embeddedStoreKeepsTheContract() async throws {
        let clock = Atomic<Int64>(1_000_000)
        let store = try EmbeddedIdempotencyStore(path: ":memory:", now: { clock.load(ordering: .relaxed) })
        try await Self.contract(store) { clock.add($0, ordering: .relaxed) }
    }

    /// The file is the ledger between processes: a second store on the same file (a restarted sidecar)
    /// reads what the first claimed and kept, through the writer's transaction.
    @Test func keysThisProcessDoesNotHoldAreReadFromTheFile() async throws {
        let path = NSTemporaryDirectory() + "ledger-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let first = try EmbeddedIdempotencyStore(path: path, now: { 1_000_000 })
        #expect(try await first.begin(key: "kept", digest: "d", owner: "o1", inFlight: .seconds(5)) == .proceed)
        try await first.finish(key: "kept", owner: "o1", outcome: .completed(Self.answer), window: .seconds(60))
        #expect(try await first.begin(key: "flying", digest: "d", owner: "o1", inFlight: .seconds(5)) == .proceed)
        #expect(try await first.begin(key: "lost", digest: "d", owner: "o1", inFlight: .seconds(5)) == .proceed)
        try await first.finish(key: "lost", owner: "o1", outcome: .unknown, window: .seconds(60))

        let second = try EmbeddedIdempotencyStore(path: path, now: { 1_000_000 })
        #expect(try await second.begin(key: "kept", digest: "d", owner: "o2", inFlight: .seconds(5)) == .replay(Self.answer))
        #expect(try await second.begin(key: "kept", digest: "other", owner: "o2", inFlight: .seconds(5)) == .conflict)
        #expect(try await second.begin(key: "flying", digest: "d", owner: "o2", inFlight: .seconds(5)) == .inFlight)
        #expect(try await second.begin(key: "lost", digest: "d", owner: "o2", inFlight: .seconds(5)) == .outcomeUnknown)
        #expect(try await second.begin(key: "new", digest: "d", owner: "o2", inFlight: .seconds(5)) == .proceed)
        // What the second claimed, the first now sees (it holds nothing for the key, so it reads).
        #expect(try await first.begin(key: "new", digest: "d", owner: "o3", inFlight: .seconds(5)) == .inFlight)
    }

    /// Lookups and writes share the writer's transaction: a row that cannot be read fails only the call
    /// that asked for it, and every other call of the same batch is decided.
    @Test func anUnreadableRowFailsOnlyItsOwnCall() async throws {
        let path = NSTemporaryDirectory() + "ledger-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let store = try EmbeddedIdempotencyStore(path: path, now: { 1_000_000 })
        try await DatabaseQueue(path: path).write { db in
            try db.execute(
                sql: "INSERT INTO ledger (key, owner, digest, state, expires, answer) VALUES ('bad', 'o', 'd', 'd', 9999999999, x'0203')")
        }
        let results = await withTaskGroup(of: (String, Result<IdempotencyDecision, any Error>).self) { group in
            for key in ["bad"] + (0..<40).map({ "k\($0)" }) {
                group.addTask {
                    do { return (key, .success(try await store.begin(key: key, digest: "d", owner: "o", inFlight: .seconds(5)))) } catch {
                        return (key, .failure(error))
                    }
                }
            }
            return await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        #expect((try? results["bad"]?.get()) == nil)
        for i in 0..<40 { #expect(try results["k\(i)"]?.get() == .proceed) }
        // The failed lookup holds nothing: the key is read again next time (and fails again, never proceeds).
        await #expect(throws: (any Error).self) { try await store.begin(key: "bad", digest: "d", owner: "o", inFlight: .seconds(5)) }
    }

    /// The writer never checkpoints (that would make callers wait for `fdatasync`); the checkpointer
    /// beside it keeps the WAL from growing with every commit: 10 rounds of 200 commits, each round
    /// given the time to finish its background checkpoint, and the WAL is reused instead of growing by
    /// a round's worth each time (without the writer's catch-up it was never restarted: 39.7 MB after
    /// 3 000 ledger commits).
    @Test func theWALIsReusedThoughTheWriterNeverCheckpoints() async throws {
        let path = NSTemporaryDirectory() + "wal-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let db = try SQLiteFile.open(path, autocheckpoint: false)
        try await db.write { try $0.execute(sql: "CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)") }
        let threads = NIOThreadPool(numberOfThreads: 2)
        threads.start()
        defer { threads.shutdownGracefully { _ in } }
        let checkpointer = try WALCheckpointer(path: path, writer: db, threads: threads, every: 50)
        func walSize() -> Int { (try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int) ?? 0 }
        var sizes: [Int] = []
        for round in 0..<10 {
            for i in 0..<200 {
                try await db.write { try $0.execute(sql: "INSERT INTO t VALUES (?, zeroblob(3000))", arguments: ["\(round)-\(i)"]) }
                checkpointer.committed()
            }
            for _ in 0..<500 where checkpointer.running { try await Task.sleep(for: .milliseconds(10)) }
            sizes.append(walSize())
        }
        // A round appends ~3.3 MB of frames (200 rows of 3 kB, each with its index entry): the WAL restarts
        // after every round's checkpoint, so it never holds much more than two rounds; without reuse ten
        // rounds leave ~33 MB.
        #expect(sizes.max()! <= 12_000_000, "WAL sizes by round: \(sizes)")
    }

    @Test(.enabled(if: RedisServer.available)) func redisStoreKeepsTheContract() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let client = RedisTests.client(server, scripts: RedisIdempotencyStore.scripts)
        try await server.waitUntilUp(client)
        try await Self.contract(RedisIdempotencyStore(redis: client)) { ms in Thread.sleep(forTimeInterval: Double(ms) / 1000) }
    }
}
