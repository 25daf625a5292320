import Testing

@testable import Upstreams

@Suite("A brokered path's free segment")
struct PathSegmentTests {
    @Test(arguments: [
        ("me", true), ("agent@example.com", true), ("agent%40example.com", true), ("agent%40Example.com", true),
        ("a.b+c_d-e", true), ("", false), (".", false), ("..", false), ("...", false), ("%2e%2e", false), ("..%2F..%2Fdrive", false),
        ("a%2Fb", false), ("a%4", false), ("a%", false), ("a b", false), ("a/b", false), ("a;b", false), ("ü", false),
        (String(repeating: "m", count: 320), true), (String(repeating: "m", count: 321), false),
    ])
    func gmailUserID(segment: String, valid: Bool) {
        #expect(PathSegment.isID(Substring(segment), extra: Array("._+-@".utf8), escapes: [UInt8(ascii: "@")], maxBytes: 320) == valid)
    }

    @Test func escapesAreAllowedOnlyForWhatIsNamed() {
        #expect(!PathSegment.isID("a%40b", extra: [], maxBytes: 64))
        #expect(PathSegment.isID("a%40b", extra: [], escapes: [UInt8(ascii: "@")], maxBytes: 64))
        #expect(!PathSegment.isID("a%2Fb", extra: [], escapes: [UInt8(ascii: "@")], maxBytes: 64))
    }
}
