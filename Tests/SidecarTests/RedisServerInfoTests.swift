import Testing

@testable import Sidecar

/// The `INFO` reply read at start: cluster mode and a version older than the commands the sidecar sends.
@Suite struct RedisServerInfoTests {
    @Test(arguments: [
        ("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\r\n# Cluster\r\ncluster_enabled:0\r\n", false, [7, 0, 15], false),
        ("# Server\r\nredis_version:6.0.16\r\n# Cluster\r\ncluster_enabled:1\r\n", true, [6, 0, 16], false),
        ("redis_version:5.0.0\ncluster_enabled:0\n", false, [5, 0, 0], false),
        ("redis_version:4.0.14\r\n", false, [4, 0, 14], true),
        ("redis_version:3.2\r\n", false, [3, 2], true),
        // Valkey reports the Redis version it is compatible with beside its own.
        ("# Server\r\nredis_version:7.2.4\r\nvalkey_version:8.0.1\r\n", false, [7, 2, 4], false),
        ("# Server\r\nredis_version:\r\n", false, nil, false),
        ("# Server\r\nredis_version:7.x\r\n", false, nil, false),
        ("", false, nil, false),
    ] as [(String, Bool, [Int]?, Bool)])
    func readsClusterModeAndVersion(_ info: String, _ cluster: Bool, _ version: [Int]?, _ tooOld: Bool) {
        let read = RedisServerInfo(info: info)
        #expect(read == RedisServerInfo(cluster: cluster, version: version))
        #expect(read.tooOld == tooOld)
    }
}
