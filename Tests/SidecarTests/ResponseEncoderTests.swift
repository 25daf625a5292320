import NIOCore
import NIOHTTP1
import Testing

@testable import Sidecar

@Suite("Response encoder")
struct ResponseEncoderTests {
    /// The fields written as they are: a length the message states itself, keep-alive.
    static let asIs = ResponseFraming.Decision(length: nil, keepsOwnLength: true, sendBody: true, closeAfter: false)

    private func head(_ head: HTTPResponseHead, framing: ResponseFraming.Decision = asIs, close: Bool = false) -> String {
        let head = ResponseEncoder.Head(version: head.version, status: head.status, headers: head.headers, framing: framing, close: close)
        var buffer = ByteBuffer()
        ResponseEncoder.writeHead(head, into: &buffer)
        #expect(buffer.readableBytes <= ResponseEncoder.headSize(head))
        return String(buffer: buffer)
    }

    @Test func statusLineFieldsAndBlankLine() {
        let text = head(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["Content-Length": "2", "X-Request-Id": "r-1"]))
        #expect(text == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: r-1\r\n\r\n")
    }

    @Test(arguments: [
        (HTTPVersion.http1_0, HTTPResponseStatus.notFound, "HTTP/1.0 404 Not Found\r\n"),
        (.http1_1, .tooManyRequests, "HTTP/1.1 429 Too Many Requests\r\n"),
        (.http1_1, .init(statusCode: 599), "HTTP/1.1 599 \r\n"),
        (.http1_1, .continue, "HTTP/1.1 100 Continue\r\n"),
    ])
    func statusLines(version: HTTPVersion, status: HTTPResponseStatus, line: String) {
        #expect(head(HTTPResponseHead(version: version, status: status)).hasPrefix(line))
    }

    /// No field can split the response: names and values that carry CR, LF, NUL or non-token bytes are
    /// left out, everything else is written as is.
    @Test func fieldsThatCouldSplitTheResponseAreLeftOut() {
        let headers = HTTPHeaders([
            ("X-Good", "value with spaces, commas; and = signs"), ("X-Evil", "a\r\nSet-Cookie: x=1"), ("X-Lf", "a\nb"),
            ("X-Nul", "a\u{0}b"), ("Bad Name", "v"), ("Bad:Name", "v"), ("", "v"), ("X-Utf8", "naïve"),
        ])
        let text = head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))
        #expect(text == "HTTP/1.1 200 OK\r\nX-Good: value with spaces, commas; and = signs\r\nX-Utf8: naïve\r\n\r\n")
    }

    /// The proxy's framing replaces the message's own, and the connection is the proxy's to describe.
    @Test func framingAndConnectionFieldsAreTheProxys() {
        let headers = HTTPHeaders([
            ("Content-Length", "999"), ("Transfer-Encoding", "chunked"), ("Connection", "keep-alive"), ("X-A", "1"),
        ])
        let buffered = ResponseFraming.Decision(length: 12, keepsOwnLength: false, sendBody: true, closeAfter: false)
        #expect(head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers), framing: buffered)
            == "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 12\r\n\r\n")
        let stream = ResponseFraming.Decision(length: nil, keepsOwnLength: false, sendBody: true, closeAfter: false, chunked: true)
        #expect(head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers), framing: stream, close: true)
            == "HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        #expect(head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))
            == "HTTP/1.1 200 OK\r\nContent-Length: 999\r\nX-A: 1\r\n\r\n")
    }

    @Test(arguments: [(1, "1"), (15, "f"), (16, "10"), (255, "ff"), (4096, "1000"), (0x12345, "12345")])
    func chunkSizesAreLowercaseHex(size: Int, hex: String) {
        var out = ByteBuffer()
        ResponseEncoder.writeChunk(ByteBuffer(repeating: UInt8(ascii: "a"), count: size), into: &out)
        let text = String(buffer: out)
        #expect(text == "\(hex)\r\n" + String(repeating: "a", count: size) + "\r\n")
    }

    @Test func anEmptyChunkIsNotWrittenBecauseItWouldEndTheBody() {
        var out = ByteBuffer()
        ResponseEncoder.writeChunk(ByteBuffer(), into: &out)
        #expect(out.readableBytes == 0)
    }

    @Test func streamsOfUnknownLengthAreChunkedOnHTTP11Only() {
        let chunked = ResponseFraming.decide(headers: [:], requestMethod: .GET, status: .ok, version: .http1_1, bufferedLength: nil)
        #expect(chunked.chunked)
        let known = ResponseFraming.decide(headers: ["Content-Length": "5"], requestMethod: .GET, status: .ok, version: .http1_1, bufferedLength: nil)
        #expect(!known.chunked)
        let old = ResponseFraming.decide(headers: [:], requestMethod: .GET, status: .ok, version: .http1_0, bufferedLength: nil)
        #expect(!old.chunked && old.closeAfter)
        let head = ResponseFraming.decide(headers: [:], requestMethod: .HEAD, status: .ok, version: .http1_1, bufferedLength: nil)
        #expect(!head.chunked && !head.sendBody)
    }
}
