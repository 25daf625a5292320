import NIOCore
import NIOPosix
import Testing

@testable import Upstreams

/// The buffer between an upstream connection and the task writing to the agent.
@Suite struct BodyStreamTests {
    /// What has arrived behind a chunk goes to the consumer with it (up to `coalesceLimit`), in order,
    /// so many small upstream chunks (SSE events) leave in one write instead of one write each.
    @Test func whatHasArrivedIsHandedOverInOnePieceUpToTheLimit() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let body = BodyStream()
        for i in 0..<100 { _ = body.append(ByteBuffer(string: "data: event \(i)\n\n"), on: loop) }
        let first = try #require(try await body.next())
        #expect(String(buffer: first) == (0..<100).map { "data: event \($0)\n\n" }.joined())
        let big = ByteBuffer(repeating: 0x61, count: BodyStream.coalesceLimit / 2 + 1)
        for _ in 0..<3 { _ = body.append(big, on: loop) }
        body.finish()
        var sizes: [Int] = []
        while let chunk = try await body.next() { sizes.append(chunk.readableBytes) }
        #expect(sizes == [big.readableBytes, big.readableBytes, big.readableBytes], "never past the limit")
    }
}
