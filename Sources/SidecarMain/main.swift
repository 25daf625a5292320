import NIOCore
import NIOPosix
import Sidecar

// Run Swift concurrency on NIO's event loops, so async code that starts on a connection's loop stays on
// it (no thread hop between the socket and the pipeline). SIDECAR_NIO_EXECUTOR=0 turns it off for
// comparison in benchmarks.
if getenv("SIDECAR_NIO_EXECUTOR").map({ String(cString: $0) }) != "0" {
    NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
}

await SidecarCommand.runMain()
