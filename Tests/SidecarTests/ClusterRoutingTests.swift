import Testing

@testable import Sidecar

/// The cluster rules a client must get exactly right: a wrong slot is a MOVED on every request.
/// Expected slots are what `CLUSTER KEYSLOT` answers on redis-server 7.0.
@Suite struct ClusterRoutingTests {
    @Test(arguments: [
        ("foo", 12182), ("bar", 5061), ("hello", 866), ("somekey", 11058), ("123456789", 12739),
        ("{user1000}.following", 3443), ("{}x", 10595), ("a{}b{c}", 7353), ("{sidecar}:agents", 6817), ("x{y", 2740),
    ])
    func slotOfKey(key: String, slot: Int) {
        #expect(ClusterRouting.slot(of: key) == slot)
    }

    @Test func keysOfOneTagShareASlot() {
        #expect(ClusterRouting.slot(of: "{a:agent-1}:c") == ClusterRouting.slot(of: "{a:agent-1}:q:day:20261206"))
        #expect(ClusterRouting.slot(of: "{sidecar}:agents") == ClusterRouting.slot(of: "{sidecar}:epoch"))
    }

    @Test(arguments: [
        (["GET", "k"], "k"), (["EVALSHA", "abc", "2", "k1", "k2", "x"], "k1"), (["EVALSHA", "abc", "0", "x"], nil),
        (["PUBLISH", "ch", "m"], nil), (["PING"], nil), (["SCRIPT", "LOAD", "return 1"], nil), (["ZREM", "z", "m"], "z"),
        (["SCAN", "0", "MATCH", "{breaker}:*"], nil), ([], nil), (["EVAL", "s", "x"], nil),
    ] as [([String], String?)])
    func routingKey(args: [String], key: String?) {
        #expect(ClusterRouting.key(of: args) == key)
    }

    @Test func redirects() {
        typealias A = ClusterRouting.Address
        #expect(ClusterRouting.Redirect("MOVED 3999 127.0.0.1:6381") == .moved(slot: 3999, to: A(host: "127.0.0.1", port: 6381)))
        #expect(ClusterRouting.Redirect("ASK 3999 10.0.0.2:7000") == .ask(slot: 3999, to: A(host: "10.0.0.2", port: 7000)))
        #expect(ClusterRouting.Redirect("MOVED 1 ::1:7000") == .moved(slot: 1, to: A(host: "::1", port: 7000)))
        #expect(ClusterRouting.Redirect("TRYAGAIN Multiple keys request during rehashing of slot") == .retryLater)
        #expect(ClusterRouting.Redirect("CLUSTERDOWN The cluster is down") == .retryLater)
        for bad in ["MOVED 16384 h:1", "MOVED x h:1", "MOVED 1 h", "MOVED 1 h:0", "ERR wrong", "NOSCRIPT No matching script", "ASK 1 h:1 extra"] {
            #expect(ClusterRouting.Redirect(bad) == nil, "\(bad)")
        }
    }

    @Test func slotTable() {
        let asked = ClusterRouting.Address(host: "10.1.1.1", port: 7000)
        func node(_ host: String, _ port: Int64) -> RedisValue { .array([.bulk(Array(host.utf8)), .integer(port), .bulk(Array("id".utf8))]) }
        let reply = RedisValue.array([
            .array([.integer(0), .integer(5460), node("127.0.0.1", 7001), node("127.0.0.1", 7004)]),
            .array([.integer(5461), .integer(16383), node("", 7002)]),
        ])
        let ranges = ClusterRouting.slotRanges(reply, asked: asked)
        #expect(ranges == [
            .init(first: 0, last: 5460, master: .init(host: "127.0.0.1", port: 7001)),
            .init(first: 5461, last: 16383, master: .init(host: "10.1.1.1", port: 7002)),
        ])
        #expect(ClusterRouting.slotRanges(.error("ERR This instance has cluster support disabled"), asked: asked) == nil)
        #expect(ClusterRouting.slotRanges(.array([.array([.integer(5), .integer(2), node("h", 1)])]), asked: asked) == nil)

        var map = ClusterSlotMap()
        map.apply(ranges!)
        #expect(map.node(for: 0) == 0 && map.node(for: 16383) == 1 && map.masters == [0, 1])
        let moved = map.moved(slot: 7, to: .init(host: "127.0.0.1", port: 7003))
        #expect(moved == 2 && map.node(for: 7) == 2 && map.node(for: 8) == 0)
        map.apply([.init(first: 0, last: 100, master: .init(host: "127.0.0.1", port: 7002))])
        #expect(map.node(for: 101) == nil)
    }

    @Test func locations() {
        let one = RedisLocation.parse("redis://:pw@cache:6380/2")
        #expect(one?.cluster == false && one?.seeds.first?.database == 2 && one?.seeds.first?.password == "pw")
        let seeds = RedisLocation.parse("redis+cluster://u:p%40@10.0.0.1:7000,10.0.0.2:7001")
        #expect(seeds?.cluster == true && seeds?.seeds.map(\.port) == [7000, 7001] && seeds?.seeds.allSatisfy { $0.password == "p@" } == true)
        #expect(RedisLocation.parse("redis://a:1", cluster: true)?.cluster == true)
        let v6 = RedisLocation.parse("redis://:50%25off@[::1]:7000")?.seeds.first
        #expect(v6?.host == "::1" && v6?.port == 7000 && v6?.password == "50%off")
        #expect("\(seeds!)" == "redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
        for bad in ["redis://a:1,b:2", "redis+cluster://a:1/3", "redis+cluster://a:1,", "http://a", "redis+cluster://", "rediss+cluster://a:1/3", "redisss://a",
            // Hosts that are neither an IP literal nor a name, and a password whose `%` escapes nothing: a
            // configuration error, not a lookup or a NOAUTH at run time.
            "redis://local host:6379", "redis://:pw@[::1", "redis://:pw@[::1:6379", "redis://h_ost!:1", "redis://:50%off@cache:6379",
            "redis://us%zz:pw@cache", "redis+cluster://a:1,b c:2"] {
            #expect(RedisLocation.parse(bad) == nil, "\(bad)")
        }
    }

    /// `rediss://` and `rediss+cluster://` run TLS on every connection, seeds and (inheriting the seed)
    /// the nodes a cluster names later; the plain schemes never do.
    @Test func tlsLocations() {
        let one = RedisLocation.parse("rediss://:pw@cache.example:6380/2")
        #expect(one?.secure == true && one?.cluster == false && one?.seeds.first?.database == 2 && one?.seeds.first?.password == "pw")
        #expect("\(one!)" == "rediss://***@cache.example:6380/2")
        let seeds = RedisLocation.parse("rediss+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001")
        #expect(seeds?.cluster == true && seeds?.seeds.allSatisfy(\.secure) == true && "\(seeds!)" == "rediss+cluster://10.0.0.1:7000,10.0.0.2:7001")
        #expect(RedisLocation.parse("rediss://a:1", cluster: true)?.seeds.first?.secure == true)
        #expect(RedisLocation.parse("redis://a:1")?.secure == false && RedisLocation.parse("redis+cluster://a:1")?.secure == false)
    }
}
