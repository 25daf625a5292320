import Foundation
import Logging
import Synchronization
import Testing

@testable import Sidecar

/// The owners of stored OpenAI responses: the embedded store (claims, other agents, expiry, restarts),
/// and the records in front of it (a claim is readable at once, before its write finished).
@Suite("Stored-response owners")
struct ResponseOwnersTests {
    @Test func theEmbeddedStoreKnowsWhoWasHandedWhatUntilItExpires() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("owners-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("responses.sqlite").path
        do {
            let store = try EmbeddedResponseOwnerStore(path: path)
            try await store.claim("resp_a", agent: "agt_1", ttl: 1_000, now: 10_000)
            // A cached answer handed to a second agent: both own it.
            try await store.claim("resp_a", agent: "agt_2", ttl: 1_000, now: 10_000)
            #expect(try await store.owns("resp_a", agent: "agt_1", now: 10_500))
            #expect(try await store.owns("resp_a", agent: "agt_2", now: 10_500))
            #expect(try await !store.owns("resp_a", agent: "agt_3", now: 10_500))
            #expect(try await !store.owns("resp_b", agent: "agt_1", now: 10_500))
            #expect(try await !store.owns("resp_a", agent: "agt_1", now: 11_000))
            // Claimed again later, it lives from then on.
            try await store.claim("resp_a", agent: "agt_1", ttl: 1_000, now: 10_800)
            #expect(try await store.owns("resp_a", agent: "agt_1", now: 11_500))
        }
        // The file is the record: a new process reads it.
        let reopened = try EmbeddedResponseOwnerStore(path: path)
        #expect(try await reopened.owns("resp_a", agent: "agt_1", now: 11_500))
        #expect(try await !reopened.owns("resp_a", agent: "agt_2", now: 11_500))
    }

    /// A store whose writes do not finish until released, and whose reads count.
    final class SlowStore: ResponseOwnerStore, @unchecked Sendable {
        let held = Mutex<[String: String]>([:])
        let reads = Atomic<Int>(0)
        let release = AsyncStream<Void>.makeStream()

        func claim(_ id: String, agent: String, ttl: Int64, now: Int64) async throws {
            for await _ in release.stream { break }
            held.withLock { $0[id] = agent }
        }

        func owns(_ id: String, agent: String, now: Int64) async throws -> Bool {
            reads.wrappingAdd(1, ordering: .relaxed)
            return held.withLock { $0[id] == agent }
        }
    }

    @Test func aClaimIsReadableBeforeItsWriteFinishedAndReadsGoToTheStoreOnlyOnAMiss() async throws {
        let store = SlowStore()
        let owners = ResponseOwners(store: store, logger: Logger(label: "test"), now: { 0 })
        owners.claim("resp_a", agent: "agt_1")
        #expect(try await owners.owns("resp_a", agent: "agt_1"))
        #expect(store.reads.load(ordering: .relaxed) == 0)
        #expect(try await !owners.owns("resp_a", agent: "agt_2"))
        #expect(store.reads.load(ordering: .relaxed) == 1)
        store.release.continuation.yield()
        store.release.continuation.finish()
    }

    @Test func aRecordFromTheStoreIsRemembered() async throws {
        let store = SlowStore()
        store.held.withLock { $0["resp_b"] = "agt_1" }
        let owners = ResponseOwners(store: store, logger: Logger(label: "test"), now: { 0 })
        #expect(try await owners.owns("resp_b", agent: "agt_1"))
        #expect(try await owners.owns("resp_b", agent: "agt_1"))
        #expect(store.reads.load(ordering: .relaxed) == 1)
    }
}
