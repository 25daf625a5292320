import NIOCore
import NIOEmbedded
import NIOSSL
import Testing

@testable import Sidecar

/// The ALPN offer read from real ClientHellos (made by BoringSSL through NIOSSL, as an agent's TLS stack
/// makes them), fed whole, byte by byte, and mutated.
@Suite("Interception: a ClientHello's ALPN offer")
struct ClientHelloProtocolsTests {
    static func clientHello(alpn: [String], host: String = "api.openai.com") throws -> [UInt8] {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.applicationProtocols = alpn
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: NIOSSLContext(configuration: tls), serverHostname: host))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        var out: [UInt8] = []
        while let b = try channel.readOutbound(as: ByteBuffer.self) { out += Array(b.readableBytesView) }
        return out
    }

    static func read(_ bytes: [UInt8]) -> ClientHelloProtocols.Reading {
        ClientHelloProtocols.read(ByteBuffer(bytes: bytes).readableBytesView)
    }

    @Test(arguments: [
        ([String](), nil as [String]?, true), (["h2"], ["h2"], false), (["h2", "http/1.1"], ["h2", "http/1.1"], true),
        (["http/1.1"], ["http/1.1"], true), (["http/1.0"], ["http/1.0"], true), (["spdy/3", "h2"], ["spdy/3", "h2"], false),
    ])
    func offerAndDecision(alpn: [String], offered: [String]?, serves: Bool) throws {
        let hello = try Self.clientHello(alpn: alpn)
        #expect(hello.first == 22 && hello.count > 100)
        #expect(Self.read(hello) == .offered(offered))
        #expect(ClientHelloProtocols.speaksHTTP1(offered) == serves)
        // As it may arrive: a byte at a time, undecided until the record is whole.
        for n in [0, 1, 4, 5, hello.count / 2, hello.count - 1] { #expect(Self.read(Array(hello.prefix(n))) == .needMore, "\(n) bytes") }
    }

    @Test func whatIsNotAClientHelloIsLeftToTheTLSStack() {
        for bytes: [UInt8] in [Array("GET / HTTP/1.1\r\n\r\n".utf8), [21, 3, 3, 0, 2, 2, 40], [22, 3, 1, 0xFF, 0xFF] + [UInt8](repeating: 0, count: 10)] {
            #expect(Self.read(bytes) == .offered(nil))
        }
        // A handshake record of something else than a ClientHello, or cut short inside.
        #expect(Self.read([22, 3, 1, 0, 4, 2, 0, 0, 0]) == .offered(nil))
    }

    /// Every single-byte change and every truncation of the record's length field still decides without
    /// a trap; a change outside the ALPN extension decides as before.
    @Test func mutatedHellosNeverTrap() throws {
        let hello = try Self.clientHello(alpn: ["h2"])
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<4_000 {
            var m = hello
            let i = Int.random(in: 5..<m.count, using: &generator)
            m[i] = UInt8.random(in: 0...255, using: &generator)
            _ = Self.read(m)
        }
        for cut in stride(from: 0, to: hello.count - 5, by: 7) {
            var m = Array(hello.prefix(5 + cut))
            m[3] = UInt8(cut >> 8)
            m[4] = UInt8(cut & 0xFF)
            _ = Self.read(m)
        }
    }
}
