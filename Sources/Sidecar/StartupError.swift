import NIOConcurrencyHelpers

/// A start-up step that failed, naming what and where (a listener's address, a file, a directory):
/// logged as the one `sidecar failed` line before the process exits 1.
struct StartupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// What start-up has made that must be shut down however the run ends — above all async-http-client's
/// clients, which trap the process when they are released without a shutdown. Shut down last made,
/// first.
final class ShutdownList: Sendable {
    private let steps = NIOLockedValueBox<[@Sendable () async -> Void]>([])

    func add(_ step: @escaping @Sendable () async -> Void) { steps.withLockedValue { $0.append(step) } }

    func run() async {
        let all = steps.withLockedValue { s in
            defer { s.removeAll() }
            return s
        }
        for step in all.reversed() { await step() }
    }
}
