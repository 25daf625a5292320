import Synchronization

/// Safe egress for `http_fetch`: which destination addresses the sidecar will connect to.
///
/// Every address a name resolves to is classified, and the connection goes to an address that was
/// checked (no second lookup, so DNS rebinding cannot swap it). Refused unless the policy explicitly
/// allows the range: loopback, RFC 1918, link-local (cloud metadata 169.254.169.254), CGNAT 100.64/10,
/// ULA fc00::/7, unspecified, multicast, reserved and documentation ranges, IPv6 forms that embed IPv4
/// (mapped, compatible, NAT64, 6to4, Teredo), and the sidecar's own listeners.
public struct EgressGuard: Sendable {
    public var allowed: [CIDR]
    /// The sidecar's own listeners. Shared and updatable: with port 0 the real ports are known only after
    /// the listeners are bound, and every copy of the guard must see them.
    public let own: OwnListeners

    public struct Listener: Sendable, Hashable {
        /// nil for "any local address" (a listener on 0.0.0.0 or ::).
        public var address: IPAddress?
        public var port: Int
        public init(address: IPAddress?, port: Int) {
            self.address = address
            self.port = port
        }
    }

    /// The set of the sidecar's listeners.
    public final class OwnListeners: Sendable {
        private let listeners: Mutex<[Listener]>
        public init(_ initial: [Listener] = []) { listeners = Mutex(initial) }
        public func add(_ l: Listener) { listeners.withLock { $0.append(l) } }
        public var all: [Listener] { listeners.withLock { $0 } }
    }

    public init(allowed: [CIDR] = [], ownListeners: [Listener] = []) {
        self.allowed = allowed
        self.own = OwnListeners(ownListeners.filter { $0.port != 0 })
    }

    static let deniedV4: [(CIDR, String)] = [
        ("0.0.0.0/8", "unspecified"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "cgnat"), ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"), ("172.16.0.0/12", "private"), ("192.0.0.0/24", "reserved"), ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4-relay"), ("192.168.0.0/16", "private"), ("198.18.0.0/15", "benchmark"),
        ("198.51.100.0/24", "documentation"), ("203.0.113.0/24", "documentation"), ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
    ].map { (CIDR($0.0)!, $0.1) }

    static let deniedV6: [(CIDR, String)] = [
        ("::/128", "unspecified"), ("::1/128", "loopback"), ("::ffff:0:0/96", "ipv4-mapped"), ("::/96", "ipv4-compatible"),
        ("64:ff9b::/96", "nat64"), ("64:ff9b:1::/48", "nat64"), ("100::/64", "discard"), ("2001::/32", "teredo"),
        ("2001:db8::/32", "documentation"), ("2002::/16", "6to4"), ("fc00::/7", "unique-local"), ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"), ("ff00::/8", "multicast"),
    ].map { (CIDR($0.0)!, $0.1) }

    /// nil when the address may be connected to; else why not.
    /// `granted`: ranges the policy allows for this one call.
    public func refusal(_ ip: IPAddress, port: Int, granted: [CIDR] = []) -> String? {
        for listener in own.all where listener.port == port {
            if listener.address == nil || listener.address == ip { return "the sidecar's own listener" }
        }
        if allowed.contains(where: { $0.contains(ip) }) || granted.contains(where: { $0.contains(ip) }) { return nil }
        return Self.internalRange(of: ip)
    }

    /// The internal range an address is in ("loopback", "private", "link-local", …), or nil for a
    /// public one.
    public static func internalRange(of ip: IPAddress) -> String? {
        let table: [(CIDR, String)]
        switch ip {
        case .v4: table = deniedV4
        case .v6: table = deniedV6
        }
        return table.first { $0.0.contains(ip) }?.1
    }
}
