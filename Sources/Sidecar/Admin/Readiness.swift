import Synchronization

/// Readiness as the admin port reports it: ready once configuration is loaded and the proxy listener is
/// bound, not ready while draining. It reads flags only, so it cannot flap under load.
final class Readiness: Sendable {
    private let proxyBound = Atomic<Bool>(false)
    private let draining = Atomic<Bool>(false)

    func markProxyBound() { proxyBound.store(true, ordering: .releasing) }
    func markDraining() { draining.store(true, ordering: .releasing) }

    var isReady: Bool { proxyBound.load(ordering: .acquiring) && !draining.load(ordering: .acquiring) }
    var isDraining: Bool { draining.load(ordering: .acquiring) }
}
