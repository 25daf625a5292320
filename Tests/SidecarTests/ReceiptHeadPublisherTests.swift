import Foundation
import Logging
import Synchronization
import Testing

@testable import Sidecar

/// The receipt chain's head in Redis must only move forward, and a Redis that fails must end up holding
/// the newest head once it answers again.
@Suite("Receipts: the head stored for the fleet")
struct ReceiptHeadPublisherTests {
    /// What a fake Redis was sent, and how many of the next sends fail.
    final class FakeRedis: Sendable {
        let sent = Mutex<[Int64]>([])
        let failures = Mutex(0)

        func send(_ command: [String]) async throws {
            #expect(command.count == 3 && command[0] == "SET" && command[1] == "sidecar:receipts:head:sc-1")
            try await Task.sleep(for: .milliseconds(1))
            if failures.withLock({ f -> Bool in
                defer { f = max(0, f - 1) }
                return f > 0
            }) { throw RedisError.unavailable("down") }
            let seq = Int64(command[2].split(separator: " ")[0])!
            sent.withLock { $0.append(seq) }
        }
    }

    static func publisher(_ redis: FakeRedis) -> ReceiptHeadPublisher {
        ReceiptHeadPublisher(key: ReceiptLog.headKey("sc-1"), logger: Logger(label: "test"), retry: .milliseconds(5)) { try await redis.send($0) }
    }

    static func settle(_ p: ReceiptHeadPublisher, to seq: Int64) async {
        for _ in 0..<2000 where p.stored < seq { try? await Task.sleep(for: .milliseconds(1)) }
    }

    /// Heads sealed faster than Redis answers: never an older head after a newer one, the newest last.
    @Test func headsOnlyMoveForward() async {
        let redis = FakeRedis()
        let p = Self.publisher(redis)
        for seq in 1...200 as ClosedRange<Int64> {
            p.publish(seq: seq, hash: "h\(seq)")
            if seq % 20 == 0 { try? await Task.sleep(for: .milliseconds(1)) }
        }
        p.publish(seq: 150, hash: "old")  // older than what was seen: ignored
        await Self.settle(p, to: 200)
        let sent = redis.sent.withLock { $0 }
        #expect(sent.last == 200)
        #expect(zip(sent, sent.dropFirst()).allSatisfy { $0 < $1 }, "\(sent)")
        #expect(sent.count < 200, "sealed faster than Redis answers, the heads in between are skipped")
    }

    /// Redis failing: retried with the newest head until it answers.
    @Test func aFailingRedisGetsTheNewestHeadOnceItAnswers() async {
        let redis = FakeRedis()
        redis.failures.withLock { $0 = 5 }
        let p = Self.publisher(redis)
        p.publish(seq: 1, hash: "a")
        p.publish(seq: 2, hash: "b")
        await Self.settle(p, to: 2)
        #expect(p.stored == 2)
        #expect(redis.sent.withLock { $0 }.last == 2)
    }
}
