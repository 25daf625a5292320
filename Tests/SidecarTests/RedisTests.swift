import Foundation
import Logging
import Policy
import NIOPosix
import Testing

@testable import Sidecar

/// A real `redis-server` on a free loopback port, stopped by PID when the test ends.
final class RedisServer: @unchecked Sendable {
    let port: Int
    private let process = Process()

    init() throws {
        port = Self.freePort()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        process.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    var url: String { "redis://127.0.0.1:\(port)/0" }

    /// Waits for the port to accept connections before the client tries it: a client slot that tried
    /// too early backs off (50 ms and more) and would fail the test's first commands on that slot.
    func waitUntilUp(_ client: RedisClient) async throws {
        for _ in 0..<200 {
            if Self.accepts(port), await client.ping() { return }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw RedisError.unavailable("redis-server did not start")
    }

    static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let len = socklen_t(MemoryLayout<sockaddr_in>.size)
        return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) } } == 0
    }

    /// Kills by PID and polls briefly (Foundation's `waitUntilExit` can hang inside async tests on Linux).
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        for _ in 0..<100 where process.isRunning { usleep(10_000) }
    }

    deinit { stop() }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static var available: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/redis-server") }
}

@Suite("Redis", .enabled(if: RedisServer.available, "redis-server is not installed (apt-get install redis-server)"))
struct RedisTests {
    /// A limit store on `server`, once the server answers.
    static func limitStore(_ server: RedisServer) async throws -> RedisLimitStore {
        let client = Self.client(server)
        try await server.waitUntilUp(client)
        return RedisLimitStore(redis: client, failure: .init(), metrics: GatewayMetrics(), logger: Logger(label: "t"))
    }

    /// `scripts`: loaded on every connection, as the sidecar does.
    static func client(_ server: RedisServer, scripts: [LuaScript] = []) -> RedisClient {
        RedisClient(endpoint: RedisEndpoint.parse(server.url)!, commandTimeout: .milliseconds(500), scripts: scripts)
    }

    @Test func endpointParsing() {
        let e = RedisEndpoint.parse("redis://user:p%40ss@cache.internal:6380/3")!
        #expect(e.host == "cache.internal" && e.port == 6380 && e.username == "user" && e.password == "p@ss" && e.database == 3)
        #expect(!e.description.contains("p@ss"))
        #expect(RedisEndpoint.parse("redis://:secret@127.0.0.1")?.password == "secret")
        #expect(RedisEndpoint.parse("http://x") == nil && RedisEndpoint.parse("redis://h:99999") == nil)
    }

