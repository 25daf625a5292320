import NIOCore
import NIOPosix
import Sidecar

// Event-loop threads (as Envoy's --concurrency): SIDECAR_EVENT_LOOPS, default one per core.
if let loops = getenv("SIDECAR_EVENT_LOOPS").flatMap({ Int(String(cString: $0)) }), (1...256).contains(loops) {
    NIOSingletons.groupLoopCountSuggestion = loops
}
await SidecarCommand.runMain()
