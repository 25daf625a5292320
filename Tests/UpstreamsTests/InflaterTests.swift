import Foundation
import NIOCore
import Testing

@testable import Upstreams

@Suite("Decoding compressed answers")
struct InflaterTests {
    /// gzip/zlib/raw-deflate bytes made by the system's gzip/python, so the decoder meets real encoders.
    static func encoded(_ text: String, _ format: String) throws -> [UInt8] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let wbits = ["gzip": 31, "zlib": 15, "raw": -15][format]!
        process.arguments = ["python3", "-c", "import sys,zlib; c=zlib.compressobj(9, zlib.DEFLATED, \(wbits)); sys.stdout.buffer.write(c.compress(sys.stdin.buffer.read())+c.flush())"]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Array(data)
    }

    static func decodeInPieces(_ bytes: [UInt8], _ coding: ContentCoding, limit: Int = 1 << 20, piece: Int = 7) throws -> String {
        let inflater = try Inflater(coding, limit: limit)
        var out = ByteBuffer()
        var i = 0
        while i < bytes.count {
            var chunk = try inflater.decode(ByteBuffer(bytes: bytes[i..<min(i + piece, bytes.count)]))
            out.writeBuffer(&chunk)
            i += piece
        }
        #expect(inflater.finished)
        return String(buffer: out)
    }

    @Test func gzipZlibAndRawDeflate() throws {
        let text = String(repeating: "the key sk-REAL-0123456789 echoed; ", count: 200)
        #expect(try Self.decodeInPieces(Self.encoded(text, "gzip"), .gzip) == text)
        #expect(try Self.decodeInPieces(Self.encoded(text, "zlib"), .deflate) == text)
        #expect(try Self.decodeInPieces(Self.encoded(text, "raw"), .deflate, piece: 4096) == text)
        // Two gzip members in a row are one body (RFC 1952).
        #expect(try Self.decodeInPieces(Self.encoded("a", "gzip") + Self.encoded("b", "gzip"), .gzip) == "ab")
    }

    /// `undoes` is what a cache asks before it keeps an answer: it must agree with what the pipeline
    /// can decode, whole and within the limit.
    @Test func undoesSaysWhetherAWholeBodyDecodesWithinTheLimit() throws {
        let good = try Self.encoded(String(repeating: "result ", count: 100), "gzip")
        let bomb = try Self.encoded(String(repeating: "0", count: 2 << 20), "gzip")
        let cases: [(ContentCoding, [UInt8], Bool)] = [
            (.identity, Array("anything".utf8), true),
            (.gzip, good, true),
            (.gzip, good + good, true),  // two members
            (.deflate, try Self.encoded("x", "zlib"), true),
            (.deflate, try Self.encoded("x", "raw"), true),
            (.gzip, Array(good.dropLast(8)), false),  // cut off
            (.gzip, Array("hello".utf8), false),
            (.gzip, [], false),
            (.gzip, bomb, false),  // decodes past the limit
        ]
        for (coding, bytes, expected) in cases {
            #expect(coding.undoes(ByteBuffer(bytes: bytes), limit: 1 << 20) == expected, "\(coding) \(bytes.count) bytes")
        }
    }

    /// Which bodies the proxy reads ahead before their head: those it decodes, beneath any wrapper.
    @Test func isDecodedSeesThroughTheWrappers() {
        let raw = UpstreamBody.bytes(ByteBuffer(string: "x"))
        #expect(!raw.isDecoded)
        #expect(!raw.decoded(.identity, limit: 10).isDecoded)
        #expect(raw.decoded(.gzip, limit: 10).isDecoded)
        #expect(raw.decoded(.deflate, limit: 10).scrubbed(by: SecretScrubber(["sk-SECRET-123456"])).isDecoded)
        #expect(raw.decoded(.gzip, limit: 10).observed(by: { _ in }, finished: {}).isDecoded)
        #expect(!raw.scrubbed(by: SecretScrubber(["sk-SECRET-123456"])).isDecoded)
    }

    @Test func aBombStopsAtTheLimit() throws {
        let bomb = try Self.encoded(String(repeating: "0", count: 4 << 20), "gzip")
        #expect(bomb.count < 10_000)
        #expect(throws: UpstreamError.self) { try Self.decodeInPieces(bomb, .gzip, limit: 1 << 20, piece: 1024) }
        // Whole, it reads as too large: the proxy refuses it before any of it is sent.
        let whole = #expect(throws: UpstreamError.self) { try Inflater.decodeWhole(ByteBuffer(bytes: bomb), coding: .gzip, limit: 1 << 20) }
        #expect(whole?.kind == .responseTooLarge)
    }

    @Test func corruptInputIsAnError() throws {
        var bytes = try Self.encoded(String(repeating: "x", count: 1000), "gzip")
        bytes[20] ^= 0xFF
        bytes[21] ^= 0xFF
        #expect(throws: UpstreamError.self) { try Self.decodeInPieces(bytes, .gzip) }
    }

    @Test(arguments: [
        (nil as String?, ContentCoding.identity as ContentCoding?), ("identity", .identity), ("gzip", .gzip), ("x-gzip", .gzip), ("GZIP", .gzip),
        ("deflate", .deflate), ("br", nil), ("zstd", nil), ("compress", nil), ("gzip, gzip", nil), ("gzip, br", nil), ("whatever", nil),
    ])
    func codings(_ field: String?, _ expected: ContentCoding?) {
        #expect(ContentCoding(field: field) == expected)
    }
}
