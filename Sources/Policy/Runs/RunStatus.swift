/// A run's life: created → running (⇄ paused by the loop breaker) → completed | failed | cancelled. The
/// last three are terminal: nothing moves a run out of them, and its tool calls are refused.
public enum RunStatus: String, Sendable, Hashable, Codable, CaseIterable {
    case created
    case running
    case paused
    case completed
    case failed
    case cancelled

    public var isTerminal: Bool { self == .completed || self == .failed || self == .cancelled }

    /// What can be asked of a run.
    public enum Command: String, Sendable, Hashable {
        case start, resume, complete, fail, cancel
        /// The loop breaker (action `pause`).
        case pause
    }

    /// Why a command does not apply, as the API answers it (409 with this code).
    public enum Refusal: String, Sendable, Hashable, Error {
        case alreadyCancelled = "run_already_cancelled"
        case finished = "run_finished"
        case notPaused = "run_not_paused"
    }

    /// The status after `command`, or why not. Idempotent where repeating is harmless: starting a running
    /// run, pausing a paused one.
    public func applying(_ command: Command) -> Result<RunStatus, Refusal> {
        switch (self, command) {
        case (.cancelled, .cancel): return .failure(.alreadyCancelled)
        case (.cancelled, _), (.completed, _), (.failed, _): return .failure(.finished)
        case (_, .cancel): return .success(.cancelled)
        case (_, .complete): return .success(.completed)
        case (_, .fail): return .success(.failed)
        case (.created, .start), (.running, .start): return .success(.running)
        case (.paused, .start): return .success(.paused)
        case (.paused, .resume): return .success(.running)
        case (_, .resume): return .failure(.notPaused)
        case (.created, .pause): return .success(.created)
        case (_, .pause): return .success(.paused)
        }
    }
}
