import NIOCore
import Testing

@testable import Upstreams

/// The usage chunk the sidecar asked OpenAI for is taken out of the agent's stream — that event and
/// nothing else, however the upstream's writes cut the stream.
@Suite("OpenAI added usage chunk removed")
struct AddedUsageRemoverTests {
    static func chunk(_ content: String) -> String {
        #"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"\#(content)"},"finish_reason":null}],"usage":null}"#
            + "\n\n"
    }

    static let usage =
        #"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#
        + "\n\n"
    static let done = "data: [DONE]\n\n"

    /// The body as the agent gets it when the upstream's bytes arrive cut at `cuts`.
    static func filtered(_ body: String, cuts: [Int]) -> String {
        let bytes = Array(body.utf8)
        let remover = OpenAIAddedUsageRemover()
        var out: [UInt8] = []
        var at = 0
        for cut in cuts.map({ min($0, bytes.count) }) + [bytes.count] where cut >= at {
            out += Array(remover.transform(ByteBuffer(bytes: bytes[at..<cut])).readableBytesView)
            at = cut
        }
        out += Array(remover.finish().readableBytesView)
        return String(decoding: out, as: UTF8.self)
    }

    static let removed: [(String, String)] = [
        (chunk("Hi") + chunk(" there") + usage + done, chunk("Hi") + chunk(" there") + done),
        // CRLF framing, spaces around the member.
        (
            chunk("a").replacingOccurrences(of: "\n", with: "\r\n")
                + #"data: {"choices": [ ], "usage" : {"total_tokens":5}}"# + "\r\n\r\n" + "data: [DONE]\r\n\r\n",
            chunk("a").replacingOccurrences(of: "\n", with: "\r\n") + "data: [DONE]\r\n\r\n"
        ),
        // The stream ends on the usage chunk without its blank line.
        (chunk("a") + usage.dropLast(2), chunk("a")),
    ]

    static let kept: [String] = [
        // No usage chunk: the answer as it came.
        chunk("a") + chunk("b") + done,
        // Usage with choices (a provider that puts it on the last content chunk) is the agent's content.
        #"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"total_tokens":5}}"# + "\n\n" + done,
        // Text that names usage inside a string.
        chunk(#"\"choices\":[],\"usage\":{\"total_tokens\":1}"#) + done,
        // An error event, a comment, an event with a name: not the added chunk.
        #"data: {"error":{"message":"overloaded"}}"# + "\n\n" + ": keep-alive\n\n" + done,
        "event: usage\n" + usage + done,
        // usage null, or not an object.
        #"data: {"choices":[],"usage":null}"# + "\n\n" + #"data: {"choices":[],"usage":[1]}"# + "\n\n",
        // Not JSON, or a duplicate member the strict reader refuses.
        #"data: {"choices":[],"usage":{"total_tokens":5}"# + "\n\n" + #"data: {"choices":[],"choices":[],"usage":{}}"# + "\n\n",
    ]

    @Test(arguments: removed.indices)
    func theAddedChunkIsRemovedWhereverTheWritesCutTheStream(_ i: Int) {
        let (body, expected) = Self.removed[i]
        #expect(Self.filtered(body, cuts: []) == expected)
        let n = body.utf8.count
        for cut in 0...n {
            #expect(Self.filtered(body, cuts: [cut]) == expected, "cut at \(cut)")
        }
        #expect(Self.filtered(body, cuts: Array(0...n)) == expected, "byte by byte")
    }

    @Test(arguments: kept.indices)
    func everyOtherEventPassesAsItCame(_ i: Int) {
        let body = Self.kept[i]
        #expect(Self.filtered(body, cuts: []) == body)
        let n = body.utf8.count
        for cut in stride(from: 0, through: n, by: 7) {
            #expect(Self.filtered(body, cuts: [cut, cut + 3]) == body, "cut at \(cut)")
        }
        #expect(Self.filtered(body, cuts: Array(0...n)) == body, "byte by byte")
    }

    /// Whole events pass as the same buffer (no copy); a cut event is held back only until it ends.
    @Test func completeEventsPassAtOnceAndUnfinishedOnesWait() {
        let remover = OpenAIAddedUsageRemover()
        let whole = ByteBuffer(string: Self.chunk("a") + Self.chunk("b"))
        #expect(remover.transform(whole) == whole)
        let half = Self.usage.utf8.count / 2
        let usage = Array(Self.usage.utf8)
        #expect(remover.transform(ByteBuffer(bytes: usage[..<half])).readableBytes == 0)
        #expect(remover.transform(ByteBuffer(bytes: usage[half...])).readableBytes == 0)
        #expect(String(buffer: remover.transform(ByteBuffer(string: Self.done))) == Self.done)
    }

    /// Events dripped a byte at a time: each byte searched the whole held event again (its length squared
    /// per event). Now each byte is searched once.
    @Test func aDrippedStreamIsFilteredInLinearTime() {
        let event = "data: {\"choices\":[{\"delta\":{\"content\":\"" + String(repeating: "y", count: 60_000) + "\"}}]}\n\n"
        let body = Array((event + event + Self.usage + Self.done).utf8)
        let remover = OpenAIAddedUsageRemover()
        var out = 0
        let started = ContinuousClock.now
        for b in body { out += remover.transform(ByteBuffer(bytes: [b])).readableBytes }
        out += remover.finish().readableBytes
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(out == 2 * event.utf8.count + Self.done.utf8.count)
    }

    /// An event that never ends is not held without bound: past `maxHeld` everything passes.
    @Test func anEventThatNeverEndsStopsTheFiltering() {
        let remover = OpenAIAddedUsageRemover()
        let piece = ByteBuffer(repeating: UInt8(ascii: "x"), count: 16 * 1024)
        var passed = 0
        for _ in 0..<6 { passed += remover.transform(piece).readableBytes }
        passed += remover.transform(ByteBuffer(string: Self.usage)).readableBytes
        passed += remover.finish().readableBytes
        #expect(passed == 6 * 16 * 1024 + Self.usage.utf8.count)
    }
}
