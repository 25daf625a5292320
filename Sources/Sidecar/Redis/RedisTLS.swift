import NIOCore
import NIOSSL
import Upstreams

/// TLS to Redis (`rediss://`, `rediss+cluster://`), as managed Redis services require it (in-transit
/// encryption): one client context for every connection to the fleet's Redis — the system's trust
/// roots, or the operator's `redis.ca_bundle` in their place. The server's certificate is verified
/// against the name in the URL (or, for an IP literal, its address; SNI carries names only). The
/// password then travels encrypted, which plain `redis://` cannot offer off one host.
final class RedisTLS: Sendable, Hashable {
    let context: NIOSSLContext

    /// - Throws: `StartupError` naming `redis.ca_bundle` when the bundle cannot be read or holds no
    ///   certificate.
    init(caBundle: String?) throws {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if let caBundle { configuration.trustRoots = .certificates(try SidecarApp.readCABundle(caBundle, field: "redis.ca_bundle")) }
        do { context = try NIOSSLContext(configuration: configuration) } catch {
            throw StartupError("redis TLS: cannot make a client context (\(error))")
        }
    }

    /// The system's trust roots, for a `rediss://` URL without `redis.ca_bundle` (made on first use).
    static let system: Result<RedisTLS, any Error> = Result { try RedisTLS(caBundle: nil) }

    /// The handler that runs TLS on a new connection to `host`.
    func handler(host: String) throws -> NIOSSLClientHandler {
        // SNI and name verification take a name; an IP literal is verified against the peer's address.
        let name = IPAddress.parse(host) == nil ? host : nil
        return try NIOSSLClientHandler(context: context, serverHostname: name)
    }

    static func isTLSError(_ error: any Error) -> Bool { TLSFailure.isTLS(error) }

    /// The reason, with a hint where the operator's setting is the likely cause.
    static func describe(_ error: any Error) -> String {
        let reason = TLSFailure.reason(error)
        if reason.hasPrefix("the certificate does not name") { return "TLS: the server's certificate does not name the host or address in the URL" }
        let hint = reason == "CERTIFICATE_VERIFY_FAILED" ? " (the server's certificate does not chain to redis.ca_bundle, or to the system's roots without it, or names another host)" : ""
        return "TLS: \(reason)\(hint)"
    }

    static func == (a: RedisTLS, b: RedisTLS) -> Bool { a === b }
    func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}
