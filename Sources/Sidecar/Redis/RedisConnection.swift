import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Upstreams

/// One outgoing command with the promise its reply completes and the time by which it must.
struct RedisOutbound {
    var bytes: ByteBuffer
    var promise: EventLoopPromise<RedisValue>?
    var deadline: NIODeadline = .distantFuture
    /// Nobody waits for the reply soon (a lease release): it leaves with the next command that is
    /// waited for, or within `RedisChannelHandler.lazyFlushDelay`, instead of in a write of its own.
    var lazy = false
}

/// Pipelines commands on one connection: replies complete promises in order. In subscriber mode,
/// replies without a waiting command (published messages) go to `onPush`.
final class RedisChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisOutbound
    typealias OutboundOut = ByteBuffer

    private let reader = HiredisReader()
    private var pending = CircularBuffer<(promise: EventLoopPromise<RedisValue>, deadline: NIODeadline)>(initialCapacity: 16)
    private let onPush: (@Sendable (RedisValue) -> Void)?
    private var timer: RepeatedTask?
    private let deferredFlush = DeferredFlush()
    private var lazyFlush: Scheduled<Void>?
    /// How long a lazy command may wait for company. A lease release held this long frees its slot
    /// that much later for other hosts; on this host the next command on the connection follows it.
    static let lazyFlushDelay = TimeAmount.milliseconds(1)

    /// Why the connection failed, when TLS said (read by writes that fail after the channel closed).
    private let fault: RedisConnection.Fault

    init(onPush: (@Sendable (RedisValue) -> Void)? = nil, fault: RedisConnection.Fault = .init()) {
        self.onPush = onPush
        self.fault = fault
    }

    /// Replies arrive in order, so one periodic check of the oldest command replaces a timer per command:
    /// if it is overdue, the connection can no longer be trusted and is closed (failing every waiter).
    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(25), delay: .milliseconds(25)) { _ in
            let (handler, context) = loopBound.value
            if let oldest = handler.pending.first, oldest.deadline < .now() {
                handler.fail(RedisError.timeout())
                context.close(promise: nil)
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        lazyFlush?.cancel()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let out = Self.unwrapOutboundIn(data)
        if let p = out.promise { pending.append((p, out.deadline)) }
        context.write(Self.wrapOutboundOut(out.bytes), promise: promise)
        if out.lazy {
            guard lazyFlush == nil else { return }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            lazyFlush = context.eventLoop.scheduleTask(in: Self.lazyFlushDelay) {
                let (handler, context) = bound.value
                handler.lazyFlush = nil
                context.flush()
            }
            return
        }
        // The commands of one round of the loop (many requests' admissions) leave in one write, and
        // Redis answers them in one: a syscall and a wake-up on each side instead of one per command.
        deferredFlush.flush(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try reader.feed(unwrapInboundIn(data))
            while let reply = try reader.next() {
                if let onPush, isPush(reply) {
                    onPush(reply)
                } else if let p = pending.popFirst() {
                    p.promise.succeed(reply)
                } else {
                    onPush?(reply)
                }
            }
        } catch {
            fail(error)
            context.close(promise: nil)
        }
    }

    private func isPush(_ v: RedisValue) -> Bool {
        guard let a = v.array, let kind = a.first?.string else { return false }
        return kind == "message" || kind == "pmessage"
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(RedisError.unavailable("connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A TLS failure says why (an untrusted certificate, a name that does not match): the operator
        // reads it in the start-up line, not a bare "connection error".
        if RedisTLS.isTLSError(error) { fault.record(RedisTLS.describe(error)) }
        fail(RedisError.unavailable(RedisTLS.isTLSError(error) ? RedisTLS.describe(error) : "connection error"))
        context.close(promise: nil)
    }

    private func fail(_ error: any Error) {
        while let p = pending.popFirst() { p.promise.fail(error) }
    }
}

/// A connected, authenticated Redis connection.
final class RedisConnection: Sendable {
    let channel: any Channel
    private let fault: Fault

    init(channel: any Channel, fault: Fault = .init()) {
        self.channel = channel
        self.fault = fault
    }

    /// A TLS failure seen by the handler, kept for the writes queued behind the handshake: whether they
    /// fail before or after the channel closes (a race), they say why — "write failed" alone named nothing.
    final class Fault: Sendable {
        private let reason = NIOLockedValueBox<String?>(nil)
        func record(_ text: String) { reason.withLockedValue { $0 = $0 ?? text } }
        var text: String? { reason.withLockedValue { $0 } }
    }

    var isActive: Bool { channel.isActive }

    static func connect(
        _ endpoint: RedisEndpoint, timeout: TimeAmount, group: any EventLoopGroup,
        onPush: (@Sendable (RedisValue) -> Void)? = nil
    ) async throws -> RedisConnection {
        let channel: any Channel
        let fault = Fault()
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(timeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if endpoint.secure {
                            let tls = try endpoint.tls ?? RedisTLS.system.get()
                            try channel.pipeline.syncOperations.addHandler(tls.handler(host: endpoint.host))
                        }
                        try channel.pipeline.syncOperations.addHandler(RedisChannelHandler(onPush: onPush, fault: fault))
                    }
                }
                .connect(host: endpoint.host, port: endpoint.port).get()
        } catch {
            throw RedisError.unavailable("cannot connect to \(endpoint.host):\(endpoint.port)")
        }
        let connection = RedisConnection(channel: channel, fault: fault)
        do {
            if let password = endpoint.password {
                let auth = endpoint.username.map { ["AUTH", $0, password] } ?? ["AUTH", password]
                if case .error(let e) = try await connection.send(auth, timeout: timeout) { throw RedisError.server(e) }
            }
            if endpoint.database != 0 {
                if case .error(let e) = try await connection.send(["SELECT", String(endpoint.database)], timeout: timeout) {
                    throw RedisError.server(e)
                }
            }
        } catch {
            channel.close(promise: nil)
            throw error
        }
        return connection
    }

    /// Sends one command; a reply that does not arrive within `timeout` closes the connection (the
    /// reply stream can no longer be matched to commands).
    func send(_ args: [String], timeout: TimeAmount) async throws -> RedisValue {
        try await start(args, timeout: timeout).get()
    }

    /// Sends one command; the reply completes the future on the connection's loop (the loop path's
    /// form of `send`: no task, and no hop when issued from that loop).
    func start(_ args: [String], timeout: TimeAmount, lazy: Bool = false) -> EventLoopFuture<RedisValue> {
        let promise = channel.eventLoop.makePromise(of: RedisValue.self)
        var buffer = channel.allocator.buffer(capacity: 64)
        RESP.encode(args, into: &buffer)
        let fault = self.fault
        channel.write(RedisOutbound(bytes: buffer, promise: promise, deadline: .now() + timeout, lazy: lazy)).whenFailure { error in
            // A failed TLS handshake fails the writes queued behind it first: say why here too.
            promise.fail(RedisError.unavailable(RedisTLS.isTLSError(error) ? RedisTLS.describe(error) : fault.text ?? "write failed"))
        }
        return promise.futureResult
    }

    func close() { channel.close(promise: nil) }
}

