import Synchronization

/// Remembers what a name resolved to for `ttl`, so a fetch of a name an agent keeps calling costs no
/// lookup (a thread hop, a `getaddrinfo`, often a DNS round trip) per call. Bounded: at most `capacity`
/// names, the least recently used forgotten first. Failures are not remembered.
///
/// Safety is unchanged: the transport checks every remembered address with the egress guard, under the
/// calling agent's own grants, on every call — a cached answer can only be refused again, never let
/// through what a fresh one would not. (A name's answer cannot change between its check and its connect
/// either way: the connect goes to the address that was checked.)
public final class CachingResolver: HostResolver {
    private struct Entry: Sendable {
        var addresses: [IPAddress]
        var until: ContinuousClock.Instant
    }

    private let base: any HostResolver
    private let ttl: Duration
    private let now: @Sendable () -> ContinuousClock.Instant
    private let entries: Mutex<LRUCache<String, Entry>>

    public init(
        base: any HostResolver = SystemResolver(), ttl: Duration, capacity: Int = 1024,
        now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.base = base
        self.ttl = ttl
        self.now = now
        self.entries = Mutex(LRUCache(capacity: max(1, capacity)))
    }

    public func resolve(host: String, port: Int) async throws -> [IPAddress] {
        // DNS folds ASCII case only: Unicode lowercasing would file `\u{212A}.test` (KELVIN SIGN) under
        // `k.test` and answer one name with another's addresses.
        let key = String(decoding: host.utf8.map { (0x41...0x5A).contains($0) ? $0 | 0x20 : $0 }, as: UTF8.self)
        let at = now()
        if let hit = entries.withLock({ $0.get(key) }), hit.until > at { return hit.addresses }
        let addresses = try await base.resolve(host: host, port: port)
        entries.withLock { _ = $0.set(key, Entry(addresses: addresses, until: at + ttl)) }
        return addresses
    }
}
