import NIOCore

extension EventLoop {
    /// Runs `body` in a task and hands what it returns to `then` on this loop (the loop path's hand-over
    /// to a stage that has to wait, and back). Returns how to cancel that task, e.g. when the agent goes
    /// away.
    func run<Value: Sendable>(
        inTask body: @escaping @Sendable () async -> Value, then: @escaping @Sendable (consuming Value) -> Void
    ) -> @Sendable () -> Void {
        let task = Task {
            let value = await body()
            if self.inEventLoop { then(value) } else { self.execute { then(value) } }
        }
        return { task.cancel() }
    }
}
