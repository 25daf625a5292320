/// What the sidecar reads of a Redis server's `INFO` at start: whether it runs in cluster mode, and its
/// version.
struct RedisServerInfo: Sendable, Equatable {
    var cluster: Bool
    /// `redis_version` as numbers (`7.0.15` → `[7, 0, 15]`); nil when the reply has none that reads (a
    /// proxy in front of Redis may hide it).
    var version: [Int]?

    /// Redis 5.0 brought Streams, which hold runs' events; every other command and option the sidecar
    /// sends is older (README, `redis.url`).
    static let minimum = [5, 0]

    init(cluster: Bool, version: [Int]?) {
        self.cluster = cluster
        self.version = version
    }

    /// Reads an `INFO` reply: `name:value` lines, `#` section headers, CRLF or LF line ends.
    init(info: String) {
        var cluster = false
        var version: [Int]?
        for line in info.split(whereSeparator: \.isNewline) {
            if line == "cluster_enabled:1" { cluster = true }
            if line.hasPrefix("redis_version:") {
                let numbers = line.dropFirst("redis_version:".count).split(separator: ".", omittingEmptySubsequences: false).map { Int($0) }
                version = numbers.isEmpty || numbers.contains(nil) ? nil : numbers.compactMap { $0 }
            }
        }
        self.init(cluster: cluster, version: version)
    }

    /// Older than `minimum` (unknown: not said to be).
    var tooOld: Bool { version.map { $0.lexicographicallyPrecedes(Self.minimum) } ?? false }
}
