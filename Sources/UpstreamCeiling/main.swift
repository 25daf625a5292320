// upstream-ceiling: how many requests per second an upstream client alone can drive against a URL on
// this machine. bench/run.sh prints it beside the proxy numbers, because it bounds what a proxy built on
// that client can reach here.
//
//   upstream-ceiling URL [CONCURRENCY] [SECONDS] [ahc|pool]
//
//   ahc   async-http-client with the sidecar's settings (the client for TLS origins offered HTTP/2)
//   pool  the sidecar's own per-loop HTTP/1.1 pool (the client for every other origin)
import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Upstreams

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    print("usage: upstream-ceiling URL [CONCURRENCY] [SECONDS] [ahc|pool]")
    exit(2)
}
let url = arguments[1]
let concurrency = arguments.count > 2 ? Int(arguments[2]) ?? 64 : 64
let seconds = arguments.count > 3 ? Double(arguments[3]) ?? 5 : 5
let client = arguments.count > 4 ? arguments[4] : "ahc"

/// Runs `concurrency` loops of `one` until the time is up; returns completed calls per second.
func measure(_ one: @escaping @Sendable () async -> Bool) async -> Double {
    let deadline = Date().addingTimeInterval(seconds)
    let completed = NIOLockedValueBox(0)
    await withTaskGroup(of: Void.self) { group in
        for _ in 0..<concurrency {
            // Swift concurrency runs on NIO's loops here, so each task works on a loop, as a proxy's does.
            group.addTask {
                while Date() < deadline {
                    if await one() { completed.withLockedValue { $0 += 1 } }
                }
            }
        }
    }
    return Double(completed.withLockedValue { $0 }) / seconds
}

func measureAHC() async -> Double {
    var config = HTTPClient.Configuration()
    config.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 256
    let ahc = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: config)
    let rate = await measure {
        guard let request = try? HTTPClient.Request(url: url), (try? await ahc.execute(request: request).get()) != nil else { return false }
        return true
    }
    try? await ahc.shutdown()
    return rate
}

let rate: Double
switch client {
case "pool":
    let target = try TargetURL.parse(url)
    let pool = try HTTP1ConnectionPool(connectTimeouts: [:], tls: .makeClientConfiguration())
    let call = try HTTPFetchAdapter().interpret(ToolRequest(method: .GET, path: "/fetch", target: target))
    rate = await measure {
        let request = UpstreamRequest(
            call: call, method: .GET, url: target, headers: ["Host": target.authority], body: nil, deadline: .now() + .seconds(5))
        guard let response = try? await pool.send(request), (try? await response.body.collect(upTo: 1 << 20)) != nil else { return false }
        return true
    }
    pool.shutdown()
default:
    rate = await measureAHC()
}
print(String(format: "%.0f", rate))
