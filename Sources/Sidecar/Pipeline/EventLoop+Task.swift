import Dispatch
import NIOCore

extension EventLoop {
    /// Runs `body` in a task and hands what it returns to `then` on this loop (the loop path's hand-over
    /// to a stage that has to wait, and back). Returns how to cancel that task, e.g. when the agent goes
    /// away.
    ///
    /// The task runs on Swift's global pool, not on the loop: a stage in a task may block briefly (a
    /// store without a loop path), which must not stall the loop's other connections. (A task executor
    /// preferring the loop measured no faster on the Gmail and run rows, within this machine's noise;
    /// `bench/HISTORY.md`.)
    func run<Value: Sendable>(
        inTask body: @escaping @Sendable () async -> Value, preferring executor: (any TaskExecutor)? = nil,
        then: @escaping @Sendable (consuming Value) -> Void
    ) -> @Sendable () -> Void {
        let task = Task(executorPreference: executor) {
            let value = await body()
            self.onLoop { then(value) }
        }
        return { task.cancel() }
    }

    /// Runs `body` on this loop: at once when already on it, else queued.
    func onLoop(_ body: @escaping @Sendable () -> Void) {
        if inEventLoop { body() } else { execute(body) }
    }
}

/// One thread for the requests whose bodies are long to read (`Pipeline.offLoopBodyBytes`): they queue
/// behind each other there, never in front of the event loops or Swift's global pool — whose two threads
/// here serve every stage that waits (a cache, Redis, a credential), so two 30 MB bodies read there held
/// every such call for seconds.
final class LongReadExecutor: TaskExecutor {
    static let shared = LongReadExecutor()
    private let queue = DispatchQueue(label: "sidecar.long-reads")

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
