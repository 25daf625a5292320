import Foundation
import Logging
import NIOConcurrencyHelpers
import Synchronization
import Testing

@testable import Sidecar

/// The access log's writer: lines leave from its own thread, in order, whole; a stalled output holds up
/// only that thread, and what does not fit meanwhile is dropped and counted.
@Suite("Buffered line writer")
struct BufferedLineWriterTests {
    /// Output that stays blocked (a full pipe nobody reads) until the gate opens.
    final class StalledOutput: Sendable {
        let gate = ConditionLock(value: 0)
        let written = Mutex<[UInt8]>([])
        func write(_ bytes: UnsafeBufferPointer<UInt8>) {
            gate.lock(whenValue: 1)
            gate.unlock()
            written.withLock { $0.append(contentsOf: bytes) }
        }
        func open() {
            gate.lock()
            gate.unlock(withValue: 1)
        }
        var lines: [String] { written.withLock { String(decoding: $0, as: UTF8.self) }.split(separator: "\n").map(String.init) }
    }

    /// While a writer runs, the other log lines go through it (in order with the access lines), so a
    /// thread that logs never waits for stdout; a warning wakes the writer at once.
    @Test func otherLogLinesJoinTheRunningWriterAndWarningsLeaveAtOnce() async throws {
        let output = StalledOutput()
        output.open()
        let writer = BufferedLineWriter(sink: { output.write($0) })
        writer.start(interval: .seconds(30))  // no periodic write during the test
        LogSink.route(to: writer)
        defer {
            LogSink.route(to: nil)
            writer.stop()
        }
        let logger = Logger(label: "routing-test") { JSONLogHandler(label: $0, level: .info) }
        writer.append { $0.append(contentsOf: #"{"msg":"access","n":1}"#.utf8) }
        logger.info("routed info")
        #expect(output.lines.isEmpty, "an info line waits for the batch, like an access line")
        logger.warning("routed warning")
        for _ in 0..<200 where output.lines.count < 3 { try await Task.sleep(for: .milliseconds(10)) }
        let messages = output.lines.compactMap { line -> String? in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["msg"] as? String
        }
        #expect(messages == ["access", "routed info", "routed warning"])
    }

    @Test func aStalledOutputNeverHoldsUpAppendsAndLostLinesAreCounted() async throws {
        let output = StalledOutput()
        let droppedCount = Mutex(0)
        let writer = BufferedLineWriter(
            maxPending: 4096, sink: { output.write($0) }, onDropped: { n in droppedCount.withLock { $0 += n } })
        writer.start(interval: .milliseconds(5))
        // Safety net only: if an append waited for the output, this opens it after a while, and the
        // check below sees that the appends finished after (not before) the opening.
        let opened = Mutex(false)
        let safety = Task {
            try await Task.sleep(for: .seconds(10))
            opened.withLock { $0 = true }
            output.open()
        }
        let total = 2000
        for i in 0..<total {
            writer.append { $0.append(contentsOf: #"{"n":\#(i),"pad":"\#(String(repeating: "x", count: 60))"}"#.utf8) }
            if i == 10 { try await Task.sleep(for: .milliseconds(50)) }  // let the thread take a batch and block on it
        }
        #expect(!opened.withLock { $0 }, "appending waited for the stalled output")
        safety.cancel()
        output.open()
        writer.stop()

        let lines = output.lines
        let numbers = lines.compactMap { line -> Int? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return object["n"] as? Int
        }
        // Every line written is whole and in order; the first ones are all there.
        #expect(numbers == numbers.sorted())
        #expect(Array(numbers.prefix(11)) == Array(0...10))
        let dropped = droppedCount.withLock { $0 }
        #expect(dropped > 0)
        #expect(numbers.count + dropped == total)
        let warning = try #require(lines.last.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] })
        #expect(warning["level"] as? String == "warning")
        #expect(warning["dropped"] as? Int == dropped)
    }

    @Test func linesLeaveInOrderFromTheThreadAndAtStop() async throws {
        let output = StalledOutput()
        output.open()
        let writer = BufferedLineWriter(sink: { output.write($0) })
        writer.start(interval: .milliseconds(5))
        for i in 0..<100 { writer.append { $0.append(contentsOf: "line \(i)".utf8) } }
        for _ in 0..<200 where output.lines.count < 100 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(output.lines.count == 100, "the writer thread flushes on its interval")
        for i in 100..<150 { writer.append { $0.append(contentsOf: "line \(i)".utf8) } }
        writer.stop()
        #expect(output.lines == (0..<150).map { "line \($0)" })
        writer.append { $0.append(contentsOf: "after".utf8) }
        writer.flush()
        #expect(output.lines.last == "after")
    }
}
