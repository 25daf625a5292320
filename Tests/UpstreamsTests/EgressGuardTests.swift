import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization
import Testing

@testable import Upstreams

/// A resolver fake: fixed answers per name, and a count of lookups (a second lookup would be a
/// rebinding hole).
final class FakeResolver: HostResolver {
    let answers: [String: [IPAddress]]
    let lookups = Mutex(0)
    init(_ answers: [String: [String]]) { self.answers = answers.mapValues { $0.map { IPAddress.parse($0)! } } }
    func resolve(host: String, port: Int) async throws -> [IPAddress] {
        lookups.withLock { $0 += 1 }
        guard let a = answers[host] else { throw UpstreamError(.unreachable, beforeSend: true, detail: "NXDOMAIN") }
        return a
    }
}

@Suite("Safe egress for http_fetch (SSRF)")
struct EgressGuardTests {
    static let resolver = FakeResolver([
        "example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
        "rebind.test": ["93.184.216.34", "10.0.0.5"],
        "metadata.test": ["169.254.169.254"],
        "v6local.test": ["::1"],
        "mapped.test": ["::ffff:10.1.2.3"],
    ])

    static func transport(_ guard_: EgressGuard = EgressGuard(), resolver: any HostResolver = resolver) throws -> SafeFetchTransport {
        try SafeFetchTransport(egress: guard_, resolver: resolver, tls: .makeClientConfiguration(), connectTimeout: .seconds(1))
    }

    /// Whether the URL is refused: by the URL parser (unusable URL) or by the guard (`egress_denied`).
    static func refused(_ url: String, _ t: SafeFetchTransport) async -> Bool {
        guard let target = try? TargetURL.parse(url) else { return true }
        do {
            _ = try await t.checkedAddresses(for: target)
            return false
        } catch {
            return error.kind == .egressDenied
        }
    }

    static let denied: [String] = [
        "http://127.0.0.1/", "http://127.0.0.1:8080/admin", "http://2130706433/", "http://0177.0.0.1/", "http://00000177.0.0.1/",
        "http://0x7f.1/", "http://0x7f000001/", "http://0x7f.0.0.1/", "http://127.1/", "http://127.0.0.1./", "http://4294967296/",
        "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[0:0:0:0:0:ffff:a9fe:a9fe]/",
        "http://[::ffff:169.254.169.254]/", "http://[::127.0.0.1]/", "http://[64:ff9b::7f00:1]/", "http://[64:ff9b:1::a00:1]/",
        "http://[2002:7f00:1::]/", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "http://[fe80::1]/", "http://[fc00::1]/",
        "http://[fd12:3456::1]/", "http://[::]/", "http://[ff02::1]/", "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/",
        "http://100.127.255.254/", "http://0.0.0.0/", "http://0/", "http://10.0.0.1/", "http://172.16.5.4/", "http://172.31.255.255/",
        "http://192.168.1.1/", "http://224.0.0.1/", "http://255.255.255.255/", "http://198.18.0.1/", "http://[fe80::1%25eth0]/",
        "http://%31%32%37.0.0.1/", "http://example.com@127.0.0.1/", "http://user:pw@169.254.169.254/", "http://127.0.0.1#@example.com/",
        "http://rebind.test/", "http://metadata.test/", "http://v6local.test/", "http://mapped.test/",
    ]

    static let allowed: [String] = [
        "http://example.com/", "https://example.com:8443/x?y=1", "http://example.com:80/", "http://93.184.216.34/",
        "http://8.8.8.8/", "http://[2606:4700::1111]/", "http://1.1.1.1:9090/", "http://172.32.0.1/", "http://100.128.0.1/",
        "http://11.0.0.1/",
    ]

    @Test(arguments: denied)
    func refuses(_ url: String) async throws {
        #expect(await Self.refused(url, try Self.transport()), "\(url) must be refused")
    }

    @Test(arguments: allowed)
    func allows(_ url: String) async throws {
        #expect(!(await Self.refused(url, try Self.transport())), "\(url) must be allowed")
    }

