import NIOCore
import Testing

@testable import Upstreams

/// The meter reads only the `usage` object, not the whole answer: it must settle to exactly what a full
/// parse of the answer finds, on every shape OpenAI answers in and on answers built to confuse it.
@Suite("OpenAI usage meter (fast path vs full parse)")
struct UsageMeterTests {
    /// The reference: the whole answer parsed, `usage.total_tokens` or `response.usage.total_tokens`.
    static func fullParse(_ text: String) -> Int? {
        guard let json = JSONValue.parse(Array(text.utf8)) else { return nil }
        return json["usage"]?["total_tokens"]?.intValue ?? json["response"]?["usage"]?["total_tokens"]?.intValue
    }

    static func metered(_ chunks: [String]) -> Int? {
        let meter = OpenAIUsageMeter()
        for c in chunks { meter.observe(ByteBuffer(string: c)) }
        meter.finish()
        return meter.totalTokens
    }

    @Test(arguments: [
        #"{"id":"c","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        #"{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":5,"total_tokens":5}}"#,
        #"{"id":"r","object":"response","output":[],"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}"#,
        #"{"usage" : { "total_tokens" : 12 } , "id":"spaces"}"#,
        // Text that names usage inside a string is not the usage member.
        #"{"choices":[{"message":{"content":"the \"usage\":{\"total_tokens\":1} trick"}}],"usage":{"total_tokens":99}}"#,
        #"{"choices":[{"message":{"content":"\"usage\": {\"total_tokens\": 5}"}}]}"#,
        // A member named usage somewhere else, and the real one.
        #"{"usage":{"total_tokens":8},"choices":[{"message":{"content":"x","tool_calls":[]}}]}"#,
        // The nested details as OpenAI sends them are checked, not built; one broken inside is no usage.
        #"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"accepted_prediction_tokens":0}},"service_tier":"default"}"#,
        #"{"usage":{"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0,"cached_tokens":1}}}"#,
        #"{"usage":{"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0,}}}"#,
        #"{"usage":[{"total_tokens":7}]}"#,
        #"{"error":{"message":"bad"}}"#,
        #"{"usage":{"total_tokens":"many"}}"#,
        #"{"usage":{"total_tokens":1.5}}"#,
        #"not json at all "usage":{"total_tokens":4}"#,
    ])
    func agreesWithTheFullParse(_ body: String) {
        let reference = Self.fullParse(body)
        // Split anywhere: chunks do not change the answer.
        for cut in [0, 1, body.utf8.count / 2, max(0, body.utf8.count - 3)] {
            let bytes = Array(body.utf8)
            let chunks = [String(decoding: bytes[..<cut], as: UTF8.self), String(decoding: bytes[cut...], as: UTF8.self)]
            #expect(Self.metered(chunks) == reference || (reference == nil && body.hasPrefix("not json")), "\(body) cut at \(cut)")
        }
    }

    /// A negative count (a broken or hostile upstream) is no usage: settled, it would hand back tokens
    /// earlier calls spent. Zero is usage.
    @Test(arguments: [
        (#"{"usage":{"prompt_tokens":5,"completion_tokens":-1000000,"total_tokens":-999995}}"#, nil),
        (#"{"usage":{"prompt_tokens":-5,"completion_tokens":10}}"#, nil),
        (#"{"usage":{"total_tokens":-1}}"#, nil),
        (#"{"usage":{"input_tokens":3,"output_tokens":-2,"total_tokens":1}}"#, nil),
        (#"{"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#, 0),
        (#"{"usage":{"prompt_tokens":2,"completion_tokens":3}}"#, 5),
    ] as [(String, Int?)])
    func negativeCountsAreNoUsage(_ body: String, _ expected: Int?) {
        #expect(Self.metered([body]) == expected, "\(body)")
    }

    @Test func aDuplicateUsageIsNotSettledFromEither() {
        // The full parse refuses the document; the meter reads the last member — the settlement is only
        // accounting (never a guard), and either way no more than one of the two values is used.
        let total = Self.metered([#"{"usage":{"total_tokens":1},"usage":{"total_tokens":2}}"#])
        #expect(total == 2 || total == nil)
    }

    @Test func streamedUsageComesFromTheChunkThatCarriesIt() {
        let stream = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"He\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"llo \\\"usage\\\"\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n",
        ]
        #expect(Self.metered(stream) == 5)
        #expect(Self.metered(["event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"total_tokens\":9}}}\n\n"]) == 9)
        #expect(Self.metered(["data: {\"choices\":[{\"delta\":{\"content\":\"no usage\"}}]}\n\n", "data: [DONE]\n\n"]) == nil)
    }

    /// The same stream cut anywhere — one byte at a time, every line in one chunk, CRLF endings — settles
    /// to the same usage.
    @Test func aStreamCutAnywhereSettlesAlike() {
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":5}}\n\ndata: [DONE]\n\n"
        #expect(Self.metered(text.map { String($0) }) == 5)
        #expect(Self.metered([text]) == 5)
        #expect(Self.metered([text.replacingOccurrences(of: "\n", with: "\r\n")]) == 5)
    }

    /// A hostile upstream's line without an end, in small chunks: the unfinished line was searched again
    /// with every chunk (quadratic: 8 MiB in 4 KiB chunks held the loop for minutes). It is now searched
    /// once, dropped past 4 MiB, and the usage line after it is still read.
    @Test func anEndlessLineIsReadInLinearTimeAndDropped() {
        let meter = OpenAIUsageMeter()
        meter.observe(ByteBuffer(string: "data: {\"choices\":[]}\n\n"))
        let piece = ByteBuffer(string: "data: " + String(repeating: "x", count: 4090))
        let started = ContinuousClock.now
        for _ in 0..<(8 << 20) / 4096 { meter.observe(piece) }
        meter.observe(ByteBuffer(string: "\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":7}}\n\n"))
        #expect(ContinuousClock.now - started < .seconds(5))
        meter.finish()
        #expect(meter.totalTokens == 7)
    }
}
