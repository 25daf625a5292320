import NIOCore
import NIOPosix
import Sidecar

// Run Swift concurrency on NIO's event loops, so async code that starts on a connection's loop stays on
// it (no thread hop between the socket and the pipeline). SIDECAR_NIO_EXECUTOR=0 turns it off for
// comparison in benchmarks.
// Event-loop threads (as Envoy's --concurrency): SIDECAR_EVENT_LOOPS, default one per core.
if let loops = getenv("SIDECAR_EVENT_LOOPS").flatMap({ Int(String(cString: $0)) }), (1...256).contains(loops) {
    NIOSingletons.groupLoopCountSuggestion = loops
}
if getenv("SIDECAR_NIO_EXECUTOR").map({ String(cString: $0) }) != "0" {
    NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
}

await SidecarCommand.runMain()
