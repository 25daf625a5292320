import Crypto
import NIOConcurrencyHelpers
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Redis for the fleet's shared state: one server, or a Redis Cluster followed by slot.
///
/// Against one server, every command goes to its `RedisNode` (a pipelined connection per event loop).
/// Against a cluster, a command is routed by its key's hash slot (`ClusterRouting`) to the node the slot
/// map names; `MOVED` updates the map and resends, `ASK` resends once after `ASKING`, `TRYAGAIN` and
/// `CLUSTERDOWN` wait and resend (bounded). The map is learnt from `CLUSTER SLOTS` at start, every few
/// seconds, and at once after a redirect or a failed node — which is how a promoted replica is found
/// without a restart. Scripts are loaded on every connection of every node.
final class RedisClient: Sendable {
    let seeds: [RedisEndpoint]
    let cluster: Bool
    let commandTimeout: TimeAmount
    let connectTimeout: TimeAmount
    /// Loaded on every new connection, so `EVALSHA` finds them (a NOSCRIPT reply loads the script on
    /// the node that gave it and sends again).
    let scripts: [LuaScript]
    private let poolSize: Int
    private let observe: @Sendable (Duration?, Bool) -> Void
    /// The one server, when not a cluster: no routing on the common path.
    private let single: RedisNode?
    private let topology = Mutex(Topology())
    /// Redirects and waits one command follows before it gives up (a `TRYAGAIN` lasts as long as its
    /// slot's migration: the waits add up to about half a second).
    private static let maxRedirects = 16

    /// The cluster's slot map and a node (with its connections) per address it has named.
    private struct Topology {
        var map = ClusterSlotMap()
        var nodes: [RedisNode] = []
        var refreshing = false
        var lastRefresh: ContinuousClock.Instant?
    }

    /// The first seed, for logs and single-server callers.
    var endpoint: RedisEndpoint { seeds[0] }

    /// - Parameter observe: called per command with its latency (nil on failure) and whether it failed.
    init(
        seeds: [RedisEndpoint], cluster: Bool = false, poolSize: Int = 2, commandTimeout: Duration = .milliseconds(250),
        connectTimeout: Duration = .milliseconds(500), scripts: [LuaScript] = [],
        observe: @escaping @Sendable (Duration?, Bool) -> Void = { _, _ in }
    ) {
        precondition(!seeds.isEmpty, "a Redis client needs an address")
        self.seeds = seeds
        self.cluster = cluster
        self.scripts = scripts
        self.poolSize = poolSize
        self.commandTimeout = TimeAmount(commandTimeout)
        self.connectTimeout = TimeAmount(connectTimeout)
        self.observe = observe
        single = cluster ? nil : RedisNode(endpoint: seeds[0], poolSize: poolSize, connectTimeout: TimeAmount(connectTimeout), scripts: scripts)
    }

    convenience init(
        endpoint: RedisEndpoint, poolSize: Int = 2, commandTimeout: Duration = .milliseconds(250),
        connectTimeout: Duration = .milliseconds(500), scripts: [LuaScript] = [],
        observe: @escaping @Sendable (Duration?, Bool) -> Void = { _, _ in }
    ) {
        self.init(
            seeds: [endpoint], poolSize: poolSize, commandTimeout: commandTimeout, connectTimeout: connectTimeout, scripts: scripts,
            observe: observe)
    }

    /// Connects every connection of every node at once, best effort (a failure only starts that
    /// connection's backoff), so the first requests already find their loop's connection and take the
    /// loop path; a cluster learns its slot map first. Returns the first failure, for the start-up log.
    @discardableResult
    func connectAll() async -> (any Error)? {
        if let single { return await single.connectAll() }
        if let error = await refreshTopology() { return error }
        let nodes = topology.withLock { t in t.map.masters.map { t.nodes[$0] } }
        for node in nodes {
            if let error = await node.connectAll() { return error }
        }
        return nil
    }

