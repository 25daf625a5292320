import Foundation
import Policy
import Testing

@testable import Sidecar

extension LimitCheck {
    /// An enforced quota whose current window ends an hour from now (the tests' stores agree on it).
    static func hourLeftQuota(_ key: String, limit: Int) -> LimitCheck {
        let far = Int64(Date().timeIntervalSince1970 * 1000) + 3_600_000
        var quota = LimitCheck(kind: .quota, mode: .enforce, key: key, limit: limit)
        quota.window = .init(currentID: "d1", currentEnd: far, nextID: "d2", nextEnd: far + 86_400_000)
        return quota
    }
}

@Suite("Embedded limit store")
struct EmbeddedLimitStoreTests {
    static func quota() -> LimitCheck { .hourLeftQuota("q", limit: 5) }

    /// A flush that cannot write (here: its task is cancelled, as at shutdown) keeps its counters for
    /// the next one; they once were dropped, and a restart handed out the quota again.
    @Test func countsOfAFailedFlushAreWrittenByTheNext() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("limits-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("l.sqlite").path
        let store = try EmbeddedLimitStore(databasePath: path)
        #expect(try await store.admit(agent: "a", checks: [Self.quota()], leaseID: "1").results[0].remaining == 4)
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await store.flush()
        }
        await #expect(throws: (any Error).self) { try await cancelled.value }
        try await store.flush()
        let reopened = try EmbeddedLimitStore(databasePath: path)
        #expect(try await reopened.admit(agent: "a", checks: [Self.quota()], leaseID: "2").results[0].remaining == 3)
    }
}