    @Test func theTableIsLargeEnough() {
        #expect(Self.denied.count + Self.allowed.count >= 25)
    }

    @Test(arguments: [
        ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"), ("192.168.257", "192.168.1.1"), ("0xA9FEA9FE", "169.254.169.254"), ("0", "0.0.0.0"),
    ])
    func ipv4SpellingsNormalizeToWhatAClientWouldConnectTo(_ spelling: String, _ dotted: String) {
        #expect(IPAddress.parse(spelling)?.description == dotted)
    }

    @Test(arguments: ["256.0.0.1", "1.2.3.4.5", "08.0.0.1", "1..2", "example.com", "12a", "", "1.2.3.256", "0x1g"])
    func notAnIPv4Literal(_ text: String) {
        #expect(IPAddress.parse(text) == nil)
    }

    @Test func anExplicitlyAllowedRangeIsAllowedButNeverTheSidecarsOwnListener() async throws {
        let g = EgressGuard(
            allowed: [CIDR("127.0.0.0/8")!, CIDR("10.20.0.0/16")!],
            ownListeners: [.init(address: IPAddress.parse("127.0.0.1"), port: 8080), .init(address: nil, port: 9090)])
        let t = try Self.transport(g)
        #expect(!(await Self.refused("http://127.0.0.1:8081/", t)))
        #expect(!(await Self.refused("http://10.20.3.4/", t)))
        #expect(await Self.refused("http://10.21.0.1/", t))
        #expect(await Self.refused("http://127.0.0.1:8080/", t))
        #expect(await Self.refused("http://127.0.0.1:9090/metrics", t))
        #expect(await Self.refused("http://169.254.169.254/", t))
    }

