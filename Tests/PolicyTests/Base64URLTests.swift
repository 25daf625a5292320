import Foundation
import Testing

@testable import Policy

/// The byte-wise base64url encoder writes exactly what the Foundation round trip it replaced wrote, for
/// every length class and every byte, and what it writes decodes back.
@Suite struct Base64URLTests {
    /// The replaced implementation, kept as the reference.
    static func reference(_ bytes: [UInt8]) -> String {
        var s = Data(bytes).base64EncodedString()
        s = s.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        while s.last == "=" { s.removeLast() }
        return s
    }

    @Test func encodesAsTheFoundationRoundTripDid() {
        var rng = SystemRandomNumberGenerator()
        var cases: [[UInt8]] = [[], [0], [255], [0xFB, 0xFF], [0xFB, 0xFF, 0xBF], Array(0...255)]
        for n in 0..<80 { cases.append((0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }) }
        for bytes in cases {
            let encoded = Base64URL.encode(bytes)
            #expect(encoded == Self.reference(bytes), "\(bytes)")
            #expect(Base64URL.decode(encoded) == bytes, "\(bytes)")
        }
        #expect(Base64URL.encode("hi?>") == "aGk_Pg")
    }
}
