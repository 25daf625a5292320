import Foundation
import Testing

@testable import Upstreams

/// The byte-wise base64 decides exactly as the Foundation path it replaced: every string over a small
/// alphabet that exercises both alphabets, padding, whitespace and garbage, up to length 6, and random
/// longer ones — the same bytes or the same refusal.
@Suite struct Base64Tests {
    static let symbols: [Character] = ["A", "Q", "R", "/", "_", "+", "-", "=", " ", "\n", "!", "w"]

    static func agree(_ s: String) -> Bool { Base64.decode(s) == Base64.foundationDecode(s) }

    /// 12^5 strings: seconds of CPU in a debug build, so it yields now and then (the tests run in
    /// parallel on a pool of as many threads as cores; held that long, tests waiting on I/O starve).
    @Test func exhaustiveShortStringsDecideAsFoundationDid() async {
        var strings = [""]
        var disagreements: [String] = []
        for _ in 1...5 {
            strings = strings.flatMap { prefix in Self.symbols.map { prefix + String($0) } }
            for (n, s) in strings.enumerated() {
                if n % 1024 == 1023 { await Task.yield() }
                if !Self.agree(s) { disagreements.append(s) }
            }
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(10).map { $0.debugDescription })")
    }

    @Test func randomLongerStringsDecideAsFoundationDid() {
        var rng = SystemRandomNumberGenerator()
        let all = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_= \n\t")
        for _ in 0..<3000 {
            let n = Int.random(in: 0...40, using: &rng)
            let s = String((0..<n).map { _ in all.randomElement(using: &rng)! })
            #expect(Self.agree(s), "\(s.debugDescription)")
        }
    }

    /// The shared encoder (`Codecs.Base64Encoder`) writes what Foundation writes, padded, and the URL
    /// form without padding, for every length class and every byte value.
    @Test func encodingMatchesFoundationForEveryLengthAndByte() {
        var rng = SystemRandomNumberGenerator()
        for length in 0..<70 {
            for round in 0..<4 {
                let bytes = round == 0 ? (0..<length).map { UInt8(truncatingIfNeeded: $0 * 37 + 255) } : (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let foundation = Data(bytes).base64EncodedString()
                #expect(Base64.encode(bytes) == foundation)
                let url = foundation.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
                #expect(Base64.encodeURL(bytes) == url)
            }
        }
    }

    @Test func roundTripsAndNonASCII() {
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
            #expect(Base64.decode(Base64.encodeURL(bytes)) == bytes)
            // What SDKs send is decoded by the fast path, not handed to Foundation.
            #expect(Array(Base64.encode(bytes).utf8).withUnsafeBufferPointer { Base64.decodeRegular($0) } == bytes)
            #expect(Array(Base64.encodeURL(bytes).utf8).withUnsafeBufferPointer { Base64.decodeRegular($0) } == bytes)
            #expect(!Base64.encodeURL(bytes).contains("=") && !Base64.encodeURL(bytes).contains("+"))
        }
        // Non-ASCII input takes the Foundation path: Unicode whitespace skipped, anything else refused.
        #expect(Base64.decode("QUJD\u{00A0}") == Array("ABC".utf8))
        #expect(Base64.decode("QUJDé") == nil)
    }
}