    @Test func cidrParsing() {
        #expect(CIDR("10.0.0.0/8")!.contains(IPAddress.parse("10.255.1.1")!))
        #expect(!CIDR("10.0.0.0/8")!.contains(IPAddress.parse("11.0.0.1")!))
        #expect(CIDR("0.0.0.0/0")!.contains(IPAddress.parse("8.8.8.8")!))
        #expect(CIDR("fc00::/7")!.contains(IPAddress.parse("fdff::1")!))
        #expect(!CIDR("fc00::/7")!.contains(IPAddress.parse("fe00::1")!))
        #expect(!CIDR("10.0.0.0/8")!.contains(IPAddress.parse("::ffff:10.0.0.1")!))
        for bad in ["10.0.0.0", "10.0.0.0/33", "::/129", "0x7f.1/8", "x/8"] { #expect(CIDR(bad) == nil, "\(bad)") }
    }

    @Test func realResolutionOfLocalhostIsRefused() async throws {
        let t = try SafeFetchTransport(egress: EgressGuard(), tls: .makeClientConfiguration(), connectTimeout: .seconds(1))
        let addresses = try await SystemResolver().resolve(host: "localhost", port: 80)
        #expect(!addresses.isEmpty)
        #expect(addresses.allSatisfy { EgressGuard().refusal($0, port: 80) == "loopback" })
        #expect(await Self.refused("http://localhost/", t))
        #expect(await Self.refused("http://LocalHost:9/", t))
        if let dotted = try? await SystemResolver().resolve(host: "localhost.", port: 80) {
            #expect(dotted.allSatisfy { EgressGuard().refusal($0, port: 80) != nil })
        }
    }

    // MARK: Connecting to the checked address

    /// A one-shot HTTP server on 127.0.0.1 answering by path.
    static func server(_ answer: @escaping @Sendable (String) -> String) async throws -> (any Channel, Int) {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(TinyServer(answer: answer))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return (channel, channel.localAddress!.port!)
    }

    final class TinyServer: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let answer: @Sendable (String) -> String
        init(answer: @escaping @Sendable (String) -> String) { self.answer = answer }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .head(let head) = Self.unwrapInboundIn(data) else { return }
            let location = answer(head.uri)
            var headers = HTTPHeaders([("Content-Length", "2"), ("Connection", "close")])
            let status: HTTPResponseStatus = location.isEmpty ? .ok : .found
            if !location.isEmpty { headers.add(name: "Location", value: location) }
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "ok")))), promise: nil)
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
        }
    }

    /// The deadline is far: these tests are about where a call connects, not when it gives up, and the
    /// test process runs CPU-heavy suites beside them on two cores (a task can wait seconds for a thread).
    static func request(_ url: String) throws -> UpstreamRequest {
        let target = try TargetURL.parse(url)
        let call = try HTTPFetchAdapter().interpret(ToolRequest(method: .GET, path: "/fetch", target: target))
        return UpstreamRequest(call: call, method: .GET, url: target, headers: ["Host": target.authority], body: nil, deadline: .now() + .seconds(60))
    }

    @Test func connectsToTheAddressThatWasCheckedWithOneLookup() async throws {
        let (server, port) = try await Self.server { _ in "" }
        defer { server.close(promise: nil) }
        // A name whose first answer is allowed loopback; a second lookup would have returned metadata.
        let resolver = FakeResolver(["site.test": ["127.0.0.1"]])
        let t = try Self.transport(EgressGuard(allowed: [CIDR("127.0.0.0/8")!]), resolver: resolver)
        let response = try await t.send(Self.request("http://site.test:\(port)/page"))
        #expect(response.status == .ok)
        #expect(String(buffer: try await response.body.collect(upTo: 1024)) == "ok")
        #expect(resolver.lookups.withLock { $0 } == 1)
    }

    @Test func redirectsAreNotFollowedByDefaultAndEachFollowedHopIsChecked() async throws {
        let (server, port) = try await Self.server { uri in
            uri == "/to-metadata" ? "http://169.254.169.254/latest/meta-data/" : (uri == "/hop" ? "/final" : "")
        }
        defer { server.close(promise: nil) }
        let allow = EgressGuard(allowed: [CIDR("127.0.0.0/8")!])
        let noFollow = try Self.transport(allow)
        let r = try await noFollow.send(Self.request("http://127.0.0.1:\(port)/to-metadata"))
        #expect(r.status == .found)
        r.body.cancel()

        let follow = try SafeFetchTransport(egress: allow, resolver: Self.resolver, tls: .makeClientConfiguration(), connectTimeout: .seconds(1), maxRedirects: 3)
        let ok = try await follow.send(Self.request("http://127.0.0.1:\(port)/hop"))
        #expect(ok.status == .ok)
        ok.body.cancel()
        await #expect {
            _ = try await follow.send(Self.request("http://127.0.0.1:\(port)/to-metadata"))
        } throws: { ($0 as? UpstreamError)?.kind == .egressDenied }
    }

    /// Fetch connections are kept alive, but each call's own check runs first: an idle connection to an
    /// address is no pass for a call whose check refuses that address (here: the grant that allowed
    /// loopback is the first call's, not the second's).
    @Test func fetchConnectionsAreReusedOnlyAfterTheCallsOwnCheck() async throws {
        let server = try await HTTP1ConnectionPoolTests.ScriptedServer(group: HTTP1ConnectionPoolTests.group)
        defer { server.close() }
        let resolver = FakeResolver(["site.test": ["127.0.0.1"]])
        let t = try SafeFetchTransport(
            egress: EgressGuard(), resolver: resolver, tls: .makeClientConfiguration(), connectTimeout: .seconds(1), group: HTTP1ConnectionPoolTests.group)
        defer { t.shutdown() }
        var granted = try Self.request("http://site.test:\(server.port)/ok")
        granted.egressAllow = [CIDR("127.0.0.0/8")!]
        for _ in 0..<3 {
            let response = try await t.send(granted)
            #expect(String(buffer: try await response.body.collect(upTo: 1024)) == "ok")
        }
        #expect(server.accepted.withLockedValue { $0 } == 1)
        #expect(t.pool.idleCount == 1)
        await #expect {
            _ = try await t.send(Self.request("http://site.test:\(server.port)/ok"))
        } throws: { ($0 as? UpstreamError)?.kind == .egressDenied }
        #expect(server.requests.withLockedValue { $0 }.count == 3)
    }

    /// An IP-literal fetch starts on the loop (no task), checked the same way: refused before anything is
    /// sent, or sent on a kept-alive connection. A name needs its lookup, in `send`.
    @Test func anIPLiteralFetchStartsOnTheLoopAfterTheSameCheck() async throws {
        let server = try await HTTP1ConnectionPoolTests.ScriptedServer(group: HTTP1ConnectionPoolTests.group)
        defer { server.close() }
        let t = try SafeFetchTransport(
            egress: EgressGuard(), resolver: FakeResolver([:]), tls: .makeClientConfiguration(), connectTimeout: .seconds(1),
            group: HTTP1ConnectionPoolTests.group)
        defer { t.shutdown() }
        let loop = HTTP1ConnectionPoolTests.group.next()
        let refused = try #require(t.start(try Self.request("http://127.0.0.1:\(server.port)/ok"), on: loop))
        await #expect { _ = try await refused.response.get() } throws: { ($0 as? UpstreamError)?.kind == .egressDenied }
        var granted = try Self.request("http://127.0.0.1:\(server.port)/ok")
        granted.egressAllow = [CIDR("127.0.0.0/8")!]
        for _ in 0..<2 {
            let started = try #require(t.start(granted, on: loop))
            let response = try await started.response.get()
            #expect(String(buffer: try await response.body.collect(upTo: 1024)) == "ok")
        }
        #expect(server.accepted.withLockedValue { $0 } == 1)
        #expect(t.start(try Self.request("http://site.test:\(server.port)/ok"), on: loop) == nil)
    }

    /// Agents name any host: the origins the fetch pool remembers are bounded, and an evicted origin's
    /// idle connections are closed.
    @Test func theFetchPoolRemembersABoundedNumberOfOrigins() async throws {
        let server = try await HTTP1ConnectionPoolTests.ScriptedServer(group: HTTP1ConnectionPoolTests.group)
        defer { server.close() }
        let names = (0..<8).map { "host\($0).test" }
        let resolver = FakeResolver(Dictionary(uniqueKeysWithValues: names.map { ($0, ["127.0.0.1"]) }))
        let t = try SafeFetchTransport(
            egress: EgressGuard(allowed: [CIDR("127.0.0.0/8")!]), resolver: resolver, tls: .makeClientConfiguration(), connectTimeout: .seconds(1),
            maxOrigins: 3, group: HTTP1ConnectionPoolTests.group)
        defer { t.shutdown() }
        for name in names {
            let response = try await t.send(Self.request("http://\(name):\(server.port)/ok"))
            _ = try await response.body.collect(upTo: 1024)
        }
        #expect(t.pool.originCount <= 3)
        #expect(t.pool.idleCount <= 3)
        for _ in 0..<300 where server.closed.withLockedValue({ $0 }) < 5 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(server.closed.withLockedValue { $0 } >= 5)
    }

    /// Answers with a head promising a megabyte, sends one chunk and then stalls; tells when the
    /// client's connection closes.
    final class StallingServer: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let closed: @Sendable () -> Void
        init(closed: @escaping @Sendable () -> Void) { self.closed = closed }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .head = Self.unwrapInboundIn(data) else { return }
            let headers = HTTPHeaders([("Content-Length", "1000000")])
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            context.writeAndFlush(Self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(repeating: 0x61, count: 4096)))), promise: nil)
        }
        func channelInactive(context: ChannelHandlerContext) { closed() }
    }

    /// Directly, and through a name whose first address refuses the connection (the handler then
    /// serves a second attempt, and the failed one letting go of it must not unlink it).
    @Test(arguments: ["127.0.0.1", "second-address.test"])
    func aBodyTheConsumerGivesUpOnClosesTheFetchConnection(_ host: String) async throws {
        let closedAt = Mutex<ContinuousClock.Instant?>(nil)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(StallingServer { closedAt.withLock { $0 = .now } })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }
        let resolver = FakeResolver(["second-address.test": ["127.0.0.2", "127.0.0.1"]])
        let t = try Self.transport(EgressGuard(allowed: [CIDR("127.0.0.0/8")!]), resolver: resolver)
        // The request's deadline is a minute away: only the cancel can close the connection within the wait.
        let response = try await t.send(Self.request("http://\(host):\(server.localAddress!.port!)/big"))
        #expect(response.status == .ok)
        let cancelled = ContinuousClock.now
        response.body.cancel()
        for _ in 0..<200 where closedAt.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
        let closed = try #require(closedAt.withLock { $0 }, "the fetch connection stayed open after the body was cancelled")
        #expect(closed - cancelled < .seconds(2))
    }
}