    /// Sends a command and waits for its reply. `route` names the key to route by when the command's
    /// own arguments do not (a `SCAN` of one hash tag's keys); it matters only on a cluster.
    func send(_ args: [String], route: String? = nil) async throws -> RedisValue {
        let start = ContinuousClock.now
        do {
            let reply: RedisValue
            if let single {
                reply = try await single.connection().start(args, timeout: commandTimeout).get()
            } else {
                reply = try await routed(args, key: route ?? ClusterRouting.key(of: args))
            }
            observe(.now - start, false)
            return reply
        } catch {
            observe(nil, true)
            throw error
        }
    }

    /// Sends a command on `loop`'s own connection, without a task: the reply completes the future on
    /// `loop` (connections are made on their loop). nil when that connection is not up (the caller
    /// takes the async path, which connects, backs off and fails fast as `send` does). On a cluster, a
    /// redirect is followed from a task.
    ///
    /// `lazy`: nobody waits for the reply soon; the command may wait up to a millisecond to share a
    /// write with the next (see `RedisOutbound.lazy`).
    func start(_ args: [String], on loop: any EventLoop, lazy: Bool = false) -> EventLoopFuture<RedisValue>? {
        let node: RedisNode
        if let single {
            node = single
        } else {
            guard let n = self.node(for: ClusterRouting.key(of: args)) else { return nil }
            node = n
        }
        guard let live = node.live(on: loop) else { return nil }
        let sent = observed(live.start(args, timeout: commandTimeout, lazy: lazy), since: .now)
        guard single == nil else { return sent }
        return sent.flatMap { reply in
            if case .error(let e) = reply, ClusterRouting.Redirect(e) != nil {
                return loop.makeFutureWithTask { try await self.send(args) }
            }
            return loop.makeSucceededFuture(reply)
        }.flatMapErrorThrowing { error in
            self.refreshSoon()
            throw error
        }
    }

    /// Reports the command's latency (or its failure) when the reply arrives.
    private func observed(_ reply: EventLoopFuture<RedisValue>, since start: ContinuousClock.Instant) -> EventLoopFuture<RedisValue> {
        let observe = self.observe
        reply.whenComplete { result in
            switch result {
            case .success: observe(.now - start, false)
            case .failure: observe(nil, true)
            }
        }
        return reply
    }

    /// Runs a Lua script by SHA, loading it on NOSCRIPT (after a restart or a failover: a promoted
    /// replica has not got the scripts) on the node of its first key.
    func evalsha(_ script: LuaScript, keys: [String], args: [String]) async throws -> RedisValue {
        let reply = try await send(Self.evalsha(script, keys: keys, args: args))
        if case .error(let e) = reply, e.hasPrefix("NOSCRIPT") {
            _ = try await send(["SCRIPT", "LOAD", script.source], route: keys.first)
            return try await send(Self.evalsha(script, keys: keys, args: args))
        }
        if case .error(let e) = reply { throw RedisError.server(e) }
        return reply
    }

    /// `evalsha` on `loop`'s connection without a task (see `start(_:on:)`); a NOSCRIPT reply (rare:
    /// after a restart) is handled by the async `evalsha`, from a task.
    func evalsha(_ script: LuaScript, keys: [String], args: [String], on loop: any EventLoop, lazy: Bool = false) -> EventLoopFuture<RedisValue>? {
        start(Self.evalsha(script, keys: keys, args: args), on: loop, lazy: lazy)?.flatMap { reply in
            switch reply {
            case .error(let e) where e.hasPrefix("NOSCRIPT"):
                return loop.makeFutureWithTask { try await self.evalsha(script, keys: keys, args: args) }
            case .error(let e):
                return loop.makeFailedFuture(RedisError.server(e))
            default:
                return loop.makeSucceededFuture(reply)
            }
        }
    }

    private static func evalsha(_ script: LuaScript, keys: [String], args: [String]) -> [String] {
        ["EVALSHA", script.sha1, String(keys.count)] + keys + args
    }

