import Foundation

/// `intercept:` — how `CONNECT` tunnels are handled (README "HTTPS through the proxy").
///
/// On by default, also in the embedded default: an unmodified SDK calling `https://api.openai.com`
/// through `HTTPS_PROXY` is the common case, and the refusal it replaces made the proxy unusable for it.
public struct InterceptSettings: Sendable, Hashable {
    /// `false` refuses every `CONNECT` with 403 `connect_refused` (agents must send `http://` URLs).
    public var enabled = true
    /// The operator's CA certificate (PEM; may be an intermediate followed by its issuers) and its key.
    /// Both or neither; without them a CA is generated on first start under `<state.dir>/ca/`.
    public var caCert: String?
    public var caKey: String?
    /// Ports a tunnel may be opened to.
    public var allowedPorts: Set<Int> = [443]
    /// Names (exact or `*.`) tunnelled without interception, after the same checks, for cert-pinned
    /// clients. Never a tool's host: a brokered call must be read to get its credential.
    public var passthroughHosts: [String] = []
    /// Leaf certificates (one TLS context each) kept, least recently used evicted.
    public var leafCacheSize = 256
    /// Validity of a minted leaf; it is minted again when less than a tenth of it is left.
    public var leafValidity: Duration = .seconds(24 * 3600)
    /// From the `200 Connection established` to the end of the TLS handshake.
    public var handshakeTimeout: Duration = .seconds(10)

    public init() {}
}
