import Foundation
import Policy
import Upstreams

/// Reads `SidecarConfig` from YAML plus environment overrides, naming the field path of any mistake.
public enum ConfigLoader {
    /// Loads a file (or the embedded default when `path` is nil) and applies the environment.
    public static func load(path: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws(DocumentError)
        -> SidecarConfig
    {
        var config = SidecarConfig()
        if let path {
            let text: String
            do { text = try TextFile.read(path) } catch { throw DocumentError(path: "", message: error.description) }
            config = try parse(text)
        }
        try applyEnvironment(environment, to: &config)
        if config.resilience.sharedCache, config.redisURL == nil {
            throw DocumentError(path: "resilience.cache.shared", message: "needs Redis (redis.url or REDIS_URL)")
        }
        // Both listeners on one address: the second bind would fail as "address already in use", naming
        // no one — the sidecar itself holds it. A wildcard host covers every other host on its port.
        if HostPort.overlap(config.proxyListen, config.adminListen) {
            throw DocumentError(path: "listen.admin", message: "\(config.adminListen) is the proxy's address too (listen.proxy \(config.proxyListen)); give the admin port its own")
        }
        // A bundle for a connection that runs no TLS would be ignored without a word.
        if config.redisCABundle != nil, config.redisURL.flatMap({ RedisLocation.parse($0, cluster: config.redisCluster) })?.secure != true {
            throw DocumentError(path: "redis.ca_bundle", message: "needs a TLS Redis URL (rediss:// or rediss+cluster://)")
        }
        return config
    }

    public static func parse(_ text: String) throws(DocumentError) -> SidecarConfig {
        let root = DocumentReader(try YAMLDocument.parse(text))
        try root.checkKeys(["version", "listen", "limits", "upstream", "tools", "log", "redis", "mock", "auth", "vault", "state", "admin", "policy", "resilience", "egress", "chaos", "intercept", "runs", "idempotency", "receipts", "approvals",
        ])
        if let v = try root["version"].int(), v != 1 { throw root["version"].error("unsupported version \(v) (expected 1)") }
        var c = SidecarConfig()

        let listen = root["listen"]
        try listen.checkKeys(["proxy", "admin"])
        if let s = try listen["proxy"].string() { c.proxyListen = try hostPort(s, listen["proxy"]) }
        if let s = try listen["admin"].string() { c.adminListen = try hostPort(s, listen["admin"]) }

        let limits = root["limits"]
        try limits.checkKeys([
            "max_header_bytes", "max_request_body_bytes", "max_buffered_request_bytes", "max_response_body_bytes", "idle_timeout", "header_timeout",
            "body_timeout", "drain_timeout", "max_connections",
        ])
        c.limits.maxHeaderBytes = try limits["max_header_bytes"].int(default: c.limits.maxHeaderBytes, range: 1024...1_048_576)
        c.limits.maxRequestBodyBytes = try limits["max_request_body_bytes"].int(default: c.limits.maxRequestBodyBytes, range: 0...1_073_741_824)
        c.limits.maxBufferedRequestBytes = try limits["max_buffered_request_bytes"].int(
            default: max(c.limits.maxBufferedRequestBytes, c.limits.maxRequestBodyBytes), range: 0...68_719_476_736)
        guard c.limits.maxBufferedRequestBytes >= c.limits.maxRequestBodyBytes else {
            throw limits["max_buffered_request_bytes"].error(
                "must be at least max_request_body_bytes (\(c.limits.maxRequestBodyBytes)): one whole body must fit")
        }
        c.limits.maxResponseBodyBytes = try limits["max_response_body_bytes"].int(default: c.limits.maxResponseBodyBytes, range: 1024...1_073_741_824)
        c.limits.idleTimeout = try positive(limits["idle_timeout"], default: c.limits.idleTimeout)
        c.limits.headerTimeout = try positive(limits["header_timeout"], default: c.limits.headerTimeout)
        c.limits.bodyTimeout = try positive(limits["body_timeout"], default: c.limits.bodyTimeout)
        c.limits.drainTimeout = try limits["drain_timeout"].duration(default: c.limits.drainTimeout)
        c.limits.maxConnections = try connectionCap(limits["max_connections"])

        let upstream = root["upstream"]
        try upstream.checkKeys(["ca_bundle", "http2", "max_connections_per_host", "proxy"])
        if let text = try upstream["proxy"].string(), !text.isEmpty {
            switch UpstreamProxy.parse(text) {
            case .success(let proxy): c.upstreamProxy = proxy
            case .failure(let e): throw upstream["proxy"].error(e.reason)
            }
        }
        if let ca = try upstream["ca_bundle"].string() {
            guard FileManager.default.isReadableFile(atPath: ca) else { throw upstream["ca_bundle"].error("file not readable: \(ca)") }
            c.caBundlePath = ca
        }
        c.http2 = try upstream["http2"].bool(default: c.http2)
        c.maxConnectionsPerHost = try upstream["max_connections_per_host"].int(default: 256, range: 1...10_000)

        let tools = root["tools"]
        var explicit = Set<Tool>()
        for (name, node) in try tools.entries() {
            guard let tool = Tool(rawValue: name) else {
                throw node.error("unknown tool (known: \(Tool.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            c.tools[tool] = try toolConfig(tool, node)
            if node["hosts"].isPresent { explicit.insert(tool) }
        }
        var seenHosts: [String: Tool] = [:]
        for tool in Tool.allCases {
            for host in c.tools[tool]!.hosts {
                if let other = seenHosts[host.lowercased()], other != tool {
                    // Blame the list the operator wrote, not a default.
                    let (culprit, victim) = explicit.contains(tool) ? (tool, other) : (other, tool)
                    throw tools[culprit.rawValue]["hosts"].error("host \(host) is already listed for \(victim)")
                }
                seenHosts[host.lowercased()] = tool
            }
        }

        try resilience(root["resilience"], tools: tools, into: &c)
        let egress = root["egress"]
        try egress.checkKeys(["allow_cidrs", "follow_redirects", "dns_cache_ttl"])
        for (i, text) in (try egress["allow_cidrs"].strings() ?? []).enumerated() {
            guard let cidr = CIDR(text) else { throw DocumentError(path: "\(egress["allow_cidrs"].path)[\(i)]", message: "expected a CIDR like 10.1.0.0/16") }
            c.egressAllow.append(cidr)
        }
        c.followRedirects = try egress["follow_redirects"].int(default: 0, range: 0...10)
        c.dnsCacheTTL = try egress["dns_cache_ttl"].duration(default: c.dnsCacheTTL)
        c.chaos = try chaosSettings(root["chaos"])
        c.intercept = try interceptSettings(root["intercept"], tools: c.tools)

        let log = root["log"]
        try log.checkKeys(["level", "access_log"])
        c.logLevel = try logLevel(try log["level"].string(default: "info"), log["level"])
        c.accessLog = try log["access_log"].bool(default: true)

        let mock = root["mock"]
        try mock.checkKeys(["stream_delay"])
        c.mockStreamDelay = try mock["stream_delay"].duration(default: c.mockStreamDelay)

        let redis = root["redis"]
        try redis.checkKeys(["url", "cluster", "pool_size", "command_timeout", "connect_timeout", "ca_bundle"])
        c.redisURL = try redis["url"].string()
        c.redisCABundle = try redis["ca_bundle"].string()
        c.redisCluster = try redis["cluster"].bool(default: false)
        if let url = c.redisURL, RedisLocation.parse(url, cluster: c.redisCluster) == nil {
            throw redis["url"].error(RedisLocation.syntax)
        }
        c.redisPoolSize = try redis["pool_size"].int(default: 2, range: 1...64)
        c.redisCommandTimeout = try positive(redis["command_timeout"], default: c.redisCommandTimeout)
        c.redisConnectTimeout = try positive(redis["connect_timeout"], default: c.redisConnectTimeout)

        let policy = root["policy"]
        try policy.checkKeys(["file", "watch"])
        c.policyFile = try policy["file"].string()
        c.policyWatch = try policy["watch"].bool(default: true)

        let auth = root["auth"]
        try auth.checkKeys([
            "required", "issuer", "audience", "leeway", "max_ttl", "default_ttl", "keys_dir", "hs256_secret_env", "hs256_kid",
            "sidecar_id", "require_registered_agents",
        ])
        c.auth.required = try auth["required"].bool(default: true)
        c.auth.issuer = try auth["issuer"].string(default: c.auth.issuer)
        c.auth.audience = try auth["audience"].string(default: c.auth.audience)
        c.auth.leeway = try auth["leeway"].duration(default: c.auth.leeway)
        c.auth.maxTTL = try positive(auth["max_ttl"], default: c.auth.maxTTL)
        c.auth.defaultTTL = try positive(auth["default_ttl"], default: c.auth.defaultTTL)
        guard c.auth.defaultTTL <= c.auth.maxTTL else { throw auth["default_ttl"].error("must not exceed max_ttl") }
        c.auth.keysDir = try auth["keys_dir"].string()
        c.auth.hs256SecretEnv = try environmentName(auth["hs256_secret_env"])
        c.auth.hs256Kid = try auth["hs256_kid"].string(default: c.auth.hs256Kid)
        c.auth.sidecarID = try auth["sidecar_id"].string(default: c.auth.sidecarID)
        c.auth.requireRegisteredAgents = try auth["require_registered_agents"].bool(default: true)

        let vault = root["vault"]
        try vault.checkKeys(["dir", "kek_env", "kek_file", "gmail_token_url", "canaries"])
        for (id, value) in try vault["canaries"].entries() {
            let text = try value.requiredString()
            guard text.utf8.count >= 8 else { throw value.error("a canary must be at least 8 bytes (shorter ones could match by chance)") }
            c.vault.canaries[id] = text
        }
        c.vault.dir = try vault["dir"].string()
        c.vault.kekEnv = try environmentName(vault["kek_env"]) ?? c.vault.kekEnv
        c.vault.kekFile = try vault["kek_file"].string()
        if let url = try vault["gmail_token_url"].string() {
            do { _ = try TargetURL.parse(url) } catch { throw vault["gmail_token_url"].error(error.reason) }
            c.vault.gmailTokenURL = url
        }

        let state = root["state"]
        try state.checkKeys(["dir", "on_redis_failure", "concurrency_lease", "lease"])
        c.leasedClasses = try leaseClasses(state["lease"])
        c.stateDir = try state["dir"].string(default: c.stateDir)
        c.concurrencyLeaseTTL = try state["concurrency_lease"].duration(default: c.concurrencyLeaseTTL)
        guard c.concurrencyLeaseTTL >= .seconds(3), c.concurrencyLeaseTTL <= .seconds(3600) else {
            throw state["concurrency_lease"].error("expected a duration from 3s to 1h")
        }
        let failure = state["on_redis_failure"]
        try failure.checkKeys(["rate", "concurrency", "quota", "budget"])
        func action(_ key: String, _ value: StateFailurePolicy.Action) throws(DocumentError) -> StateFailurePolicy.Action {
            guard let s = try failure[key].string() else { return value }
            guard let a = StateFailurePolicy.Action(rawValue: s) else { throw failure[key].error("expected closed, local or open") }
            return a
        }
        c.stateFailure = StateFailurePolicy(
            rate: try action("rate", .local), concurrency: try action("concurrency", .local), quota: try action("quota", .closed),
            budget: try action("budget", .closed))

        let admin = root["admin"]
        try admin.checkKeys(["token_file", "max_body_bytes", "rate_limit", "cors_origins", "max_connections"])
        c.adminMaxConnections = try connectionCap(admin["max_connections"])
        c.adminTokenFile = try admin["token_file"].string()
        c.adminMaxBodyBytes = try admin["max_body_bytes"].int(default: c.adminMaxBodyBytes, range: 1024...16_777_216)
        let rate = admin["rate_limit"]
        try rate.checkKeys(["per_second", "burst"])
        c.adminGate.ratePerSecond = try rate["per_second"].int(default: c.adminGate.ratePerSecond, range: 1...1_000_000)
        c.adminGate.burst = try rate["burst"].int(default: c.adminGate.burst, range: 1...1_000_000)
        if let origins = try admin["cors_origins"].strings() {
            for (i, o) in origins.enumerated() {
                guard let url = URL(string: o), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil, url.path.isEmpty,
                    url.query == nil
                else { throw admin["cors_origins"].error("entry \(i): expected an origin like https://console.example.com (scheme, host, optional port; no path)") }
            }
            c.adminGate.corsOrigins = origins
        }

        let runs = root["runs"]
        try runs.checkKeys(["max_events", "retention", "max_streams_per_run", "heartbeat", "max_open_per_agent"])
        c.runs.maxOpenPerAgent = try runs["max_open_per_agent"].int(default: c.runs.maxOpenPerAgent, range: 1...1_000_000)
        c.runs.maxEvents = try runs["max_events"].int(default: c.runs.maxEvents, range: 10...1_000_000)
        c.runs.maxStreamsPerRun = try runs["max_streams_per_run"].int(default: c.runs.maxStreamsPerRun, range: 1...10_000)
        if let r = try runs["retention"].duration() {
            guard r >= .seconds(60) else { throw runs["retention"].error("must be at least 1m") }
            c.runs.retention = r
        }
        if let h = try runs["heartbeat"].duration() {
            guard h >= .milliseconds(100), h <= .seconds(300) else { throw runs["heartbeat"].error("must be between 100ms and 5m") }
            c.runs.heartbeat = h
        }
        let approvals = root["approvals"]
        try approvals.checkKeys(["max_pending_per_agent"])
        c.approvalsMaxPendingPerAgent = try approvals["max_pending_per_agent"].int(default: c.approvalsMaxPendingPerAgent, range: 1...1_000_000)
        c.idempotency = try idempotencySettings(root["idempotency"])
        let receipts = root["receipts"]
        try receipts.checkKeys(["enabled", "dir", "max_file_bytes", "seal_interval", "seal_batch"])
        c.receipts.enabled = try receipts["enabled"].bool(default: c.receipts.enabled)
        c.receipts.dir = try receipts["dir"].string()
        c.receipts.maxFileBytes = try receipts["max_file_bytes"].int(default: c.receipts.maxFileBytes, range: 65_536...(1 << 40))
        if let d = try receipts["seal_interval"].duration() {
            guard d >= .milliseconds(1), d <= .seconds(10) else { throw receipts["seal_interval"].error("must be between 1ms and 10s") }
            c.receipts.sealInterval = d
        }
        c.receipts.batch = try receipts["seal_batch"].int(default: c.receipts.batch, range: 1...100_000)
        return c
    }

    static func idempotencySettings(_ node: DocumentReader) throws(DocumentError) -> IdempotencySettings {
        var s = IdempotencySettings()
        try node.checkKeys(["enabled", "calls", "window", "in_flight", "max_stored_bytes"])
        s.enabled = try node["enabled"].bool(default: s.enabled)
        if let calls = try node["calls"].strings() {
            for call in calls {
                let parts = call.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                guard let tool = Tool(rawValue: parts[0]), parts.count == 1 || tool.actions.contains(parts[1]) else {
                    throw node["calls"].error("\(call) is not a tool (gmail_send) or one of its scopes (gmail_send:send)")
                }
            }
            s.calls = Set(calls)
        }
        s.window = try positive(node["window"], default: s.window)
        s.inFlight = try positive(node["in_flight"], default: s.inFlight)
        s.maxStoredBytes = try node["max_stored_bytes"].int(default: s.maxStoredBytes, range: 0...16_777_216)
        return s
    }

    static func resilience(_ node: DocumentReader, tools: DocumentReader, into c: inout SidecarConfig) throws(DocumentError) {
        try node.checkKeys(["retry", "breaker", "bulkhead", "cache"])
        var r = c.resilience
        let retry = node["retry"]
        try retry.checkKeys(["max_attempts", "base_delay", "max_delay", "budget_ratio", "budget_min_per_second"])
        let breaker = node["breaker"]
        try breaker.checkKeys(["window", "minimum_volume", "failure_rate", "consecutive_failures", "open", "max_open", "half_open_probes"])
        let bulkhead = node["bulkhead"]
        try bulkhead.checkKeys(["max_concurrent", "queue", "wait"])
        let cache = node["cache"]
        try cache.checkKeys(["max_bytes", "max_entry_bytes", "stale_if_error", "openai", "shared"])
        for tool in Tool.allCases {
            var t = r.tools[tool]!
            if tool != .gmailSend { t.retry.maxAttempts = try retry["max_attempts"].int(default: t.retry.maxAttempts, range: 1...10) }
            t.retry.baseDelayMilliseconds = try positive(retry["base_delay"], default: .milliseconds(t.retry.baseDelayMilliseconds)).milliseconds
            t.retry.maxDelayMilliseconds = try positive(retry["max_delay"], default: .milliseconds(t.retry.maxDelayMilliseconds)).milliseconds
            t.breaker.windowMilliseconds = try positive(breaker["window"], default: .milliseconds(t.breaker.windowMilliseconds)).milliseconds
            t.breaker.minimumVolume = try breaker["minimum_volume"].int(default: t.breaker.minimumVolume, range: 1...100_000)
            if let rate = try breaker["failure_rate"].double() {
                guard rate > 0, rate <= 1 else { throw breaker["failure_rate"].error("must be in (0, 1]") }
                t.breaker.failureRate = rate
            }
            t.breaker.consecutiveFailures = try breaker["consecutive_failures"].int(default: t.breaker.consecutiveFailures, range: 1...10_000)
            t.breaker.baseOpenMilliseconds = try positive(breaker["open"], default: .milliseconds(t.breaker.baseOpenMilliseconds)).milliseconds
            t.breaker.maxOpenMilliseconds = try positive(breaker["max_open"], default: .milliseconds(t.breaker.maxOpenMilliseconds)).milliseconds
            t.breaker.halfOpenProbes = try breaker["half_open_probes"].int(default: t.breaker.halfOpenProbes, range: 1...100)
            t.maxConcurrent = try bulkhead["max_concurrent"].int(default: t.maxConcurrent, range: 1...100_000)
            t.queue = try bulkhead["queue"].int(default: t.queue, range: 0...1_000_000)
            t.queueWait = try positive(bulkhead["wait"], default: t.queueWait)
            // Per-tool overrides.
            let tn = tools[tool.rawValue]
            if let v = try tn["max_concurrent"].int() { t.maxConcurrent = v }
            if let v = try tn["retry_attempts"].int() {
                guard (1...10).contains(v) else { throw tn["retry_attempts"].error("must be between 1 and 10") }
                guard tool != .gmailSend || v == 1 else { throw tn["retry_attempts"].error("gmail_send is never retried (a retry could send twice)") }
                t.retry.maxAttempts = v
            }
            if let v = try tn["cache_ttl"].duration() {
                guard tool != .gmailSend || v == .zero else { throw tn["cache_ttl"].error("gmail_send answers are never cached") }
                t.cacheTTL = v
            }
            r.tools[tool] = t
        }
        if let ratio = try retry["budget_ratio"].double() {
            guard ratio >= 0, ratio <= 1 else { throw retry["budget_ratio"].error("must be between 0 and 1") }
            r.retryBudgetRatio = ratio
        }
        if let m = try retry["budget_min_per_second"].double() {
            guard m >= 0 else { throw retry["budget_min_per_second"].error("must not be negative") }
            r.retryBudgetMinimumPerSecond = m
        }
        r.cacheMaxBytes = try cache["max_bytes"].int(default: r.cacheMaxBytes, range: 0...(1 << 34))
        r.cacheMaxEntryBytes = try cache["max_entry_bytes"].int(default: r.cacheMaxEntryBytes, range: 0...(1 << 30))
        r.staleIfError = try cache["stale_if_error"].duration(default: r.staleIfError)
        r.openAICache = try cache["openai"].bool(default: false)
        r.sharedCache = try cache["shared"].bool(default: false)
        c.resilience = r
    }

    /// `chaos:` — faults per tool (`"*"` for every tool); `FF_CHAOS=on` switches it on at start.
    static func chaosSettings(_ node: DocumentReader) throws(DocumentError) -> ChaosSettings {
        try node.checkKeys(["enabled", "seed", "duration", "gmail_opt_in", "tools"])
        var s = ChaosSettings()
        s.enabled = try node["enabled"].bool(default: false)
        if let seed = try node["seed"].int() { s.seed = UInt64(bitPattern: Int64(seed)) }
        if let d = try node["duration"].duration() { s.until = unixMillis() + d.milliseconds }
        s.gmailOptIn = try node["gmail_opt_in"].bool(default: false)
        for (name, f) in try node["tools"].entries() {
            guard name == "*" || Tool(rawValue: name) != nil else { throw f.error("unknown tool") }
            try f.checkKeys(["error_rate", "error_statuses", "rate_limit_rate", "retry_after", "timeout_rate", "latency_min_ms", "latency_max_ms", "truncate_rate"])
            var faults = ChaosFaults()
            func rate(_ key: String) throws(DocumentError) -> Double {
                let v = try f[key].double() ?? 0
                guard (0...1).contains(v) else { throw f[key].error("must be between 0 and 1") }
                return v
            }
            faults.errorRate = try rate("error_rate")
            faults.rateLimitRate = try rate("rate_limit_rate")
            faults.timeoutRate = try rate("timeout_rate")
            faults.truncateRate = try rate("truncate_rate")
            if let statuses = try f["error_statuses"].strings() {
                let codes = statuses.compactMap(Int.init)
                guard codes.count == statuses.count, codes.allSatisfy({ (500...599).contains($0) }) else {
                    throw f["error_statuses"].error("expected 5xx status codes")
                }
                faults.errorStatuses = codes
            }
            faults.retryAfterSeconds = try f["retry_after"].int(default: 1, range: 0...3600)
            faults.latencyMinMilliseconds = try f["latency_min_ms"].int(default: 0, range: 0...600_000)
            faults.latencyMaxMilliseconds = try f["latency_max_ms"].int(default: faults.latencyMinMilliseconds, range: faults.latencyMinMilliseconds...600_000)
            s.tools[name] = faults
        }
        return s
    }

    /// `intercept:` — CONNECT interception (README "HTTPS through the proxy").
    static func interceptSettings(_ node: DocumentReader, tools: [Tool: ToolConfig]) throws(DocumentError) -> InterceptSettings {
        try node.checkKeys(["enabled", "ca_cert", "ca_key", "allowed_ports", "passthrough_hosts", "leaf_cache_size", "leaf_validity", "handshake_timeout"])
        var s = InterceptSettings()
        s.enabled = try node["enabled"].bool(default: true)
        s.caCert = try node["ca_cert"].string()
        s.caKey = try node["ca_key"].string()
        guard (s.caCert == nil) == (s.caKey == nil) else {
            throw node[s.caCert == nil ? "ca_cert" : "ca_key"].error("ca_cert and ca_key go together (or leave both out to use a generated CA)")
        }
        for key in ["ca_cert", "ca_key"] {
            if let path = try node[key].string(), !FileManager.default.isReadableFile(atPath: path) {
                throw node[key].error("file not readable: \(path)")
            }
        }
        if node["allowed_ports"].isPresent {
            let ports = node["allowed_ports"]
            var set = Set<Int>()
            for (i, text) in (try ports.strings() ?? []).enumerated() {
                guard let p = Int(text), (1...65535).contains(p) else {
                    throw DocumentError(path: "\(ports.path)[\(i)]", message: "expected a port between 1 and 65535")
                }
                set.insert(p)
            }
            guard !set.isEmpty else { throw ports.error("must list at least one port (set enabled: false to refuse every CONNECT)") }
            s.allowedPorts = set
        }
        let toolHosts = Set(tools.filter { $0.key.isBrokered }.flatMap(\.value.hosts).map { $0.lowercased() })
        let hosts = node["passthrough_hosts"]
        for (i, text) in (try hosts.strings() ?? []).enumerated() {
            let path = "\(hosts.path)[\(i)]"
            guard let pattern = HostPattern(text) else { throw DocumentError(path: path, message: "expected a host name or *.domain") }
            if let host = toolHosts.first(where: pattern.matches) {
                throw DocumentError(path: path, message: "matches \(host), a tool host: its calls must be intercepted to broker the credential")
            }
            s.passthroughHosts.append(text.lowercased())
        }
        s.leafCacheSize = try node["leaf_cache_size"].int(default: s.leafCacheSize, range: 1...100_000)
        s.leafValidity = try positive(node["leaf_validity"], default: s.leafValidity)
        guard s.leafValidity >= .seconds(3600), s.leafValidity <= .seconds(397 * 86400) else {
            throw node["leaf_validity"].error("must be between 1h and 397d")
        }
        s.handshakeTimeout = try positive(node["handshake_timeout"], default: s.handshakeTimeout)
        return s
    }

    static func toolConfig(_ tool: Tool, _ node: DocumentReader) throws(DocumentError) -> ToolConfig {
        try node.checkKeys(["mode", "base_url", "hosts", "connect_timeout", "timeout", "credential_env", "upgrade_to_https", "max_concurrent", "retry_attempts", "cache_ttl", "organization", "project"])
        var t = ToolConfig.defaults(for: tool)
        if let m = try node["mode"].string() {
            guard let mode = ToolMode(rawValue: m) else { throw node["mode"].error("expected mock or live") }
            t.mode = mode
        }
        if let raw = try node["base_url"].string() {
            guard tool != .httpFetch else { throw node["base_url"].error("http_fetch has no base URL: it goes where the agent asks") }
            do { t.baseURL = try TargetURL.parse(raw) } catch { throw node["base_url"].error(error.reason) }
            guard t.baseURL.query == nil else { throw node["base_url"].error("must not carry a query") }
        }
        if let hosts = try node["hosts"].strings() {
            guard tool != .httpFetch else { throw node["hosts"].error("http_fetch is every host not listed for another tool") }
            t.hosts = hosts.map { $0.lowercased() }
        }
        t.connectTimeout = try positive(node["connect_timeout"], default: t.connectTimeout)
        t.timeout = try positive(node["timeout"], default: t.timeout)
        t.credentialEnv = try environmentName(node["credential_env"]) ?? t.credentialEnv
        t.upgradeToHTTPS = try node["upgrade_to_https"].bool(default: false)
        if t.upgradeToHTTPS, tool != .httpFetch { throw node["upgrade_to_https"].error("only applies to http_fetch") }
        for (key, path) in [("organization", \OpenAIAdapter.Account.organization), ("project", \.project)] {
            guard let value = try node[key].string() else { continue }
            guard tool == .openai else { throw node[key].error("only applies to openai") }
            guard OpenAIAdapter.Account.isID(value) else {
                throw node[key].error("expected an OpenAI id (letters, digits, '_' and '-', at most 128), like org-… or proj_…")
            }
            t.openAIAccount[keyPath: path] = value
        }
        return t
    }

    /// Environment overrides, documented in the README's configuration reference.
    static func applyEnvironment(_ env: [String: String], to c: inout SidecarConfig) throws(DocumentError) {
        if let s = env["SIDECAR_PROXY_LISTEN"], !s.isEmpty {
            guard let hp = HostPort.parse(s) else { throw DocumentError(path: "env.SIDECAR_PROXY_LISTEN", message: "expected host:port") }
            c.proxyListen = hp
        }
        if let s = env["SIDECAR_ADMIN_LISTEN"], !s.isEmpty {
            guard let hp = HostPort.parse(s) else { throw DocumentError(path: "env.SIDECAR_ADMIN_LISTEN", message: "expected host:port") }
            c.adminListen = hp
        }
        // The egress proxy from a Kubernetes Secret rather than the config file: its URL may hold a password.
        // (Not the standard HTTPS_PROXY: in an agent's pod that may well point at this sidecar.)
        if let s = env["SIDECAR_UPSTREAM_PROXY"], !s.isEmpty {
            switch UpstreamProxy.parse(s) {
            case .success(let proxy): c.upstreamProxy = proxy
            case .failure(let e): throw DocumentError(path: "env.SIDECAR_UPSTREAM_PROXY", message: e.reason)
            }
        }
        if let s = env["SIDECAR_LOG_LEVEL"] ?? env["LOG_LEVEL"], !s.isEmpty {
            c.logLevel = try logLevel(s, DocumentReader(nil, path: "env.SIDECAR_LOG_LEVEL"))
        }
        if let s = env["FF_CHAOS"], !s.isEmpty {
            switch s.lowercased() {
            case "on", "1", "true":
                c.chaos.enabled = true
                if c.chaos.tools.isEmpty {
                    // A moderate default mix when nothing is configured.
                    var f = ChaosFaults()
                    f.errorRate = 0.1
                    f.rateLimitRate = 0.05
                    f.timeoutRate = 0.02
                    f.truncateRate = 0.02
                    f.latencyMaxMilliseconds = 200
                    c.chaos.tools["*"] = f
                }
            case "off", "0", "false":
                c.chaos.enabled = false
                c.chaos.enabled = false
            default: throw DocumentError(path: "env.FF_CHAOS", message: "expected on or off")
            }
        }
        if let s = env["REDIS_URL"], !s.isEmpty {
            guard RedisLocation.parse(s, cluster: c.redisCluster) != nil else {
                throw DocumentError(path: "env.REDIS_URL", message: RedisLocation.syntax)
            }
            c.redisURL = s
        }
        if let s = env["SIDECAR_POLICY_FILE"], !s.isEmpty { c.policyFile = s }
        if let s = env["SIDECAR_ID"], !s.isEmpty { c.auth.sidecarID = s }
        if let s = env["SIDECAR_STATE_DIR"], !s.isEmpty { c.stateDir = s }
        if let s = env["SIDECAR_MODE"], !s.isEmpty {
            guard let mode = ToolMode(rawValue: s) else { throw DocumentError(path: "env.SIDECAR_MODE", message: "expected mock or live") }
            for tool in Tool.allCases { c.tools[tool]!.mode = mode }
        }
    }

    /// A setting that names an environment variable holding a secret (`credential_env`, `kek_env`,
    /// `hs256_secret_env`): a POSIX name, `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes. Never the secret
    /// itself — one pasted here was accepted, and the start-up warning for a live tool without its
    /// credential printed it as the variable's name; the error does not repeat the value.
    static func environmentName(_ node: DocumentReader) throws(DocumentError) -> String? {
        guard let name = try node.string() else { return nil }
        guard let first = name.utf8.first, name.utf8.count <= 128, !(first >= 0x30 && first <= 0x39),
            name.utf8.allSatisfy({ b in (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F })
        else {
            throw node.error("expected the name of an environment variable (letters, digits and _, not starting with a digit), not the secret itself")
        }
        return name
    }

    static func hostPort(_ s: String, _ node: DocumentReader) throws(DocumentError) -> HostPort {
        guard let hp = HostPort.parse(s) else { throw node.error("expected host:port, got '\(s)'") }
        return hp
    }

    /// `state.lease`: `auto` (every class), `off`, or per class `{rate, concurrency, quota, budget}`.
    static func leaseClasses(_ node: DocumentReader) throws(DocumentError) -> Set<LimitCheck.Kind> {
        func on(_ value: String?, _ node: DocumentReader) throws(DocumentError) -> Bool {
            switch value {
            case nil, "auto": return true
            case "off": return false
            default: throw node.error("expected auto or off")
            }
        }
        guard node.isPresent else { return Set(LimitCheck.Kind.allCases) }
        if case .scalar? = node.node { return try on(try node.string(), node) ? Set(LimitCheck.Kind.allCases) : [] }
        try node.checkKeys(Set(LimitCheck.Kind.allCases.map(\.rawValue)))
        var classes: Set<LimitCheck.Kind> = []
        for kind in LimitCheck.Kind.allCases where try on(try node[kind.rawValue].string(), node[kind.rawValue]) { classes.insert(kind) }
        return classes
    }

    /// A listener's connection cap: absent (sized from the process's file descriptors) or 1 to 1 000 000.
    static func connectionCap(_ node: DocumentReader) throws(DocumentError) -> Int? {
        guard try node.int() != nil else { return nil }
        return try node.int(default: 0, range: 1...1_000_000)
    }

    static func positive(_ node: DocumentReader, default value: Duration) throws(DocumentError) -> Duration {
        let d = try node.duration(default: value)
        guard d > .zero else { throw node.error("must be greater than zero") }
        return d
    }

    static func logLevel(_ s: String, _ node: DocumentReader) throws(DocumentError) -> String {
        let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        guard levels.contains(s.lowercased()) else { throw node.error("expected one of \(levels.joined(separator: ", "))") }
        return s.lowercased()
    }
}
