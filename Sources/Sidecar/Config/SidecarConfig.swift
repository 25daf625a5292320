import Foundation
import Policy
import Upstreams

/// A listen address `host:port` (port 0 = pick a free one; the chosen port is logged at start).
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public static func parse(_ s: String) -> HostPort? {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        var host = String(s[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard ConnectTarget.isHost(host) else { return nil }
        return HostPort(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Whether two listeners could not both bind: the same port (not 0, which picks a free one) on the same
    /// host, or on a host and a wildcard (`0.0.0.0`, `::`), which takes the port on every address.
    static func overlap(_ a: HostPort, _ b: HostPort) -> Bool {
        guard a.port == b.port, a.port != 0 else { return false }
        let wildcards: Set<String> = ["0.0.0.0", "::", "*", ""]
        return a.host.lowercased() == b.host.lowercased() || wildcards.contains(a.host) || wildcards.contains(b.host)
    }
}

/// Whether a tool's calls go to the real API or are answered by the adapter's mock.
public enum ToolMode: String, Sendable, Hashable {
    case mock
    case live
}

/// Per-tool configuration.
public struct ToolConfig: Sendable, Hashable {
    public var mode: ToolMode
    public var baseURL: TargetURL
    /// Upstream host names that identify the tool on the forward-proxy path.
    public var hosts: [String]
    public var connectTimeout: Duration
    /// Overall deadline of one call, including all attempts and the whole response body.
    public var timeout: Duration
    /// Name of the environment variable holding the credential (data-plane setups without a vault).
    public var credentialEnv: String?
    /// `http_fetch` only: use https upstream even when the agent asked for http.
    public var upgradeToHTTPS: Bool
    /// `openai` only: the organization and project the sidecar's key acts for (`OpenAI-Organization`,
    /// `OpenAI-Project`); the agent's own are removed — the key's owner chooses what it is billed to.
    public var openAIAccount = OpenAIAdapter.Account()

    public static func defaults(for tool: Tool) -> ToolConfig {
        ToolConfig(
            mode: .mock, baseURL: ToolEndpoint.defaultBaseURL(for: tool),
            hosts: EntryClassifier.defaultHosts[tool] ?? [], connectTimeout: .seconds(5),
            // OpenAI: the official SDK's own default (600 s). A reasoning model thinking for minutes, or
            // a long stream, that the agent would wait for without the sidecar is not cut by it.
            timeout: tool == .openai ? .seconds(600) : .seconds(30),
            credentialEnv: [.serpapi: "SERPAPI_API_KEY", .openai: "OPENAI_API_KEY", .gmailSend: "GMAIL_ACCESS_TOKEN"][tool],
            upgradeToHTTPS: false)
    }
}

/// Size and time limits of the proxy listener.
public struct ListenerLimits: Sendable, Hashable {
    /// Request line plus all header fields; larger heads get 431.
    public var maxHeaderBytes = 32 * 1024
    /// One request's body. 32 MiB: a vision or computer-use agent sends screenshots inline as base64
    /// (OpenAI takes up to 50 MB of images per request); nginx's 1 MiB refused a single phone photo.
    /// The compatibility API, whose bodies are a tool call's JSON, keeps 1 MiB (`compatBodyBytes`).
    public var maxRequestBodyBytes = 32 * 1024 * 1024
    /// Request bodies held at once across every connection: a body that would go past it is refused
    /// (503 `sidecar_overloaded`), so many large bodies at once cannot exhaust memory.
    public var maxBufferedRequestBytes = 256 * 1024 * 1024
    public var maxResponseBodyBytes = 32 * 1024 * 1024
    /// The compatibility API's body limit: at most 1 MiB, whatever `maxRequestBodyBytes` allows.
    public var compatBodyBytes: Int { min(maxRequestBodyBytes, 1024 * 1024) }
    /// A connection that sends nothing for this long between requests (or mid-request) is closed.
    public var idleTimeout: Duration = .seconds(60)
    /// From the first byte of a request to the end of its head (a drip-fed head is cut: 408).
    public var headerTimeout: Duration = .seconds(10)
    /// From the end of the head to the end of the body, for a request with a body (408).
    public var bodyTimeout: Duration = .seconds(30)
    /// How long in-flight requests may take to finish after SIGTERM before connections are cut.
    public var drainTimeout: Duration = .seconds(15)
    /// Open agent connections at most; nil: sized from the file descriptors (`ConnectionCap.budget`).
    public var maxConnections: Int?
}

/// How agents authenticate (DESIGN.md §5).
public struct AuthSettings: Sendable, Hashable {
    /// Off only for local experiments: every call is then made on behalf of an anonymous agent.
    public var required = true
    public var issuer = "agent-sidecar"
    public var audience = "agent-sidecar"
    public var leeway: Duration = .seconds(30)
    /// Longest lifetime a minted token may have.
    public var maxTTL: Duration = .seconds(24 * 3600)
    public var defaultTTL: Duration = .seconds(15 * 60)
    /// Directory of `keys init` files; default `<state.dir>/keys`, generated on first start if empty.
    public var keysDir: String?
    /// Shared secret (from this environment variable) that also verifies HS256 tokens; single host only.
    public var hs256SecretEnv: String?
    public var hs256Kid = "hs256"
    /// This sidecar's id, for tokens bound to sidecars (`SIDECAR_ID` overrides).
    public var sidecarID = "sidecar-1"
    /// Tokens of agents this sidecar does not know are refused (`agent_unknown`).
    public var requireRegisteredAgents = true
}

/// Where the sealed credential entries live and how they are unsealed.
public struct VaultSettings: Sendable, Hashable {
    /// Directory of `*.sealed` files; default `<state.dir>/vault`.
    public var dir: String?
    public var kekEnv = "KEK_BASE64"
    public var kekFile: String?
    public var gmailTokenURL = "https://oauth2.googleapis.com/token"
    /// `vault.canaries`: values that look like real keys, planted where an agent could find them; any
    /// appearance in an outbound call is refused and raises a `canary` security event.
    public var canaries: [String: String] = [:]
}

/// The whole configuration, compiled once at start and on reload.
public struct SidecarConfig: Sendable {
    public var proxyListen = HostPort(host: "127.0.0.1", port: 8080)
    public var adminListen = HostPort(host: "127.0.0.1", port: 9090)
    public var limits = ListenerLimits()
    public var caBundlePath: String?
    /// Off by default, as Envoy's upstreams: async-http-client 1.37.0 traps (takes the process down) on an
    /// HTTP/2 answer whose `:status` is below 100 followed by data (its state machine drops the head as
    /// informational, then meets the body; `test_fuzz.py` pins it). HTTP/1.1 over the sidecar's own pool
    /// refuses such an answer as a 502, and costs less CPU per request.
    public var http2 = false
    /// `upstream.proxy`: the HTTP egress proxy brokered calls leave through (nil: straight out).
    public var upstreamProxy: UpstreamProxy?
    public var maxConnectionsPerHost = 256
    public var tools: [Tool: ToolConfig] = Dictionary(uniqueKeysWithValues: Tool.allCases.map { ($0, ToolConfig.defaults(for: $0)) })
    public var logLevel = "info"
    public var accessLog = true
    /// Shared state for a fleet; nil = the embedded store.
    public var redisURL: String?
    /// `redis.cluster`: the URL names seed nodes of a Redis Cluster (also implied by `redis+cluster://`).
    public var redisCluster = false
    /// `redis.ca_bundle`: the CA(s) a `rediss://` server's certificate must chain to, instead of the
    /// system's trust roots (a managed service's or the organisation's own CA).
    public var redisCABundle: String?
    /// Pause between chunks of mock streaming answers.
    public var mockStreamDelay: Duration = .milliseconds(5)
    public var auth = AuthSettings()
    public var vault = VaultSettings()
    /// Embedded store, generated keys and the admin token file live here.
    public var stateDir = ".state"
    /// File holding the admin token (`SIDECAR_ADMIN_TOKEN` overrides); default `<state.dir>/admin.token`,
    /// generated on first start.
    public var adminTokenFile: String?
    public var adminMaxBodyBytes = 256 * 1024
    /// Open admin-port connections at most; nil: sized from the file descriptors (`ConnectionCap.budget`).
    public var adminMaxConnections: Int?
    /// The admin port's per-address rate limit and CORS origins.
    var adminGate = AdminGateSettings()
    /// Agent runs: events kept, retention, streams per run, heartbeat.
    var runs = RunSettings()
    /// Live pending approvals one agent may wait on; a call that would ask for another is 429
    /// `too_many_pending_approvals` (each is held in the store until it expires).
    var approvalsMaxPendingPerAgent = 100
    /// The exactly-once ledger of side-effecting calls.
    var idempotency = IdempotencySettings()
    /// The signed, hash-chained receipt of every call.
    var receipts = ReceiptSettings()
    /// Policy document; nil = the embedded default (no limits, original role defaults).
    public var policyFile: String?
    public var policyWatch = true
    public var redisPoolSize = 2
    public var redisCommandTimeout: Duration = .milliseconds(250)
    public var redisConnectTimeout: Duration = .milliseconds(500)
    var stateFailure = StateFailurePolicy()
    /// `state.concurrency_lease`: how long a concurrency slot stays held without renewal. Calls still
    /// running renew theirs every third of it; a crashed holder's slot frees within it.
    var concurrencyLeaseTTL: Duration = .seconds(30)
    /// `state.lease`: the limit classes a sidecar leases from Redis in batches (`LimitLeases`).
    var leasedClasses: Set<LimitCheck.Kind> = Set(LimitCheck.Kind.allCases)
    var resilience = ResilienceSettings()
    /// Address ranges http_fetch may reach although they are internal (e.g. a lab network).
    public var egressAllow: [CIDR] = []
    public var followRedirects = 0
    /// How long http_fetch remembers what a name resolved to (0: a lookup per call).
    public var dnsCacheTTL: Duration = .seconds(30)
    public var chaos = ChaosSettings()
    public var intercept = InterceptSettings()

    public var keysDir: String { auth.keysDir ?? (stateDir as NSString).appendingPathComponent("keys") }
    public var vaultDir: String { vault.dir ?? (stateDir as NSString).appendingPathComponent("vault") }
    /// Where a generated interception CA lives (`ca.pem`, `ca.key.pem`).
    public var caDir: String { (stateDir as NSString).appendingPathComponent("ca") }
    public var databasePath: String { (stateDir as NSString).appendingPathComponent("sidecar.sqlite") }
    public var adminTokenPath: String { adminTokenFile ?? (stateDir as NSString).appendingPathComponent("admin.token") }

    public init() {}

    public var mockTools: Set<Tool> { Set(tools.filter { $0.value.mode == .mock }.map(\.key)) }
}
