import Testing

@testable import Upstreams

/// `upstream.proxy` values: what is taken (user and password percent-decoded), what is refused and
/// why — never saying the value back, which may hold a password.
@Suite("Egress proxy URL")
struct UpstreamProxyTests {
    @Test(arguments: [
        ("http://proxy.corp:3128", UpstreamProxy(host: "proxy.corp", port: 3128)),
        ("HTTP://proxy.corp:3128/", UpstreamProxy(host: "proxy.corp", port: 3128)),
        ("http://10.0.0.1:8080", UpstreamProxy(host: "10.0.0.1", port: 8080)),
        ("http://[fd00::1]:3128", UpstreamProxy(host: "fd00::1", port: 3128)),
        ("http://svc:p%40ss%3Aw@proxy:3128", UpstreamProxy(host: "proxy", port: 3128, username: "svc", password: "p@ss:w")),
        ("http://svc@proxy:3128", UpstreamProxy(host: "proxy", port: 3128, username: "svc", password: "")),
        ("http://a@b:c@proxy:3128", nil),  // an '@' in the password unencoded: the last '@' ends the userinfo, "a@b" is not encoded
    ])
    func taken(_ text: String, _ expected: UpstreamProxy?) {
        switch UpstreamProxy.parse(text) {
        case .success(let p):
            if let expected { #expect(p == expected) } else { #expect(p.host == "proxy" && p.username == "a@b" && p.password == "c") }
        case .failure(let e): Issue.record("\(text): \(e.reason)")
        }
    }

    @Test(arguments: [
        "https://proxy:3128", "socks5://proxy:1080", "proxy:3128", "http://proxy", "http://proxy:0", "http://proxy:99999",
        "http://proxy:31x", "http://proxy:3128/path", "http://proxy:3128?x", "http://:3128", "http://fd00::1:3128", "http://[fd00::1]",
        "http://u:s3cret%zz@proxy:3128", "http://:s3cret@proxy:3128", "http://pro xy:3128", "http://proxy:３１２８",
    ])
    func refused(_ text: String) {
        guard case .failure(let e) = UpstreamProxy.parse(text) else {
            Issue.record("taken: \(text)")
            return
        }
        #expect(!e.reason.contains("s3cret") && !e.reason.contains("proxy:"))
    }

    @Test func itsCredentialsAreNeverPrinted() {
        let p = UpstreamProxy(host: "proxy", port: 3128, username: "svc", password: "s3cret")
        #expect("\(p)" == "http://[credentials]@proxy:3128")
        #expect("\(UpstreamProxy(host: "fd00::1", port: 3128))" == "http://[fd00::1]:3128")
    }
}
