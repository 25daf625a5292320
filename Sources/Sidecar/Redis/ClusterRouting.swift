/// The pure rules of Redis Cluster a client follows: which of the 16 384 hash slots a key lives in,
/// which argument of a command is its key, what a redirect says, and how `CLUSTER SLOTS` reads. No I/O
/// here; `RedisClient` applies them (table tests in `ClusterRoutingTests`).
enum ClusterRouting {
    static let slotCount = 16_384

    /// The key's hash slot: CRC16 (XMODEM) of the key — or of its hash tag, the text between the first
    /// `{` and the first `}` after it when that text is not empty — modulo 16 384. Keys that share a tag
    /// share a slot, which is what lets one script touch all of an agent's counters.
    static func slot(of key: String) -> Int {
        var key = key
        return key.withUTF8 { b in
            var range = 0..<b.count
            if let open = b.firstIndex(of: UInt8(ascii: "{")),
                let close = b[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
            {
                range = (open + 1)..<close
            }
            // CRC16-CCITT (XMODEM), as the cluster specification gives it.
            var crc: UInt16 = 0
            for i in range {
                crc = (crc << 8) ^ table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ b[i])]
            }
            return Int(crc) & (slotCount - 1)
        }
    }

    private static let table: [UInt16] = (0..<256).map { i in
        var crc = UInt16(i) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }

    /// Commands that name no key: they go to any node (`PUBLISH` is carried to every node by the
    /// cluster bus, so a subscriber on any node hears it).
    private static let keyless: Set<String> = [
        "PING", "PUBLISH", "SCRIPT", "INFO", "CLUSTER", "ASKING", "AUTH", "SELECT", "SUBSCRIBE", "UNSUBSCRIBE",
        "SCAN", "READONLY", "HELLO", "DBSIZE", "TIME", "ROLE", "COMMAND", "FLUSHALL", "FLUSHDB",
    ]

    /// The key a command is routed by: the first key of a script call, nothing for keyless commands,
    /// else the first argument (every other command this sidecar sends names its key first, and a
    /// multi-key one names keys of one hash tag).
    static func key(of args: [String]) -> String? {
        guard let command = args.first else { return nil }
        switch command {
        case "EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL":
            guard args.count > 3, let n = Int(args[2]), n > 0 else { return nil }
            return args[3]
        default:
            if keyless.contains(command) { return nil }
            return args.count > 1 ? args[1] : nil
        }
    }

    /// Commands whose repetition cannot change data: retried once when the connection they were sent
    /// on failed before a reply (a write might have happened; a read did nothing).
    private static let reads: Set<String> = [
        "GET", "MGET", "HGET", "HMGET", "HGETALL", "HVALS", "SMEMBERS", "SCARD", "ZSCORE", "ZRANGEBYSCORE",
        "ZREVRANGEBYSCORE", "XRANGE", "EXISTS", "PING", "SCAN", "TTL", "PTTL", "ZCARD",
    ]

    static func isRead(_ args: [String]) -> Bool { args.first.map { reads.contains($0) } ?? false }

    /// A node's address as the cluster names it.
    struct Address: Hashable, Sendable, CustomStringConvertible {
        var host: String
        var port: Int
        var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

        /// `host:port` as a redirect gives it (an IPv6 host is not bracketed there).
        init?(_ text: Substring) {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
                (1...65535).contains(port)
            else { return nil }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            self.host = host
            self.port = port
        }

        init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    /// What an error reply tells a cluster client to do.
    enum Redirect: Equatable, Sendable {
        /// The slot lives on another node now: update the map and send there.
        case moved(slot: Int, to: Address)
        /// The slot is being migrated and this key is already on the target: send there once, after `ASKING`.
        case ask(slot: Int, to: Address)
        /// A multi-key command's keys are split by a migration in progress, or the cluster is not serving
        /// the slot right now (failover): wait a little and send again.
        case retryLater

        init?(_ error: String) {
            if error.hasPrefix("TRYAGAIN") || error.hasPrefix("CLUSTERDOWN") {
                self = .retryLater
                return
            }
            let parts = error.split(separator: " ")
            guard parts.count == 3, let slot = Int(parts[1]), (0..<ClusterRouting.slotCount).contains(slot),
                let address = Address(parts[2])
            else { return nil }
            switch parts[0] {
            case "MOVED": self = .moved(slot: slot, to: address)
            case "ASK": self = .ask(slot: slot, to: address)
            default: return nil
            }
        }
    }

    /// One row of `CLUSTER SLOTS`: a range and its master.
    struct SlotRange: Equatable, Sendable {
        var first: Int
        var last: Int
        var master: Address
    }

    /// Reads a `CLUSTER SLOTS` reply; a master announced without an address (`""` or `"?"`) is the node
    /// that answered, `asked`. nil when the reply is not a slot table (not a cluster, or an error).
    static func slotRanges(_ reply: RedisValue, asked: Address) -> [SlotRange]? {
        guard let rows = reply.array else { return nil }
        var out: [SlotRange] = []
        for row in rows {
            guard let r = row.array, r.count >= 3, let first = r[0].int, let last = r[1].int,
                first >= 0, last >= first, last < slotCount, let master = r[2].array, master.count >= 2,
                let port = master[1].int, (1...65535).contains(port)
            else { return nil }
            let host = master[0].string ?? ""
            let address = host.isEmpty || host == "?" ? Address(host: asked.host, port: Int(port)) : Address(host: host, port: Int(port))
            out.append(SlotRange(first: Int(first), last: Int(last), master: address))
        }
        return out
    }
}

/// Which node serves each slot, as last learnt: from `CLUSTER SLOTS` whole, or one slot at a time from a
/// `MOVED`. Nodes are indexes into `nodes`, so a lookup is one array read.
struct ClusterSlotMap: Sendable {
    private(set) var owner: [Int32] = Array(repeating: -1, count: ClusterRouting.slotCount)
    private(set) var nodes: [ClusterRouting.Address] = []

    /// The node serving `slot`, nil when no map has been learnt for it yet.
    func node(for slot: Int) -> Int? {
        let i = owner[slot]
        return i < 0 ? nil : Int(i)
    }

    /// The index of `address`, added when new.
    mutating func index(of address: ClusterRouting.Address) -> Int {
        if let i = nodes.firstIndex(of: address) { return i }
        nodes.append(address)
        return nodes.count - 1
    }

    /// Replaces the map with a full table; slots the table leaves out become unknown.
    mutating func apply(_ ranges: [ClusterRouting.SlotRange]) {
        owner = Array(repeating: -1, count: ClusterRouting.slotCount)
        for r in ranges {
            let i = Int32(index(of: r.master))
            for s in r.first...r.last { owner[s] = i }
        }
    }

    /// A `MOVED` reply: that slot lives on `address` now. Returns its index.
    @discardableResult
    mutating func moved(slot: Int, to address: ClusterRouting.Address) -> Int {
        let i = index(of: address)
        owner[slot] = Int32(i)
        return i
    }

    /// The nodes that own at least one slot: the masters, as far as this map knows.
    var masters: [Int] { Array(Set(owner.filter { $0 >= 0 }.map(Int.init))).sorted() }
}