/// Where Redis is, from `REDIS_URL` (`redis://[[user]:password@]host[:port][/db]`; `rediss://` for TLS).
struct RedisEndpoint: Sendable, Hashable, CustomStringConvertible {
    var host: String
    var port: Int
    var username: String?
    var password: String?
    var database: Int
    /// `rediss://`: every connection runs TLS (with `tls`, or the system's trust roots).
    var secure = false
    /// The operator's TLS context (`redis.ca_bundle`); cluster nodes found later inherit it from the seed.
    var tls: RedisTLS? = nil

    static func parse(_ url: String) -> RedisEndpoint? {
        let secure = url.hasPrefix("rediss://")
        guard secure || url.hasPrefix("redis://") else { return nil }
        var rest = Substring(url.dropFirst(secure ? "rediss://".count : "redis://".count))
        var username: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            // A `%` not followed by two hex digits is refused, not read as no password at all (the
            // server answered NOAUTH at run time).
            if let colon = userinfo.firstIndex(of: ":") {
                let u = userinfo[..<colon]
                if !u.isEmpty {
                    guard let name = String(u).removingPercentEncoding else { return nil }
                    username = name
                }
                guard let secret = String(userinfo[userinfo.index(after: colon)...]).removingPercentEncoding else { return nil }
                password = secret
            } else {
                guard let secret = String(userinfo).removingPercentEncoding else { return nil }
                password = secret
            }
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let db = rest[rest.index(after: slash)...]
            if !db.isEmpty {
                guard let d = Int(db), d >= 0 else { return nil }
                database = d
            }
            rest = rest[..<slash]
        }
        var host = String(rest)
        var port = 6379
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else { return nil }
            port = p
            host = String(rest[..<colon])
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard ConnectTarget.isHost(host) else { return nil }
        return RedisEndpoint(host: host, port: port, username: username, password: password, database: database, secure: secure)
    }

    /// Never prints the password.
    var description: String { "\(secure ? "rediss" : "redis")://\(password == nil ? "" : "***@")\(host):\(port)/\(database)" }
}