    /// The keys matching `pattern` (bounded: at most 100 rounds of 1 000), routed by `route` on a cluster
    /// (the pattern's hash tag: `SCAN` sees one node's keys). Stops at the first failure.
    func scan(matching pattern: String, route: String? = nil) async -> [String] {
        var cursor = "0"
        var keys: [String] = []
        for _ in 0..<100 {
            guard let reply = try? await send(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"], route: route),
                let parts = reply.array, parts.count == 2, let next = parts[0].string
            else { break }
            keys += (parts[1].array ?? []).compactMap(\.string)
            cursor = next
            if cursor == "0" { break }
        }
        return keys
    }

    /// Up when every node that serves slots answers (one server: when it answers).
    func ping() async -> Bool {
        if let single { return await Self.pong(single) }
        // The map is kept fresh by the refresher and by redirects; a probe learns it only when it has none.
        if topology.withLock({ $0.map.masters.isEmpty }) { _ = await refreshTopology() }
        let masters = topology.withLock { t in t.map.masters.map { t.nodes[$0] } }
        guard !masters.isEmpty else { return false }
        for node in masters where !(await Self.pong(node)) { return false }
        return true
    }

    private static func pong(_ node: RedisNode) async -> Bool {
        guard let c = try? await node.connection(), case .simple("PONG")? = try? await c.start(["PING"], timeout: node.connectTimeout).get() else {
            return false
        }
        return true
    }

    /// Where a subscriber may listen: on a cluster every node hears every `PUBLISH`, so the masters
    /// known now (then the seeds), in order; a subscriber that loses one tries the next.
    func subscriptionEndpoints() -> [RedisEndpoint] {
        guard cluster else { return seeds }
        let known = topology.withLock { t in t.map.masters.map { t.nodes[$0].endpoint } }
        return known + seeds.filter { !known.contains($0) }
    }

    // MARK: - Cluster

    /// Whether the server at `endpoint` runs in cluster mode, and its version (`INFO`: its default
    /// sections hold both); nil when it cannot be asked (the configured mode stands).
    static func serverInfo(_ endpoint: RedisEndpoint, timeout: TimeAmount) async -> RedisServerInfo? {
        guard let c = try? await RedisConnection.connect(endpoint, timeout: timeout, group: MultiThreadedEventLoopGroup.singleton) else {
            return nil
        }
        defer { c.close() }
        guard let info = try? await c.send(["INFO"], timeout: timeout).string else { return nil }
        return RedisServerInfo(info: info)
    }

    /// The node that serves `key`'s slot (any node for a keyless command); nil before any map is known.
    private func node(for key: String?) -> RedisNode? {
        topology.withLock { t in
            if let key, let i = t.map.node(for: ClusterRouting.slot(of: key)) { return t.nodes[i] }
            if key == nil, let i = t.map.masters.first { return t.nodes[i] }
            return nil
        }
    }

    private func node(at address: ClusterRouting.Address, moved slot: Int? = nil) -> RedisNode {
        topology.withLock { t in
            let i = slot.map { t.map.moved(slot: $0, to: address) } ?? t.map.index(of: address)
            return nodeLocked(&t, i)
        }
    }

    /// The node object for map index `i`, made when the map first names it (the seed's credentials, the
    /// cluster's address).
    private func nodeLocked(_ t: inout Topology, _ i: Int) -> RedisNode {
        while t.nodes.count <= i {
            let address = t.map.nodes[t.nodes.count]
            var endpoint = seeds[0]
            endpoint.host = address.host
            endpoint.port = address.port
            t.nodes.append(RedisNode(endpoint: endpoint, poolSize: poolSize, connectTimeout: connectTimeout, scripts: scripts))
        }
        return t.nodes[i]
    }

    /// A command on a cluster: to the slot's node, following redirects (bounded).
    private func routed(_ args: [String], key: String?) async throws -> RedisValue {
        var target = node(for: key)
        if target == nil {
            _ = await refreshTopology()
            target = node(for: key)
        }
        guard var node = target else { throw RedisError.unavailable("no cluster node serves this slot") }
        var asking = false
        var retriedFailure = false
        for attempt in 1...Self.maxRedirects {
            let reply: RedisValue
            do {
                let c = try await node.connection()
                // ASKING holds for the next command on this connection only: both leave in order.
                let ask = asking ? c.start(["ASKING"], timeout: commandTimeout) : nil
                reply = try await c.start(args, timeout: commandTimeout).get()
                _ = try? await ask?.get()
            } catch {
                // The node is gone (a failover?): learn the map again, in the background and at most every
                // 100 ms (every request meeting the dead node asks at once); a read whose slot has moved
                // meanwhile is safe to send once more.
                refreshSoon()
                guard !retriedFailure, ClusterRouting.isRead(args), let next = self.node(for: key), next !== node else { throw error }
                retriedFailure = true
                node = next
                continue
            }
            guard case .error(let e) = reply, let redirect = ClusterRouting.Redirect(e) else { return reply }
            switch redirect {
            case .moved(let slot, let address):
                node = self.node(at: address, moved: slot)
                asking = false
                refreshSoon()
            case .ask(_, let address):
                node = self.node(at: address)
                asking = true
            case .retryLater:
                try await Task.sleep(for: .milliseconds(min(1 << attempt, 50)))
                node = self.node(for: key) ?? node
                asking = false
            }
        }
        throw RedisError.unavailable("too many cluster redirects")
    }

    /// Learns the slot map from the first node that answers `CLUSTER SLOTS` (known masters first, then
    /// the seeds). Returns the last failure when none did.
    @discardableResult
    func refreshTopology() async -> (any Error)? {
        guard cluster else { return nil }
        let candidates: [RedisNode] = topology.withLock { t in
            let masters = t.map.masters.map { t.nodes[$0] }
            var seen = Set(masters.map(\.endpoint))
            var out = masters
            for seed in seeds where !seen.contains(seed) {
                seen.insert(seed)
                let address = ClusterRouting.Address(host: seed.host, port: seed.port)
                out.append(nodeLocked(&t, t.map.index(of: address)))
            }
            return out
        }
        var failure: (any Error)?
        for node in candidates {
            do {
                let reply = try await node.connection().start(["CLUSTER", "SLOTS"], timeout: commandTimeout).get()
                if case .error(let e) = reply { throw RedisError.server(e) }
                let asked = ClusterRouting.Address(host: node.endpoint.host, port: node.endpoint.port)
                guard let ranges = ClusterRouting.slotRanges(reply, asked: asked), !ranges.isEmpty else {
                    throw RedisError(kind: .protocolError, message: "no slot table from \(asked) (is it a cluster?)")
                }
                topology.withLock { t in
                    t.map.apply(ranges)
                    _ = nodeLocked(&t, max(0, t.map.nodes.count - 1))
                    t.lastRefresh = .now
                }
                return nil
            } catch {
                failure = error
            }
        }
        return failure
    }

    /// A refresh in the background, at most one at a time and one per 100 ms: after a redirect or a
    /// failed node, many requests ask at once.
    func refreshSoon() {
        guard cluster else { return }
        let go = topology.withLock { t in
            if t.refreshing { return false }
            if let last = t.lastRefresh, ContinuousClock.now - last < .milliseconds(100) { return false }
            t.refreshing = true
            return true
        }
        guard go else { return }
        Task {
            _ = await self.refreshTopology()
            self.topology.withLock { $0.refreshing = false }
        }
    }

    /// Keeps the slot map fresh on a cluster (every 5 s; redirects and failures refresh sooner).
    func runTopologyRefresher() async {
        guard cluster else { return }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(5))
            if Task.isCancelled { return }
            _ = await refreshTopology()
        }
    }
}

