import Crypto
import NIOConcurrencyHelpers
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A small pool of pipelined Redis connections with timeouts and reconnect-with-backoff: one connection
/// per event loop, and a command goes out on the connection of the loop it is issued from, so the reply
/// resumes the request on its own loop (no thread hop; on this 2-core VM a hop costs more than the
/// round trip).
///
/// Connections are made lazily; a slot whose connection failed is not retried before its backoff
/// (50 ms doubling to 2 s) has passed, so a dead Redis costs callers a fast `unavailable` error instead of
/// a connect timeout each — which is what lets the failure policy (fail open / closed) answer quickly.
final class RedisClient: Sendable {
    let endpoint: RedisEndpoint
    let commandTimeout: TimeAmount
    let connectTimeout: TimeAmount
    private let slots: [Slot]
    private let slotByLoop: [ObjectIdentifier: Slot]
    private let next = Atomic<Int>(0)
    private let observe: @Sendable (Duration?, Bool) -> Void
    /// Loaded on every new connection, so `EVALSHA` finds them (a NOSCRIPT reply on the loop path is
    /// retried from a task, after later commands on that connection).
    let scripts: [LuaScript]

    /// - Parameter observe: called per command with its latency (nil on failure) and whether it failed.
    init(
        endpoint: RedisEndpoint, poolSize: Int = 2, commandTimeout: Duration = .milliseconds(250),
        connectTimeout: Duration = .milliseconds(500), scripts: [LuaScript] = [],
        observe: @escaping @Sendable (Duration?, Bool) -> Void = { _, _ in }
    ) {
        self.scripts = scripts
        self.endpoint = endpoint
        self.commandTimeout = TimeAmount(commandTimeout)
        self.connectTimeout = TimeAmount(connectTimeout)
        self.observe = observe
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

        func get(_ client: RedisClient) async throws -> RedisConnection {
            if let c = connection, c.isActive { return c }
            connection = nil
            if let t = connecting { return try await t.value }
            guard ContinuousClock.now >= retryAt else { throw RedisError.unavailable("reconnecting") }
            let loop = eventLoop
            let task = Task {
                let c = try await RedisConnection.connect(client.endpoint, timeout: client.connectTimeout, group: loop)
                do {
                    for script in client.scripts { _ = try await c.send(["SCRIPT", "LOAD", script.source], timeout: client.connectTimeout) }
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

    /// Connects every slot at once, best effort (a failure only starts that slot's backoff), so the
    /// first requests already find their loop's connection and take the loop path. Returns the first
    /// failure, for the start-up log.
    @discardableResult
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

    func send(_ args: [String]) async throws -> RedisValue {
        let start = ContinuousClock.now
        let slot = MultiThreadedEventLoopGroup.currentEventLoop.flatMap { slotByLoop[ObjectIdentifier($0)] }
            ?? slots[abs(next.wrappingAdd(1, ordering: .relaxed).oldValue % slots.count)]
        let connection: RedisConnection
        if let live = slot.live {
            connection = live
        } else {
            do { connection = try await slot.get(self) } catch {
                observe(nil, true)
                throw error
            }
        }
        return try await observed(connection.start(args, timeout: commandTimeout), since: start).get()
    }

    /// Sends a command on `loop`'s own connection, without a task: the reply completes the future on
    /// `loop` (the slot's connections are made on its loop). nil when that connection is not up (the
    /// caller takes the async path, which connects, backs off and fails fast as `send` does).
    ///
    /// `lazy`: nobody waits for the reply soon; the command may wait up to a millisecond to share a
    /// write with the next (see `RedisOutbound.lazy`).
    func start(_ args: [String], on loop: any EventLoop, lazy: Bool = false) -> EventLoopFuture<RedisValue>? {
        guard let live = slotByLoop[ObjectIdentifier(loop)]?.live else { return nil }
        return observed(live.start(args, timeout: commandTimeout, lazy: lazy), since: .now)
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

    /// Runs a Lua script by SHA, loading it on NOSCRIPT (after a Redis restart or failover).
    func evalsha(_ script: LuaScript, keys: [String], args: [String]) async throws -> RedisValue {
        let reply = try await send(Self.evalsha(script, keys: keys, args: args))
        if case .error(let e) = reply, e.hasPrefix("NOSCRIPT") {
            _ = try await send(["SCRIPT", "LOAD", script.source])
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

    func ping() async -> Bool {
        if case .simple("PONG")? = try? await send(["PING"]) { return true }
        return false
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