import Foundation

/// Where the fleet's Redis is: one server (`redis://…`), or a cluster named by one or more seed nodes
/// (`redis+cluster://[[user]:password@]host:port[,host:port…]`, or a `redis://` URL with
/// `redis.cluster: true`). A cluster has only database 0.
struct RedisLocation: Sendable, Equatable, CustomStringConvertible {
    var seeds: [RedisEndpoint]
    var cluster: Bool

    static let syntax =
        "expected redis://[[user]:password@]host[:port][/db] or redis+cluster://[[user]:password@]host:port[,host:port…] (a cluster has database 0 only; rediss:// and rediss+cluster:// for TLS; a % in the password written %25)"

    /// Whether connections run TLS (`rediss://`, `rediss+cluster://`).
    var secure: Bool { seeds[0].secure }

    static func parse(_ url: String, cluster: Bool = false) -> RedisLocation? {
        var cluster = cluster
        var rest: Substring
        var scheme = "redis://"
        if let prefix = ["redis+cluster://", "rediss+cluster://"].first(where: url.hasPrefix) {
            cluster = true
            scheme = prefix == "rediss+cluster://" ? "rediss://" : "redis://"
            rest = url.dropFirst(prefix.count)
        } else if let prefix = ["redis://", "rediss://"].first(where: url.hasPrefix) {
            scheme = prefix
            rest = url.dropFirst(prefix.count)
        } else {
            return nil
        }
        var userinfo = ""
        if let at = rest.lastIndex(of: "@") {
            userinfo = String(rest[...at])
            rest = rest[rest.index(after: at)...]
        }
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[slash...])
            rest = rest[..<slash]
        }
        let hosts = rest.split(separator: ",", omittingEmptySubsequences: false)
        guard !hosts.isEmpty, cluster || hosts.count == 1 else { return nil }
        var seeds: [RedisEndpoint] = []
        for host in hosts {
            guard let e = RedisEndpoint.parse(scheme + userinfo + host + path) else { return nil }
            if cluster, e.database != 0 { return nil }
            seeds.append(e)
        }
        return RedisLocation(seeds: seeds, cluster: cluster)
    }

    /// Never prints the password.
    var description: String {
        cluster
            ? (secure ? "rediss+cluster://" : "redis+cluster://") + seeds.map { "\($0.host):\($0.port)" }.joined(separator: ",")
            : seeds[0].description
    }
}
