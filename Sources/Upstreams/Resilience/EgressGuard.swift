import Synchronization

/// An IPv4 or IPv6 address.
public enum IPAddress: Sendable, Hashable, CustomStringConvertible {
    case v4(UInt32)
    case v6([UInt8])

    /// Parses a host as an IP literal the way a permissive client would, so the guard sees what would
    /// really be connected to: IPv4 in dotted, decimal (`2130706433`), octal (`0177.0.0.1`), hex
    /// (`0x7f.1`) and short (`127.1`) forms, and IPv6 (with or without brackets). nil for names.
    public static func parse(_ host: String) -> IPAddress? {
        var h = host
        if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if h.contains(":") { return parseV6(h) }
        return parseV4(h)
    }

    static func parseV4(_ s: String) -> IPAddress? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...4).contains(parts.count), !parts.contains(where: \.isEmpty) else { return nil }
        var values: [UInt64] = []
        for p in parts {
            let lower = p.lowercased()
            let value: UInt64?
            if lower.hasPrefix("0x") { value = lower.count == 2 ? 0 : UInt64(lower.dropFirst(2), radix: 16) }
            else if lower.count > 1, lower.hasPrefix("0") { value = UInt64(lower.dropFirst(), radix: 8) }
            else { value = UInt64(lower, radix: 10) }
            guard let v = value else { return nil }
            values.append(v)
        }
        // inet_aton: the last part fills the remaining bytes.
        let lastBits = UInt64(8 * (5 - values.count))
        for v in values.dropLast() where v > 255 { return nil }
        guard values.last! < (UInt64(1) << lastBits) else { return nil }
        var result: UInt64 = 0
        for (i, v) in values.dropLast().enumerated() { result |= v << UInt64(24 - 8 * i) }
        result |= values.last!
        return .v4(UInt32(result))
    }

    static func parseV6(_ s: String) -> IPAddress? {
        guard !s.contains("%") else { return nil }  // zone ids are never a valid destination here
        var head: [UInt16] = []
        var tail: [UInt16] = []
        let halves = s.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String, allowV4: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            var out: [UInt16] = []
            let items = part.split(separator: ":", omittingEmptySubsequences: false)
            for (i, item) in items.enumerated() {
                if allowV4, i == items.count - 1, item.contains(".") {
                    guard case .v4(let v)? = parseStrictV4(String(item)) else { return nil }
                    out += [UInt16(v >> 16), UInt16(v & 0xFFFF)]
                } else {
                    guard (1...4).contains(item.count), let g = UInt16(item, radix: 16) else { return nil }
                    out.append(g)
                }
            }
            return out
        }
        if halves.count == 2 {
            guard let h = groups(halves[0], allowV4: false), let t = groups(halves[1], allowV4: true), h.count + t.count <= 7 else { return nil }
            head = h
            tail = t
        } else {
            guard let all = groups(halves[0], allowV4: true), all.count == 8 else { return nil }
            head = all
        }
        let words = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        return .v6(words.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] })
    }

    static func parseStrictV4(_ s: String) -> IPAddress? {
        let parts = s.split(separator: ".")
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard let b = UInt8(p), String(b) == p else { return nil }
            v = v << 8 | UInt32(b)
        }
        return .v4(v)
    }

    public var description: String {
        switch self {
        case .v4(let v): return "\(v >> 24).\((v >> 16) & 255).\((v >> 8) & 255).\(v & 255)"
        case .v6(let b):
            return stride(from: 0, to: 16, by: 2).map { String(UInt16(b[$0]) << 8 | UInt16(b[$0 + 1]), radix: 16) }.joined(separator: ":")
        }
    }
}

/// An address range, `10.0.0.0/8` or `fc00::/7`.
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    public let address: IPAddress
    public let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let p = Int(parts[1]) else { return nil }
        let addr: IPAddress?
        if parts[0].contains(":") { addr = IPAddress.parseV6(String(parts[0])) } else { addr = IPAddress.parseStrictV4(String(parts[0])) }
        guard let addr else { return nil }
        switch addr {
        case .v4: guard (0...32).contains(p) else { return nil }
        case .v6: guard (0...128).contains(p) else { return nil }
        }
        address = addr
        prefix = p
    }

    public func contains(_ ip: IPAddress) -> Bool {
        switch (address, ip) {
        case (.v4(let net), .v4(let a)):
            guard prefix > 0 else { return true }
            let mask: UInt32 = prefix == 32 ? .max : ~(UInt32.max >> UInt32(prefix))
            return net & mask == a & mask
        case (.v6(let net), .v6(let a)):
            var bits = prefix
            for i in 0..<16 where bits > 0 {
                let take = min(8, bits)
                let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - take))
                if net[i] & mask != a[i] & mask { return false }
                bits -= take
            }
            return true
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(prefix)" }
}

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
        let table: [(CIDR, String)]
        switch ip {
        case .v4: table = Self.deniedV4
        case .v6: table = Self.deniedV6
        }
        return table.first { $0.0.contains(ip) }?.1
    }
}
