import Testing

@testable import Upstreams

/// The byte-wise IPv4 reading decides as the general `inet_aton` reading does, for every host: all
/// strings over an alphabet of digits, dots, hex letters, `x`, signs and a name letter up to length 5, and
/// random longer ones shaped like addresses.
@Suite struct IPAddressQuickTests {
    @Test func exhaustiveShortHostsDecideAsTheGeneralParser() {
        let symbols: [Character] = ["0", "1", "2", "5", "9", ".", "x", "a", "+", "-", "g"]
        var strings = [""]
        var disagreements: [String] = []
        for _ in 1...5 {
            strings = strings.flatMap { p in symbols.map { p + String($0) } }
            for s in strings where IPAddress.parseV4(s) != IPAddress.parseV4General(s) { disagreements.append(s) }
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(10))")
    }

    @Test func randomAddressShapedHostsDecideAsTheGeneralParser() {
        var rng = SystemRandomNumberGenerator()
        let pieces = ["0", "00", "1", "01", "10", "127", "255", "256", "999", "0x7f", "0X1", "4294967295", "4294967296", "", "+1", "ab", "é", "٣"]
        for _ in 0..<5000 {
            let s = (0..<Int.random(in: 1...5, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined(separator: ".")
            #expect(IPAddress.parseV4(s) == IPAddress.parseV4General(s), "\(s)")
        }
        for s in ["127.0.0.1", "10.1.2.3", "255.255.255.255", "0.0.0.0", "example.com", "api.openai.com", "1.2.3.4."] {
            #expect(IPAddress.parseV4(s) == IPAddress.parseV4General(s), "\(s)")
        }
    }
}
