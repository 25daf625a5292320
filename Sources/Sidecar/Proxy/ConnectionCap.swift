import Logging
import NIOCore
import Prometheus
import Synchronization

/// At most `max` open connections on one listener; the next is closed as soon as it is accepted.
///
/// Without a cap, a client that opens connections and sends nothing took one file descriptor each until
/// the process had none: every listener then failed to accept, so the admin port's `/healthz` — what the
/// orchestrator restarts the pod by — timed out with the agents' calls. Each listener has its own cap,
/// and both together stay inside the descriptors the process may open (`ConnectionCap.budget`), so a
/// flood of one port leaves the other, the upstream connections and the store their descriptors.
/// Refusals are counted and logged at most once per 10 s, with how many were refused since.
final class ConnectionCap: Sendable {
    let listener: String
    let max: Int
    private let open = Atomic<Int>(0)
    private let throttle = LogThrottle()
    private let openGauge: Gauge
    private let refusedCounter: Prometheus.Counter
    private let logger: Logger

    init(listener: String, max: Int, metrics: GatewayMetrics, logger: Logger) {
        self.listener = listener
        self.max = max
        self.logger = logger
        (openGauge, refusedCounter) = metrics.connectionSeries(listener: listener)
    }

    /// Counts a new connection in; false when the listener is full (the caller closes it).
    func admit() -> Bool {
        let now = open.wrappingAdd(1, ordering: .relaxed).newValue
        if now <= max {
            openGauge.increment()
            return true
        }
        open.wrappingSubtract(1, ordering: .relaxed)
        refusedCounter.increment()
        if let refused = throttle.admit() {
            logger.warning(
                "connection cap reached; new connections are closed",
                metadata: ["listener": "\(listener)", "max_connections": "\(max)", "refused": "\(refused)"])
        }
        return false
    }

    func release() {
        open.wrappingSubtract(1, ordering: .relaxed)
        openGauge.decrement()
    }

    var count: Int { open.load(ordering: .relaxed) }

    /// A channel's place under the cap: taken when the connection is active, given back when it closes;
    /// over the cap, the connection is closed before anything is read from it.
    final class Handler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = NIOAny
        private let cap: ConnectionCap
        private var state = State.waiting

        private enum State { case waiting, counted, refused }

        init(_ cap: ConnectionCap) { self.cap = cap }

        func handlerAdded(context: ChannelHandlerContext) {
            if context.channel.isActive { take(context) }
        }

        func channelActive(context: ChannelHandlerContext) {
            take(context)
            if case .counted = state { context.fireChannelActive() }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .refused = state else { return context.fireChannelRead(data) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            give()
            context.fireChannelInactive()
        }

        func handlerRemoved(context: ChannelHandlerContext) { give() }

        private func take(_ context: ChannelHandlerContext) {
            guard case .waiting = state else { return }
            if cap.admit() {
                state = .counted
            } else {
                state = .refused
                context.close(promise: nil)
            }
        }

        private func give() {
            guard case .counted = state else { return }
            state = .waiting
            cap.release()
        }
    }
}
