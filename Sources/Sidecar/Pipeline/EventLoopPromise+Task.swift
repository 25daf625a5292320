import NIOCore

extension EventLoopPromise where Value: Sendable {
    /// Completes the promise with what `body` returns, run in a task (the loop path's hand-over to a stage
    /// that has to wait). Returns how to cancel that task, e.g. when the agent goes away.
    func succeed(inTask body: @escaping @Sendable () async -> Value) -> @Sendable () -> Void {
        let task = Task { self.succeed(await body()) }
        return { task.cancel() }
    }
}
