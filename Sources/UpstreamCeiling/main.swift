// upstream-ceiling: how many requests per second async-http-client alone can drive against a URL on this
// machine, with the same client settings the sidecar uses. bench/run.sh prints it beside the proxy
// numbers, because it bounds what any AHC-based proxy can reach here.
//
//   upstream-ceiling URL [CONCURRENCY] [SECONDS]
import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    print("usage: upstream-ceiling URL [CONCURRENCY] [SECONDS]")
    exit(2)
}
let url = arguments[1]
let concurrency = arguments.count > 2 ? Int(arguments[2]) ?? 64 : 64
let seconds = arguments.count > 3 ? Double(arguments[3]) ?? 5 : 5
func measure() async {
    var config = HTTPClient.Configuration()
    config.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 256
    let client = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: config)
    let deadline = Date().addingTimeInterval(seconds)
    let completed = NIOLockedValueBox(0)
    await withTaskGroup(of: Void.self) { group in
        for _ in 0..<concurrency {
            group.addTask {
                while Date() < deadline {
                    guard let request = try? HTTPClient.Request(url: url),
                        (try? await client.execute(request: request).get()) != nil
                    else { continue }
                    completed.withLockedValue { $0 += 1 }
                }
            }
        }
    }
    print(String(format: "%.0f", Double(completed.withLockedValue { $0 }) / seconds))
    try? await client.shutdown()
}

await measure()
