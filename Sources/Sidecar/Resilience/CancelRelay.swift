import Synchronization

/// How to abort a call whose work may move from the event loop into a task (a retry): the current
/// action is replaced as the work moves, and a cancel that came first runs the new action at once.
class CancelRelay: @unchecked Sendable {
    private let state: Mutex<(cancelled: Bool, action: (@Sendable () -> Void)?)>

    init(_ action: @escaping @Sendable () -> Void) { state = Mutex((false, action)) }

    func replace(_ action: @escaping @Sendable () -> Void) {
        let runNow = state.withLock { s -> Bool in
            if s.cancelled { return true }
            s.action = action
            return false
        }
        if runNow { action() }
    }

    func cancel() {
        let action = state.withLock { s -> (@Sendable () -> Void)? in
            s.cancelled = true
            defer { s.action = nil }
            return s.action
        }
        action?()
    }
}
