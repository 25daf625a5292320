import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

@Suite("Credential scrubbing")
struct SecretScrubberTests {
    let scrubber = SecretScrubber(["sk-SECRET-123456"])

    @Test func wholeBodiesAndHeaders() {
        let body = scrubber.scrub(ByteBuffer(string: #"{"echo":"sk-SECRET-123456","again":"sk-SECRET-123456"}"#))
        #expect(String(buffer: body) == #"{"echo":"[REDACTED]","again":"[REDACTED]"}"#)
        let headers = scrubber.scrub(HTTPHeaders([("X-Debug", "key=sk-SECRET-123456"), ("Content-Type", "a")]))
        #expect(headers["x-debug"] == ["key=[REDACTED]"] && headers["content-type"] == ["a"])
    }

    @Test(arguments: [1, 2, 3, 5, 7, 16])
    func secretsSplitAcrossChunks(_ size: Int) {
        let text = "data: before sk-SECRET-123456 middle sk-SECRET-123456\n\n"
        var carry: [UInt8] = []
        var out = ""
        let bytes = Array(text.utf8)
        var i = 0
        while i < bytes.count {
            let chunk = ByteBuffer(bytes: bytes[i..<min(i + size, bytes.count)])
            out += String(buffer: scrubber.scrub(chunk: chunk, carry: &carry, final: false))
            i += size
        }
        out += String(buffer: scrubber.scrub(chunk: ByteBuffer(), carry: &carry, final: true))
        #expect(out == "data: before [REDACTED] middle [REDACTED]\n\n")
    }

    @Test func onlyAPossibleSecretPrefixIsHeldBack() {
        var carry: [UInt8] = []
        let out = scrubber.scrub(chunk: ByteBuffer(string: "data: {\"x\":1}\n\n"), carry: &carry, final: false)
        #expect(String(buffer: out) == "data: {\"x\":1}\n\n" && carry.isEmpty, "an SSE event is never delayed")
        let partial = scrubber.scrub(chunk: ByteBuffer(string: "tail sk-SEC"), carry: &carry, final: false)
        #expect(String(buffer: partial) == "tail " && carry == Array("sk-SEC".utf8))
    }

    @Test func shortValuesAreIgnored() {
        #expect(SecretScrubber(["abc"]).isEmpty)
    }

    @Test func cleanInputIsHandedBackWithoutACopy() {
        let body = ByteBuffer(string: #"{"search_metadata":{"status":"Success"}}"#)
        let out = scrubber.scrub(body)
        #expect(out == body)
        #expect(out.withUnsafeReadableBytes { $0.baseAddress } == body.withUnsafeReadableBytes { $0.baseAddress })
        let headers = HTTPHeaders([("Content-Type", "application/json")])
        #expect(scrubber.scrub(headers) == headers)
        var carry: [UInt8] = []
        let chunk = ByteBuffer(string: "data: {}\n\n")
        let streamed = scrubber.scrub(chunk: chunk, carry: &carry, final: false)
        #expect(streamed.withUnsafeReadableBytes { $0.baseAddress } == chunk.withUnsafeReadableBytes { $0.baseAddress } && carry.isEmpty)
    }

    @Test(arguments: [("", 1), ("", 15), ("xx ", 2), ("data: ", 16), ("", 0)])
    func aSecretCompletedByTheNextChunkIsCaught(lead: String, split: Int) {
        let secret = "sk-SECRET-123456"
        var carry: [UInt8] = []
        var out = String(buffer: scrubber.scrub(chunk: ByteBuffer(string: lead + secret.prefix(split)), carry: &carry, final: false))
        out += String(buffer: scrubber.scrub(chunk: ByteBuffer(string: secret.dropFirst(split) + " tail"), carry: &carry, final: false))
        out += String(buffer: scrubber.scrub(chunk: ByteBuffer(), carry: &carry, final: true))
        #expect(out == lead + "[REDACTED] tail")
    }

    @Test func credentialsKeepTheirBytesAndStayRedacted() {
        let credential = Credential("sk-SECRET-123456", version: 3)
        #expect(SecretScrubber(credential: credential).scrub(ByteBuffer(string: "x sk-SECRET-123456")) == ByteBuffer(string: "x [REDACTED]"))
        #expect("\(credential)" == "Credential(v3, <redacted>)")
        #expect(credential == Credential("sk-SECRET-123456", version: 3) && credential != Credential("sk-SECRET-123456", version: 4))
    }
}
