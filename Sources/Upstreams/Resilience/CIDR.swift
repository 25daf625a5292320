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
