import NIOCore

/// The cancel of a loop-path call that goes on in stages (limits admitted, then the upstream call):
/// the caller gets `cancel` at once; the stage that starts later hands its own cancel to `then`. A
/// cancel that comes first is remembered, so the later stage sees `isCancelled` and does not start.
///
/// Its state is only touched on `loop` (a cancel from elsewhere hops there).
final class LoopCancel: @unchecked Sendable {
    private let loop: any EventLoop
    private var cancelled = false
    private var current: (@Sendable () -> Void)?

    init(_ loop: any EventLoop) { self.loop = loop }

    /// On the loop: whether the call was cancelled before its next stage started.
    var isCancelled: Bool {
        loop.preconditionInEventLoop()
        return cancelled
    }

    /// On the loop: the cancel of the stage now running.
    func then(_ cancel: @escaping @Sendable () -> Void) {
        loop.preconditionInEventLoop()
        if cancelled { cancel() } else { current = cancel }
    }

    var cancel: @Sendable () -> Void {
        { [self] in loop.onLoop { self.cancelNow() } }
    }

    private func cancelNow() {
        cancelled = true
        let cancel = current
        current = nil
        cancel?()
    }
}
