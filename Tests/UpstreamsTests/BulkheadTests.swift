import Synchronization
import Testing

@testable import Upstreams

@Suite("Bulkhead")
struct BulkheadTests {
    /// True when `acquire` is refused with `Saturated` (a granted slot is given back).
    static func refused(_ b: Bulkhead) async -> Bool {
        do {
            try await b.acquire()
            b.release()
            return false
        } catch {
            return error is Bulkhead.Saturated
        }
    }

    @Test func queuesInOrderAndRejectsWhenTheQueueIsFull() async throws {
        let b = Bulkhead(maxConcurrent: 1, maxQueue: 2, wait: .seconds(5))
        try await b.acquire()
        final class Order: Sendable { let items = Mutex<[Int]>([]) }
        let order = Order()
        let first = Task { try await b.acquire(); order.items.withLock { $0.append(1) } }
        while b.queueLength < 1 { try await Task.sleep(for: .milliseconds(1)) }
        let second = Task { try await b.acquire(); order.items.withLock { $0.append(2) } }
        while b.queueLength < 2 { try await Task.sleep(for: .milliseconds(1)) }
        #expect(await Self.refused(b))
        b.release()
        try await first.value
        b.release()
        try await second.value
        #expect(order.items.withLock { $0 } == [1, 2])
        #expect(b.active == 1 && b.queueLength == 0)
        b.release()
        #expect(b.active == 0)
    }

    @Test func aWaiterGivesUpAfterTheWaitTimeout() async throws {
        let b = Bulkhead(maxConcurrent: 1, maxQueue: 10, wait: .milliseconds(30))
        try await b.acquire()
        let start = ContinuousClock.now
        #expect(await Self.refused(b))
        #expect(ContinuousClock.now - start >= .milliseconds(25))
        #expect(b.queueLength == 0)
        b.release()
        try await b.acquire()  // the slot is free again
        b.release()
    }
}
