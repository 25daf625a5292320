import Logging
import Synchronization

/// Stores each sealed receipt head in Redis (`ReceiptLog.headKey`), so a chain cut short on one host is
/// visible fleet-wide (`sidecar receipts verify --redis`).
///
/// One sender at a time, always the newest head: a task per seal (as before) could land out of order —
/// an older head's `SET` arriving after a newer one's leaves Redis naming the older head, and a truncation
/// of what came after it would verify clean. A Redis that fails is retried (`retry` apart) with the newest
/// head, and logged once until it answers again, instead of dropping heads silently.
final class ReceiptHeadPublisher: Sendable {
    private struct State {
        var latest: (seq: Int64, hash: String)?
        var stored: Int64 = 0
        var sending = false
        var failing = false
    }

    private let state = Mutex(State())
    private let key: String
    private let logger: Logger
    private let retry: Duration
    private let send: @Sendable ([String]) async throws -> Void

    init(key: String, logger: Logger, retry: Duration = .seconds(1), send: @escaping @Sendable ([String]) async throws -> Void) {
        self.key = key
        self.logger = logger
        self.retry = retry
        self.send = send
    }

    /// A head was sealed; an older one than the newest seen is ignored.
    func publish(seq: Int64, hash: String) {
        let start = state.withLock { s -> Bool in
            guard seq > (s.latest?.seq ?? s.stored) else { return false }
            s.latest = (seq, hash)
            if s.sending { return false }
            s.sending = true
            return true
        }
        if start { Task { await self.drain() } }
    }

    /// The newest head stored in Redis so far (0: none).
    var stored: Int64 { state.withLock { $0.stored } }

    private func drain() async {
        while true {
            let next: (seq: Int64, hash: String)? = state.withLock { s in
                guard let latest = s.latest, latest.seq > s.stored else {
                    s.sending = false
                    return nil
                }
                return latest
            }
            guard let next else { return }
            do {
                try await send(["SET", key, "\(next.seq) \(next.hash)"])
                let recovered = state.withLock { s -> Bool in
                    s.stored = max(s.stored, next.seq)
                    defer { s.failing = false }
                    return s.failing
                }
                if recovered { logger.info("the receipt chain's head is stored in Redis again", metadata: ["seq": "\(next.seq)"]) }
            } catch {
                let first = state.withLock { s -> Bool in
                    defer { s.failing = true }
                    return !s.failing
                }
                if first {
                    logger.warning(
                        "cannot store the receipt chain's head in Redis; retrying with the newest head",
                        metadata: ["seq": "\(next.seq)", "error": "\(error)"])
                }
                try? await Task.sleep(for: retry)
            }
        }
    }
}