/// One Redis server's connections: one per event loop (more with a larger pool), made lazily, with
/// reconnect-with-backoff. A command goes out on the connection of the loop it is issued from, so the
/// reply resumes the request on its own loop (no thread hop; on this 2-core VM a hop costs more than the
/// round trip). A slot whose connection failed is not retried before its backoff (50 ms doubling to
/// 2 s) has passed, so a dead Redis costs callers a fast `unavailable` error instead of a connect timeout
/// each — which is what lets the failure policy (fail open / closed) answer quickly.
final class RedisNode: Sendable {
    let endpoint: RedisEndpoint
    let connectTimeout: TimeAmount
    let scripts: [LuaScript]
    private let slots: [Slot]
    private let slotByLoop: [ObjectIdentifier: Slot]
    private let next = Atomic<Int>(0)

    init(endpoint: RedisEndpoint, poolSize: Int, connectTimeout: TimeAmount, scripts: [LuaScript]) {
        self.endpoint = endpoint
        self.connectTimeout = connectTimeout
        self.scripts = scripts
        var slots: [Slot] = []
        var byLoop: [ObjectIdentifier: Slot] = [:]
        for loop in MultiThreadedEventLoopGroup.singleton.makeIterator() {
            for _ in 0..<max(1, poolSize / 2) {
                let slot = Slot(eventLoop: loop)
                slots.append(slot)
                if byLoop[ObjectIdentifier(loop)] == nil { byLoop[ObjectIdentifier(loop)] = slot }
            }
        }
        self.slots = slots
        slotByLoop = byLoop
    }

