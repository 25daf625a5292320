import Foundation
import Logging
import NIOSSL
import Policy
import Upstreams

/// What `CONNECT` handling needs besides the pipeline: the settings, the leaf contexts, the
/// pass-through names, and the http_fetch destination check (resolve, check every address).
final class Interception: Sendable {
    let settings: InterceptSettings
    let leaves: LeafCertificates
    private let passthrough: [HostPattern]
    /// http_fetch's own transport: its resolver and egress guard decide whether a name may be reached.
    let destinations: SafeFetchTransport
    let metrics: GatewayMetrics?
    let logger: Logger
    /// http_fetch's connect timeout: what a pass-through relay waits for its upstream.
    let connectTimeout: Duration

    init(
        settings: InterceptSettings, leaves: LeafCertificates, destinations: SafeFetchTransport, connectTimeout: Duration, metrics: GatewayMetrics?,
        logger: Logger
    ) {
        self.settings = settings
        self.connectTimeout = connectTimeout
        self.logger = logger
        self.leaves = leaves
        // Validated when the configuration was read.
        passthrough = settings.passthroughHosts.compactMap(HostPattern.init)
        self.destinations = destinations
        self.metrics = metrics
    }

    func isPassthrough(_ host: String) -> Bool { passthrough.contains { $0.matches(host) } }

    /// The TLS context presenting a leaf for `name` (the tunnel's host: the ClientHello's server name
    /// equals it, or there was none — an IP-literal target), counted in the metrics.
    func context(for name: String) throws -> NIOSSLContext {
        let (context, minted) = try leaves.context(for: name, now: Date())
        if minted {
            metrics?.leavesMinted.increment()
            metrics?.leafCertificates.set(to: Double(leaves.count))
        }
        return context
    }
}
