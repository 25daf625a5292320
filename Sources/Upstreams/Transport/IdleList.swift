import NIOConcurrencyHelpers

/// The idle connections of one event loop, by origin. Taken and put back on that loop; `shutdown` and
/// `idleCount` read it from elsewhere, hence the lock (uncontended on the data path). A loop talks to
/// few origins (the brokered tools' base URLs; http_fetch has its own transport), so they are found by a
/// scan, not by hashing a host name per request.
final class IdleList: @unchecked Sendable {
    private let lock = NIOLock()
    private var origins: [HTTP1ConnectionPool.Origin] = []
    private var connections: [[PooledConnection]] = []

    func take(_ origin: HTTP1ConnectionPool.Origin) -> PooledConnection? {
        lock.withLock {
            guard let i = origins.firstIndex(of: origin) else { return nil }
            return connections[i].popLast()
        }
    }

    /// False when the origin already has `max` idle connections (the caller closes this one).
    func put(_ connection: PooledConnection, origin: HTTP1ConnectionPool.Origin, max: Int) -> Bool {
        lock.withLock {
            guard let i = origins.firstIndex(of: origin) else {
                origins.append(origin)
                connections.append([connection])
                return true
            }
            guard connections[i].count < max else { return false }
            connections[i].append(connection)
            return true
        }
    }

    func removeAll() -> [PooledConnection] {
        lock.withLock {
            defer { connections = connections.map { _ in [] } }
            return connections.flatMap { $0 }
        }
    }

    var count: Int { lock.withLock { connections.reduce(0) { $0 + $1.count } } }
}