    /// `loop`'s connection when it is up (no actor hop).
    func live(on loop: any EventLoop) -> RedisConnection? { slotByLoop[ObjectIdentifier(loop)]?.live }

    /// The calling loop's connection (any slot's, off the loops), connecting when needed.
    func connection() async throws -> RedisConnection {
        let slot = MultiThreadedEventLoopGroup.currentEventLoop.flatMap { slotByLoop[ObjectIdentifier($0)] }
            ?? slots[abs(next.wrappingAdd(1, ordering: .relaxed).oldValue % slots.count)]
        if let live = slot.live { return live }
        return try await slot.get(self)
    }

    /// Connects every slot at once, best effort. Returns the first failure.
    func connectAll() async -> (any Error)? {
        await withTaskGroup(of: (any Error)?.self) { group in
            for slot in slots {
                group.addTask {
                    do {
                        _ = try await slot.get(self)
                        return nil
                    } catch { return error }
                }
            }
            var first: (any Error)?
            for await e in group where first == nil { first = e }
            return first
        }
    }

    /// One connection and its reconnect backoff. The live connection is also published in `current`, so
    /// the common case (connected) takes no actor hop.
    actor Slot {
        nonisolated let current = NIOLockedValueBox<RedisConnection?>(nil)
        nonisolated let eventLoop: any EventLoop
        private var connection: RedisConnection?

        init(eventLoop: any EventLoop) { self.eventLoop = eventLoop }

        /// The connection when it is up (no actor hop).
        nonisolated var live: RedisConnection? { current.withLockedValue { $0 }.flatMap { $0.isActive ? $0 : nil } }
        private var connecting: Task<RedisConnection, any Error>?
        private var retryAt: ContinuousClock.Instant = .now
        private var backoff: Duration = .milliseconds(50)

        func get(_ node: RedisNode) async throws -> RedisConnection {
            if let c = connection, c.isActive { return c }
            connection = nil
            if let t = connecting { return try await t.value }
            guard ContinuousClock.now >= retryAt else { throw RedisError.unavailable("reconnecting") }
            let loop = eventLoop
            let task = Task {
                let c = try await RedisConnection.connect(node.endpoint, timeout: node.connectTimeout, group: loop)
                do {
                    for script in node.scripts { _ = try await c.send(["SCRIPT", "LOAD", script.source], timeout: node.connectTimeout) }
                } catch {
                    c.close()
                    throw error
                }
                return c
            }
            connecting = task
            defer { connecting = nil }
            do {
                let c = try await task.value
                connection = c
                current.withLockedValue { $0 = c }
                backoff = .milliseconds(50)
                return c
            } catch {
                retryAt = .now + backoff
                backoff = min(backoff * 2, .seconds(2))
                throw error
            }
        }
    }
}
/// A Lua script and its SHA-1 (what EVALSHA names).
struct LuaScript: Sendable {
    let source: String
    let sha1: String

    init(_ source: String) {
        self.source = source
        sha1 = Insecure.SHA1.hash(data: Array(source.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}

import Foundation
