import Foundation
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

    @Test(.enabled(if: RedisServer.available)) func redisStoreKeepsTheContract() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let client = RedisTests.client(server, scripts: RedisIdempotencyStore.scripts)
        try await server.waitUntilUp(client)
        try await Self.contract(RedisIdempotencyStore(redis: client)) { ms in Thread.sleep(forTimeInterval: Double(ms) / 1000) }
    }
}
