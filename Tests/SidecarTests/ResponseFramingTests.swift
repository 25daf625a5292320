import NIOCore
import NIOHTTP1
import Testing

@testable import Sidecar

@Suite("Response framing")
struct ResponseFramingTests {
    /// The fields of the head the encoder writes for this decision (lowercased names).
    private func fields(_ headers: HTTPHeaders, _ d: ResponseFraming.Decision, close: Bool = false) -> [String: [String]] {
        var buffer = ByteBuffer()
        ResponseEncoder.writeHead(.init(version: .http1_1, status: .ok, headers: headers, framing: d, close: close), into: &buffer)
        var out: [String: [String]] = [:]
        for line in String(buffer: buffer).components(separatedBy: "\r\n").dropFirst() where !line.isEmpty {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            out[parts[0].lowercased(), default: []].append(parts[1])
        }
        return out
    }

    private func decide(
        _ headers: HTTPHeaders, _ method: HTTPMethod = .GET, _ status: HTTPResponseStatus = .ok, _ version: HTTPVersion = .http1_1,
        buffered: Int? = nil
    ) -> (ResponseFraming.Decision, [String: [String]]) {
        let d = ResponseFraming.decide(headers: headers, requestMethod: method, status: status, version: version, bufferedLength: buffered)
        return (d, fields(headers, d))
    }

    @Test func bufferedBodiesGetTheirExactLength() {
        let (d, f) = decide(["Content-Length": "999", "Transfer-Encoding": "chunked"], buffered: 12)
        #expect(f["content-length"] == ["12"] && f["transfer-encoding"] == nil && d.sendBody && !d.closeAfter)
    }

    @Test func streamsWithoutLengthAreChunkedOrCloseDelimited() {
        let (chunked, cf) = decide([:])
        #expect(cf["transfer-encoding"] == ["chunked"] && !chunked.closeAfter)
        let (old, of) = decide([:], .GET, .ok, .http1_0)
        #expect(of["transfer-encoding"] == nil && old.closeAfter)
        let (_, kf) = decide(["Content-Length": "5"])
        #expect(kf["content-length"] == ["5"] && kf["transfer-encoding"] == nil)
        // Two lengths (they could disagree) are not trusted: the stream is chunked instead.
        let (twice, tf) = decide(["Content-Length": "5", "content-length": "5"])
        #expect(twice.chunked && tf["content-length"] == nil)
    }

    @Test func bodylessAnswers() {
        let (head, hf) = decide(["Content-Length": "42"], .HEAD)
        #expect(!head.sendBody && hf["content-length"] == ["42"])
        let (bufferedHead, bf) = decide([:], .HEAD, buffered: 7)
        #expect(!bufferedHead.sendBody && bf["content-length"] == ["7"])
        let (noContent, nf) = decide(["Content-Length": "0"], .GET, .noContent)
        #expect(!noContent.sendBody && nf["content-length"] == nil)
        let (notModified, mf) = decide(["Transfer-Encoding": "chunked"], .GET, .notModified)
        #expect(!notModified.sendBody && mf["transfer-encoding"] == nil)
    }

    @Test func aRefusedConnectKeepsItsProblemBody() {
        let (d, f) = decide([:], .CONNECT, .forbidden, buffered: 300)
        #expect(d.sendBody && f["content-length"] == ["300"])
    }

    @Test func theProxyDecidesTheConnection() {
        let d = ResponseFraming.decide(headers: [:], requestMethod: .GET, status: .ok, version: .http1_1, bufferedLength: 0)
        #expect(fields(["Connection": "keep-alive"], d)["connection"] == nil)
        #expect(fields(["Connection": "keep-alive"], d, close: true)["connection"] == ["close"])
    }
}
