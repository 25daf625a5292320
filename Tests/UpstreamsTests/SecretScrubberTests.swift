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
}
