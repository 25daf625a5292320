import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

@Suite("Upstream request encoder")
struct RequestHeadEncoderTests {
    private func request(_ method: HTTPMethod, _ url: String, _ headers: HTTPHeaders, body: String? = nil) throws -> UpstreamRequest {
        let target = try TargetURL.parse(url)
        let call = try HTTPFetchAdapter().interpret(ToolRequest(method: .GET, path: "/fetch", target: target))
        return UpstreamRequest(call: call, method: method, url: target, headers: headers, body: body.map { ByteBuffer(string: $0) }, deadline: .now())
    }

    private func bytes(_ r: UpstreamRequest) throws -> (String, String?) {
        let e = try #require(RequestHeadEncoder.encode(r, buffer: { ByteBufferAllocator().buffer(capacity: $0) }))
        return (String(buffer: e.head), e.body.map { String(buffer: $0) })
    }

    @Test func requestLineFieldsAndBlankLine() throws {
        let (text, body) = try bytes(request(.GET, "http://h:81/p/a?q=1&b=%20", ["Host": "h:81", "Via": "1.1 agent-sidecar"]))
        #expect(text == "GET /p/a?q=1&b=%20 HTTP/1.1\r\nHost: h:81\r\nVia: 1.1 agent-sidecar\r\n\r\n")
        #expect(body == nil)
    }

    @Test func aSmallBodyFollowsTheHeadInOneBufferWithItsLength() throws {
        let (text, body) = try bytes(request(.POST, "http://h/v1", ["Host": "h", "content-length": "1"], body: "{\"a\":1}"))
        #expect(text == "POST /v1 HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
        #expect(body == nil)
    }

    @Test func anEmptyPostSaysSoAndAGetSaysNothing() throws {
        #expect(try bytes(request(.POST, "http://h/", ["Host": "h"])).0 == "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        #expect(try bytes(request(.GET, "http://h/", ["Host": "h", "Transfer-Encoding": "chunked"])).0 == "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    }

    @Test func aLargeBodyIsWrittenAfterTheHead() throws {
        let big = String(repeating: "x", count: RequestHeadEncoder.coalesceLimit + 1)
        let (text, body) = try bytes(request(.POST, "http://h/", ["Host": "h"], body: big))
        #expect(text == "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \(big.utf8.count)\r\n\r\n")
        #expect(body == big)
    }

    @Test func invalidPartsRefuseTheWholeRequest() throws {
        var r = try request(.GET, "http://h/", ["Host": "h"])
        r.headers.add(name: "X-A", value: "1\r\nX-B: 2")
        #expect(RequestHeadEncoder.encode(r, buffer: { ByteBufferAllocator().buffer(capacity: $0) }) == nil)
        r = try request(.RAW(value: "GE T"), "http://h/", ["Host": "h"])
        #expect(RequestHeadEncoder.encode(r, buffer: { ByteBufferAllocator().buffer(capacity: $0) }) == nil)
        r = try request(.GET, "http://h/", ["Host": "h"])
        r.url.path = "/a\nb"
        #expect(RequestHeadEncoder.encode(r, buffer: { ByteBufferAllocator().buffer(capacity: $0) }) == nil)
        // HTAB is allowed in a value; other controls are not.
        r = try request(.GET, "http://h/", ["Host": "h", "X-T": "a\tb"])
        #expect(RequestHeadEncoder.encode(r, buffer: { ByteBufferAllocator().buffer(capacity: $0) }) != nil)
        r = try request(.GET, "http://h/", ["Host": "h", "X-T": "a\u{7F}b"])
        #expect(RequestHeadEncoder.encode(r, buffer: { ByteBufferAllocator().buffer(capacity: $0) }) == nil)
    }
}

/// The byte sets are written as bit masks; this checks them against the RFCs' lists, byte by byte.
@Suite("Field syntax")
struct FieldSyntaxTests {
    static let alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

    @Test func everyASCIIByteIsClassifiedAsTheRFCsSay() {
        let token = Set((Self.alnum + "!#$%&'*+-.^_`|~").utf8)
        let target = Set((Self.alnum + "-._~:/?#[]@!$&'()*+,;=%").utf8)
        for b in UInt8(0)..<128 {
            let s = String(decoding: [b], as: UTF8.self)
            #expect(FieldSyntax.isToken(s) == token.contains(b), "token \(b)")
            #expect(FieldSyntax.isRequestTarget(s) == target.contains(b), "target \(b)")
            #expect(FieldSyntax.isValue(s) == (b >= 0x20 && b != 0x7F || b == 0x09), "value \(b)")
        }
        #expect(!FieldSyntax.isToken("naïve") && !FieldSyntax.isRequestTarget("/naïve") && FieldSyntax.isValue("naïve"))
        #expect(!FieldSyntax.isToken(""))
    }
}

@Suite("Reusable write buffer")
struct ReusableBufferTests {
    static func address(_ b: ByteBuffer) -> UnsafeRawPointer? { b.withVeryUnsafeBytes { UnsafeRawPointer($0.baseAddress) } }

    /// A buffer the channel still holds must never be written again: the next message gets its own.
    @Test func aBufferStillHeldIsNeverReused() {
        var reusable = ReusableBuffer()
        var sent = reusable.take(capacity: 64, allocator: ByteBufferAllocator())
        sent.writeString("first answer")
        reusable.keep(sent)
        var next = reusable.take(capacity: 64, allocator: ByteBufferAllocator())
        next.writeString("second")
        #expect(String(buffer: sent) == "first answer")
        #expect(String(buffer: next) == "second")
        #expect(Self.address(sent) != Self.address(next))
    }

    @Test func aWrittenBufferIsClearedAndReusedInPlace() {
        var reusable = ReusableBuffer()
        var first = reusable.take(capacity: 64, allocator: ByteBufferAllocator())
        first.writeString("first answer")
        let storage = Self.address(first)
        reusable.keep(first)
        first = ByteBuffer()  // the channel has written and released it
        let second = reusable.take(capacity: 32, allocator: ByteBufferAllocator())
        #expect(second.readableBytes == 0)
        #expect(Self.address(second) == storage)
    }

    /// One field in one write: name, separator, value, line end — also when the value is empty, the
    /// buffer has to grow, or the value is not ASCII.
    @Test(arguments: [("X-A", "1"), ("X-Empty", ""), ("X-Long", String(repeating: "v", count: 5000)), ("X-Utf8", "caf\u{e9}")])
    func writeFieldWritesOneWholeField(_ field: (String, String)) {
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\n")
        buffer.writeField(field.0, field.1)
        #expect(String(buffer: buffer) == "HTTP/1.1 200 OK\r\n\(field.0): \(field.1)\r\n")
    }

    /// A field that is not valid HTTP (a name that is not a token, a value with a control character) is
    /// refused whole: nothing of it reaches the buffer.
    @Test(arguments: [
        ("X-A", "1", true), ("X-Utf8", "caf\u{e9}", true), ("X-Empty", "", true), ("X A", "1", false), ("", "1", false),
        ("X-A", "a\r\nInjected: 1", false), ("X-A", "nul\u{0}", false), ("X:A", "1", false),
    ])
    func writeFieldIfValidWritesOnlyValidFields(name: String, value: String, valid: Bool) {
        var buffer = ByteBuffer(string: "head\r\n")
        #expect(buffer.writeFieldIfValid(name, value) == valid)
        #expect(String(buffer: buffer) == (valid ? "head\r\n\(name): \(value)\r\n" : "head\r\n"))
    }
}
