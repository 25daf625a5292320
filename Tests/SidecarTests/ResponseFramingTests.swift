import NIOHTTP1
import Testing

@testable import Sidecar

@Suite("Response framing")
struct ResponseFramingTests {
    @Test func bufferedBodiesGetTheirExactLength() {
        let d = ResponseFraming.decide(headers: ["Content-Length": "999", "Transfer-Encoding": "chunked"], requestMethod: .GET, status: .ok, version: .http1_1, bufferedLength: 12)
        #expect(d.headers["content-length"] == ["12"] && d.headers["transfer-encoding"].isEmpty && d.sendBody && !d.closeAfter)
    }

    @Test func streamsWithoutLengthAreChunkedOrCloseDelimited() {
        let chunked = ResponseFraming.decide(headers: [:], requestMethod: .GET, status: .ok, version: .http1_1, bufferedLength: nil)
        #expect(chunked.headers["transfer-encoding"] == ["chunked"] && !chunked.closeAfter)
        let old = ResponseFraming.decide(headers: [:], requestMethod: .GET, status: .ok, version: .http1_0, bufferedLength: nil)
        #expect(old.headers["transfer-encoding"].isEmpty && old.closeAfter)
        let known = ResponseFraming.decide(headers: ["Content-Length": "5"], requestMethod: .GET, status: .ok, version: .http1_1, bufferedLength: nil)
        #expect(known.headers["content-length"] == ["5"] && known.headers["transfer-encoding"].isEmpty)
    }

    @Test func bodylessAnswers() {
        let head = ResponseFraming.decide(headers: ["Content-Length": "42"], requestMethod: .HEAD, status: .ok, version: .http1_1, bufferedLength: nil)
        #expect(!head.sendBody && head.headers["content-length"] == ["42"])
        let noContent = ResponseFraming.decide(headers: ["Content-Length": "0"], requestMethod: .GET, status: .noContent, version: .http1_1, bufferedLength: nil)
        #expect(!noContent.sendBody && noContent.headers["content-length"].isEmpty)
        let notModified = ResponseFraming.decide(headers: [:], requestMethod: .GET, status: .notModified, version: .http1_1, bufferedLength: nil)
        #expect(!notModified.sendBody && notModified.headers["transfer-encoding"].isEmpty)
    }

    @Test func aRefusedConnectKeepsItsProblemBody() {
        let d = ResponseFraming.decide(headers: [:], requestMethod: .CONNECT, status: .forbidden, version: .http1_1, bufferedLength: 300)
        #expect(d.sendBody && d.headers["content-length"] == ["300"])
    }
}
