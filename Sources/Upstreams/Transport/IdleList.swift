import NIOConcurrencyHelpers

/// The idle connections of one event loop, by origin. Taken and put back on that loop; `shutdown` and
/// `idleCount` read it from elsewhere, hence the lock (uncontended on the data path). A loop talks to
/// few origins (the brokered tools' base URLs, the hosts agents fetch most), so they are found by a
/// scan, not by hashing a host name per request.
///
/// The number of origins is bounded (`maxOrigins`): `http_fetch` reaches whatever hosts agents name, and
/// a list that remembered every one would grow without end. A new origin past the bound first drops the
/// origins with nothing idle, then the least recently added one, whose connections are closed.
final class IdleList: @unchecked Sendable {
    private let lock = NIOLock()
    private let maxOrigins: Int
    private var origins: [HTTP1ConnectionPool.Origin] = []
    private var connections: [[PooledConnection]] = []

    init(maxOrigins: Int = .max) {
        self.maxOrigins = max(1, maxOrigins)
    }

    func take(_ origin: HTTP1ConnectionPool.Origin) -> PooledConnection? {
        lock.withLock {
            guard let i = origins.firstIndex(of: origin) else { return nil }
            return connections[i].popLast()
        }
    }

    /// Keeps `connection` for `origin`. Returns the connections the caller must close: this one when
    /// the origin already has `max` idle, or those of an origin evicted to make room.
    func put(_ connection: PooledConnection, origin: HTTP1ConnectionPool.Origin, max: Int) -> [PooledConnection] {
        lock.withLock {
            if let i = origins.firstIndex(of: origin) {
                guard connections[i].count < max else { return [connection] }
                connections[i].append(connection)
                return []
            }
            var evicted: [PooledConnection] = []
            if origins.count >= maxOrigins {
                for i in origins.indices.reversed() where connections[i].isEmpty {
                    origins.remove(at: i)
                    connections.remove(at: i)
                }
                if origins.count >= maxOrigins {
                    origins.removeFirst()
                    evicted = connections.removeFirst()
                }
            }
            origins.append(origin)
            connections.append([connection])
            return evicted
        }
    }

    func removeAll() -> [PooledConnection] {
        lock.withLock {
            defer { connections = connections.map { _ in [] } }
            return connections.flatMap { $0 }
        }
    }

    var count: Int { lock.withLock { connections.reduce(0) { $0 + $1.count } } }
    var originCount: Int { lock.withLock { origins.count } }
}