/// What a name resolved to is remembered for its TTL (one lookup for many calls), per name whatever its
/// case, never a failure, and for a bounded number of names.
@Suite struct CachingResolverTests {
    final class Clock: Sendable {
        let at = Mutex(ContinuousClock.now)
        func advance(_ d: Duration) { at.withLock { $0 += d } }
        var now: ContinuousClock.Instant { at.withLock { $0 } }
    }

    @Test func remembersForItsTTLOnlyAndNeverAFailure() async throws {
        let base = FakeResolver(["site.test": ["93.184.216.34"], "other.test": ["93.184.216.35"]])
        let clock = Clock()
        let r = CachingResolver(base: base, ttl: .seconds(30), capacity: 1, now: { clock.now })
        for host in ["site.test", "SITE.test", "site.test"] { #expect(try await r.resolve(host: host, port: 80) == [IPAddress.parse("93.184.216.34")!]) }
        #expect(base.lookups.withLock { $0 } == 1)
        clock.advance(.seconds(31))
        _ = try await r.resolve(host: "site.test", port: 80)
        #expect(base.lookups.withLock { $0 } == 2)
        // Capacity 1: another name pushes it out.
        _ = try await r.resolve(host: "other.test", port: 80)
        _ = try await r.resolve(host: "site.test", port: 80)
        #expect(base.lookups.withLock { $0 } == 4)
        for _ in 0..<2 { await #expect(throws: (any Error).self) { _ = try await r.resolve(host: "nx.test", port: 80) } }
        #expect(base.lookups.withLock { $0 } == 6)
    }

    /// Names are folded the way DNS folds them, ASCII only: a KELVIN SIGN is not a `k`, so its name is
    /// never answered with `k.test`'s addresses.
    @Test func onlyASCIICaseIsFolded() async throws {
        let base = FakeResolver(["k.test": ["93.184.216.34"]])
        let r = CachingResolver(base: base, ttl: .seconds(30))
        _ = try await r.resolve(host: "k.test", port: 80)
        _ = try await r.resolve(host: "K.TEST", port: 80)
        #expect(base.lookups.withLock { $0 } == 1)
        await #expect(throws: (any Error).self) { _ = try await r.resolve(host: "\u{212A}.test", port: 80) }
        #expect(base.lookups.withLock { $0 } == 2)
    }

    /// A remembered answer is checked again on every call, under that call's grants: it can be refused
    /// where a fresh one would be, never let through.
    @Test func aRememberedAnswerIsStillCheckedPerCall() async throws {
        let base = FakeResolver(["lab.test": ["10.20.3.4"]])
        let t = try SafeFetchTransport(egress: EgressGuard(), resolver: CachingResolver(base: base, ttl: .seconds(30)), tls: .makeClientConfiguration(), connectTimeout: .seconds(1))
        defer { t.shutdown() }
        let target = try TargetURL.parse("http://lab.test/")
        #expect(try await t.checkedAddresses(for: target, granted: [CIDR("10.20.0.0/16")!]) == [IPAddress.parse("10.20.3.4")!])
        await #expect { _ = try await t.checkedAddresses(for: target) } throws: { ($0 as? UpstreamError)?.kind == .egressDenied }
        #expect(base.lookups.withLock { $0 } == 1)
    }
}