    @Test func identityStoreContract() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let client = Self.client(server)
        try await server.waitUntilUp(client)
        try await IdentityStoreContract.run(RedisIdentityStore(redis: client))
    }

    /// The Lua script and `LimitState` must agree: the same sequence of admissions gives the same answers.
    @Test func scriptMatchesTheEmbeddedSemantics() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let store = try await Self.limitStore(server)
        let quota = LimitCheck.hourLeftQuota("q:serpapi:search:day", limit: 5)
        var rate = LimitCheck(kind: .rate, mode: .enforce, key: "r:serpapi:search", limit: 1000)
        rate.periodMilliseconds = 1000
        rate.burst = 1000
        let conc = LimitCheck(kind: .concurrency, mode: .enforce, key: "c", limit: 3)
        var local = LimitState()
        var admissions: [Admission] = []
        for i in 0..<8 {
            let r = try await store.admit(agent: "agt", checks: [conc, rate, quota], leaseID: "l\(i)")
            let l = local.admit(agent: "agt", checks: [conc, rate, quota], leaseID: "l\(i)", now: Int64(Date().timeIntervalSince1970 * 1000))
            #expect(r.admitted == l.admitted, "request \(i)")
            #expect(r.results.map(\.allowed) == l.results.map(\.allowed), "request \(i)")
            #expect(r.results[2].remaining == l.results[2].remaining, "request \(i)")
            if r.admitted { admissions.append(r) }
            if i % 2 == 1, let first = admissions.first {
                admissions.removeFirst()
                let s = Settlement(checks: [conc, rate, quota], admission: first, outcome: .completed(usage: nil))
                try await store.settle(agent: "agt", s)
                local.settle(agent: "agt", Settlement(checks: [conc, rate, quota], admission: Admission(admitted: true, results: first.results, leaseID: first.leaseID), outcome: .completed(usage: nil)), now: 0)
            }
        }
    }

    /// Freeing a lease alone is a plain ZREM; a refund goes through the settle script. Both must free
    /// the slot, and only the refund gives the quota back.
    @Test func settlementsFreeTheLeaseAndRefundTheQuota() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let store = try await Self.limitStore(server)
        let conc = LimitCheck(kind: .concurrency, mode: .enforce, key: "c", limit: 1)
        let quota = LimitCheck.hourLeftQuota("q", limit: 10)
        let first = try await store.admit(agent: "s", checks: [conc, quota], leaseID: "1")
        #expect(first.admitted && first.results[1].remaining == 9)
        #expect(try await !store.admit(agent: "s", checks: [conc, quota], leaseID: "2").admitted, "the only slot is taken")
        try await store.settle(agent: "s", Settlement(checks: [conc, quota], admission: first, outcome: .completed(usage: nil)))
        let second = try await store.admit(agent: "s", checks: [conc, quota], leaseID: "3")
        #expect(second.admitted && second.results[1].remaining == 8, "completed: slot free, quota kept")
        try await store.settle(agent: "s", Settlement(checks: [conc, quota], admission: second, outcome: .refunded))
        let third = try await store.admit(agent: "s", checks: [conc, quota], leaseID: "4")
        #expect(third.admitted && third.results[1].remaining == 8, "refunded: slot free, quota given back")
    }

    /// The loop path (no task): nil until the loop's connection is up; then the same decisions, and a
    /// settlement sent without waiting is in effect for the next command on that connection (the
    /// scripts were loaded when it connected, so no NOSCRIPT retry reorders them).
    @Test func theLoopPathDecidesAndSettlesAsTheAsyncOne() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let client = Self.client(server, scripts: [AdmissionScripts.admit, AdmissionScripts.settle])
        let store = RedisLimitStore(redis: client, failure: .init(), metrics: GatewayMetrics(), logger: Logger(label: "t"))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let conc = LimitCheck(kind: .concurrency, mode: .enforce, key: "c", limit: 1)
        let quota = LimitCheck.hourLeftQuota("q", limit: 10)
        #expect(store.admit(agent: "l", checks: [conc, quota], leaseID: "0", on: loop) == nil, "no connection yet: the async path")
        try await server.waitUntilUp(client)
        await client.connectAll()
        func admit(_ lease: String) async throws -> Admission {
            try await loop.flatSubmit { store.admit(agent: "l", checks: [conc, quota], leaseID: lease, on: loop)! }.get()
        }
        let first = try await admit("1")
        #expect(first.admitted && first.results[1].remaining == 9)
        #expect(try await !admit("2").admitted, "the only slot is taken")
        store.settleSoon(agent: "l", Settlement(checks: [conc, quota], admission: first, outcome: .completed(usage: nil)), on: loop)
        let third = try await admit("3")
        #expect(third.admitted && third.results[1].remaining == 8, "completed: slot free, quota kept")
        store.settleSoon(agent: "l", Settlement(checks: [conc, quota], admission: third, outcome: .refunded), on: loop)
        let fourth = try await admit("4")
        #expect(fourth.admitted && fourth.results[1].remaining == 8, "refunded: slot free, quota given back")
        // The async path agrees with what the loop path counted.
        #expect(try await !store.admit(agent: "l", checks: [conc, quota], leaseID: "5").admitted)
    }

    /// A lease release sent without waiting is lazy (it shares the next command's write); with no next
    /// command it still leaves, within the lazy delay — seen here from another client's connection.
    @Test func aLazyReleaseLeavesOnItsOwn() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let client = Self.client(server, scripts: [AdmissionScripts.admit, AdmissionScripts.settle])
        let store = RedisLimitStore(redis: client, failure: .init(), metrics: GatewayMetrics(), logger: Logger(label: "t"))
        try await server.waitUntilUp(client)
        await client.connectAll()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let conc = LimitCheck(kind: .concurrency, mode: .enforce, key: "c", limit: 1)
        let first = try await loop.flatSubmit { store.admit(agent: "z", checks: [conc], leaseID: "1", on: loop)! }.get()
        #expect(first.admitted)
        let observer = Self.client(server)
        #expect(try await observer.send(["ZCARD", "{a:z}:c"]).int == 1)
        store.settleSoon(agent: "z", Settlement(checks: [conc], admission: first, outcome: .completed(usage: nil)), on: loop)
        var held: Int64? = 1
        for _ in 0..<100 where held != 0 {
            try await Task.sleep(for: .milliseconds(10))
            held = try await observer.send(["ZCARD", "{a:z}:c"]).int
        }
        #expect(held == 0)
    }

    @Test func noscriptIsHandledByReloading() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let store = try await Self.limitStore(server)
        let c = LimitCheck(kind: .concurrency, mode: .enforce, key: "c", limit: 1)
        #expect(try await store.admit(agent: "a", checks: [c], leaseID: "1").admitted)
        _ = try await store.redis.send(["SCRIPT", "FLUSH"])
        #expect(try await !store.admit(agent: "a", checks: [c], leaseID: "2").admitted, "still decided, after reloading the script")
    }

    @Test func failurePolicyWhenRedisIsDown() async throws {
        let server = try RedisServer()
        let client = Self.client(server)
        try await server.waitUntilUp(client)
        let metrics = GatewayMetrics()
        let store = RedisLimitStore(redis: client, failure: .init(), metrics: metrics, logger: Logger(label: "t"))
        server.stop()
        var rate = LimitCheck(kind: .rate, mode: .enforce, key: "r", limit: 2)
        rate.periodMilliseconds = 60_000
        rate.burst = 2
        // Rate limits fall back to this host's own limiter at the same rate.
        let outcomes = try await (0..<4).asyncMap { i in try await store.admit(agent: "a", checks: [rate], leaseID: "\(i)").admitted }
        #expect(outcomes == [true, true, false, false])
        // Quotas fail closed.
        var quota = LimitCheck(kind: .quota, mode: .enforce, key: "q", limit: 10)
        quota.window = .init(currentID: "w", currentEnd: .max / 2, nextID: "w2", nextEnd: .max / 2 + 1)
        await #expect(throws: StateUnavailable.self) { try await store.admit(agent: "a", checks: [quota], leaseID: "q") }
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        #expect(text.contains(#"gateway_state_fallback_total{class="rate"} 4"#))
        #expect(text.contains(#"gateway_state_fallback_total{class="quota"} 1"#))
    }
}

extension Sequence {
    func asyncMap<T>(_ f: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await f(e)) }
        return out
    }
}
