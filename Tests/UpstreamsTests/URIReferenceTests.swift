import Testing

@testable import Upstreams

/// RFC 3986 §5.4's own examples, against its base `http://a/b/c/d;p?q`.
@Suite("RFC 3986 reference resolution")
struct URIReferenceTests {
    static let base = "http://a/b/c/d;p?q"

    @Test(arguments: [
        // §5.4.1 normal examples
        ("g:h", "g:h"), ("g", "http://a/b/c/g"), ("./g", "http://a/b/c/g"), ("g/", "http://a/b/c/g/"), ("/g", "http://a/g"),
        ("//g", "http://g"), ("?y", "http://a/b/c/d;p?y"), ("g?y", "http://a/b/c/g?y"), ("#s", "http://a/b/c/d;p?q#s"),
        ("g#s", "http://a/b/c/g#s"), ("g?y#s", "http://a/b/c/g?y#s"), (";x", "http://a/b/c/;x"), ("g;x", "http://a/b/c/g;x"),
        ("g;x?y#s", "http://a/b/c/g;x?y#s"), ("", "http://a/b/c/d;p?q"), (".", "http://a/b/c/"), ("./", "http://a/b/c/"),
        ("..", "http://a/b/"), ("../", "http://a/b/"), ("../g", "http://a/b/g"), ("../..", "http://a/"), ("../../", "http://a/"),
        ("../../g", "http://a/g"),
        // §5.4.2 abnormal examples
        ("../../../g", "http://a/g"), ("../../../../g", "http://a/g"), ("/./g", "http://a/g"), ("/../g", "http://a/g"),
        ("g.", "http://a/b/c/g."), (".g", "http://a/b/c/.g"), ("g..", "http://a/b/c/g.."), ("..g", "http://a/b/c/..g"),
        ("./../g", "http://a/b/g"), ("./g/.", "http://a/b/c/g/"), ("g/./h", "http://a/b/c/g/h"), ("g/../h", "http://a/b/c/h"),
        ("g;x=1/./y", "http://a/b/c/g;x=1/y"), ("g;x=1/../y", "http://a/b/c/y"), ("g?y/./x", "http://a/b/c/g?y/./x"),
        ("g?y/../x", "http://a/b/c/g?y/../x"), ("g#s/./x", "http://a/b/c/g#s/./x"), ("g#s/../x", "http://a/b/c/g#s/../x"),
        ("http:g", "http:g"),  // strict parsers
    ])
    func rfcExamples(reference: String, expected: String) {
        #expect(URIReference.resolve(reference, against: Self.base) == expected)
    }

    @Test func redirectsGoWhereTheLocationSays() throws {
        let base = try TargetURL.parse("https://origin.example:8443/a/b?q=1")
        #expect(base.resolving("//other.example:9443/x?y")?.description == "https://other.example:9443/x?y")
        #expect(base.resolving("//other.example/x")?.host == "other.example")
        #expect(base.resolving("/p/../q")?.description == "https://origin.example:8443/q")
        #expect(base.resolving("c/./d")?.description == "https://origin.example:8443/a/c/d")
        #expect(base.resolving("http://plain.example/")?.description == "http://plain.example/")
        #expect(base.resolving("ftp://files.example/") == nil)  // not a destination the sidecar goes to
        #expect(base.resolving("javascript:alert(1)") == nil)
        #expect(base.resolving("//user@evil.example/") == nil)  // userinfo: not followed, handed to the agent
    }
}
