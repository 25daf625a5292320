import Foundation
import Policy
import Testing
import Upstreams

@testable import Sidecar

@Suite("Configuration")
struct ConfigLoaderTests {
    @Test func embeddedDefaultIsAllMockOnLoopback() throws {
        let c = try ConfigLoader.load(path: nil, environment: [:])
        #expect(c.proxyListen.description == "127.0.0.1:8080" && c.adminListen.description == "127.0.0.1:9090")
        #expect(c.mockTools == Set(Tool.allCases))
        #expect(c.redisURL == nil && !c.chaos.enabled)
        // A screenshot-sized body passes (32 MiB); the compatibility API's tool-call JSON keeps 1 MiB; 256 MiB
        // of bodies at once across connections.
        #expect(c.limits.maxRequestBodyBytes == 32 << 20 && c.limits.compatBodyBytes == 1 << 20 && c.limits.maxBufferedRequestBytes == 256 << 20)
        let big = try ConfigLoader.parse("limits: {max_request_body_bytes: 536870912}")
        #expect(big.limits.maxBufferedRequestBytes == 512 << 20 && big.limits.compatBodyBytes == 1 << 20)
        #expect(try ConfigLoader.parse("limits: {max_request_body_bytes: 1000}").limits.compatBodyBytes == 1000)
        // OpenAI's deadline is the official SDK's own (600 s): a long answer it waits for is not cut here.
        #expect(c.tools[.openai]!.timeout == .seconds(600) && c.tools[.serpapi]!.timeout == .seconds(30))
    }

    @Test func readsAFullDocument() throws {
        let c = try ConfigLoader.parse("""
            version: 1
            listen: {proxy: "127.0.0.1:0", admin: "[::1]:9191"}
            limits: {max_request_body_bytes: 2048, idle_timeout: 5s, drain_timeout: 250ms}
            upstream: {http2: false}
            tools:
              openai: {mode: live, base_url: "https://127.0.0.1:8443/v0", timeout: 2m, credential_env: MY_KEY, organization: org-Ab12_x, project: proj_9}
              serpapi: {hosts: [serpapi.com, serpapi.test]}
              http_fetch: {upgrade_to_https: true}
            log: {level: debug}
            """)
        #expect(c.proxyListen.port == 0 && c.adminListen.host == "::1")
        #expect(c.limits.maxRequestBodyBytes == 2048 && c.limits.drainTimeout == .milliseconds(250))
        #expect(c.tools[.openai]!.mode == .live && c.tools[.openai]!.timeout == .seconds(120))
        #expect(c.tools[.openai]!.baseURL.description == "https://127.0.0.1:8443/v0")
        #expect(c.tools[.serpapi]!.hosts == ["serpapi.com", "serpapi.test"])
        #expect(c.tools[.openai]!.openAIAccount == OpenAIAdapter.Account(organization: "org-Ab12_x", project: "proj_9"))
        #expect(c.tools[.serpapi]!.openAIAccount == OpenAIAdapter.Account())
        #expect(c.tools[.httpFetch]!.upgradeToHTTPS && !c.http2 && c.logLevel == "debug")
    }

    @Test(arguments: [
        ("listen: {proxy: nowhere}", "listen.proxy"),
        ("tools: {openai: {timeout: soon}}", "tools.openai.timeout"),
        ("tools: {openai: {mode: maybe}}", "tools.openai.mode"),
        ("tools: {opnai: {}}", "tools.opnai"),
        ("tools: {openai: {tiemout: 5s}}", "tools.openai.tiemout"),
        ("tools: {http_fetch: {base_url: 'https://x'}}", "tools.http_fetch.base_url"),
        ("tools: {serpapi: {hosts: [api.openai.com]}}", "tools.serpapi.hosts"),
        ("limits: {max_header_bytes: 10}", "limits.max_header_bytes"),
        ("limits: {idle_timeout: 0s}", "limits.idle_timeout"),
        ("limits: {max_request_body_bytes: 4096, max_buffered_request_bytes: 4095}", "limits.max_buffered_request_bytes"),
        ("upstream: {ca_bundle: /does/not/exist.pem}", "upstream.ca_bundle"),
        ("log: {level: loud}", "log.level"),
        ("version: 2", "version"),
        ("listn: {}", "listn"),
        ("tools: {gmail_send: {retry_attempts: 2}}", "tools.gmail_send.retry_attempts"),
        ("tools: {serpapi: {organization: org-1}}", "tools.serpapi.organization"),
        ("tools: {openai: {organization: 'org 1'}}", "tools.openai.organization"),
        ("tools: {openai: {project: \"proj_1\\r\\nX-Injected: 1\"}}", "tools.openai.project"),
        ("tools: {openai: {project: ''}}", "tools.openai.project"),
        ("tools: {gmail_send: {cache_ttl: 5m}}", "tools.gmail_send.cache_ttl"),
        ("tools: {serpapi: {retry_attempts: 0}}", "tools.serpapi.retry_attempts"),
        ("resilience: {breaker: {failure_rate: 1.5}}", "resilience.breaker.failure_rate"),
        ("resilience: {breaker: {open: never}}", "resilience.breaker.open"),
        ("resilience: {retry: {budget_ratio: 2}}", "resilience.retry.budget_ratio"),
        ("resilience: {bulkhead: {max_concurrent: 0}}", "resilience.bulkhead.max_concurrent"),
        ("resilience: {cache: {size: 1}}", "resilience.cache.size"),
        ("egress: {allow_cidrs: [10.0.0.0/8, localhost]}", "egress.allow_cidrs[1]"),
        ("egress: {follow_redirects: 50}", "egress.follow_redirects"),
        ("chaos: {tools: {serpapi: {error_rate: 1.2}}}", "chaos.tools.serpapi.error_rate"),
        ("chaos: {tools: {serpapi: {error_statuses: [404]}}}", "chaos.tools.serpapi.error_statuses"),
        ("chaos: {tools: {nosuch: {error_rate: 0.1}}}", "chaos.tools.nosuch"),
        ("state: {lease: sometimes}", "state.lease"),
        ("state: {lease: {quota: maybe}}", "state.lease.quota"),
        ("state: {lease: {quotas: off}}", "state.lease.quotas"),
        ("state: {concurrency_lease: 1s}", "state.concurrency_lease"),
        ("redis: {url: 'redis+cluster://a:1/2'}", "redis.url"),
        ("redis: {url: 'redis://a:1,b:2'}", "redis.url"),
        ("listen: {proxy: 'local host:8080'}", "listen.proxy"),
        ("tools: {openai: {credential_env: sk-proj-abcdefghijklmnop1234567890}}", "tools.openai.credential_env"),
        ("tools: {openai: {credential_env: 'MY KEY'}}", "tools.openai.credential_env"),
        ("tools: {serpapi: {credential_env: 9LIVES}}", "tools.serpapi.credential_env"),
        ("vault: {kek_env: 'q1w2e3r4t5y6u7i8o9p0+/='}", "vault.kek_env"),
        ("auth: {hs256_secret_env: 'my-shared-secret'}", "auth.hs256_secret_env"),
        ("listen: {admin: '[::1:9090'}", "listen.admin"),
        ("vault: {canaries: {short: abc}}", "vault.canaries.short"),
    ])
    func namesTheOffendingField(_ yaml: String, _ path: String) {
        do {
            _ = try ConfigLoader.parse(yaml)
            Issue.record("accepted invalid config")
        } catch {
            #expect(error.path == path)
        }
    }

    @Test func readsTheResilienceEgressAndChaosKeys() throws {
        let c = try ConfigLoader.parse("""
            resilience:
              retry: {max_attempts: 4, base_delay: 50ms, max_delay: 1s, budget_ratio: 0.3, budget_min_per_second: 2}
              breaker: {window: 20s, minimum_volume: 30, failure_rate: 0.6, consecutive_failures: 7, open: 3s, max_open: 30s, half_open_probes: 2}
              bulkhead: {max_concurrent: 10, queue: 5, wait: 250ms}
              cache: {max_bytes: 1000000, max_entry_bytes: 5000, stale_if_error: 1m, openai: true}
            tools:
              serpapi: {max_concurrent: 3, retry_attempts: 2, cache_ttl: 30s}
            egress: {allow_cidrs: [10.20.0.0/16, "fd00::/8"], follow_redirects: 2}
            chaos: {enabled: true, seed: 9, gmail_opt_in: true, tools: {"*": {error_rate: 0.5, error_statuses: [503], latency_min_ms: 5, latency_max_ms: 9}}}
            """)
        let r = c.resilience
        #expect(r.tools[.openai]!.retry == RetryPolicy(maxAttempts: 4, baseDelayMilliseconds: 50, maxDelayMilliseconds: 1000))
        #expect(r.tools[.serpapi]!.retry.maxAttempts == 2 && r.tools[.gmailSend]!.retry.maxAttempts == 1)
        #expect(r.tools[.serpapi]!.maxConcurrent == 3 && r.tools[.openai]!.maxConcurrent == 10 && r.tools[.openai]!.queue == 5)
        #expect(r.tools[.serpapi]!.cacheTTL == .seconds(30) && r.tools[.httpFetch]!.cacheTTL == .seconds(300))
        let b = r.tools[.openai]!.breaker
        #expect(b.windowMilliseconds == 20_000 && b.minimumVolume == 30 && b.failureRate == 0.6 && b.consecutiveFailures == 7)
        #expect(b.baseOpenMilliseconds == 3000 && b.maxOpenMilliseconds == 30_000 && b.halfOpenProbes == 2)
        #expect(r.retryBudgetRatio == 0.3 && r.retryBudgetMinimumPerSecond == 2 && r.cacheMaxBytes == 1_000_000 && r.openAICache)
        #expect(c.egressAllow.map(\.description) == ["10.20.0.0/16", "fd00:0:0:0:0:0:0:0/8"] && c.followRedirects == 2)
        #expect(c.chaos.enabled && c.chaos.seed == 9 && c.chaos.gmailOptIn && c.chaos.tools["*"]?.errorStatuses == [503])
        #expect(c.chaos.tools["*"]?.latencyMaxMilliseconds == 9)
    }

    @Test func environmentOverrides() throws {
        var c = SidecarConfig()
        try ConfigLoader.applyEnvironment(
            ["SIDECAR_PROXY_LISTEN": "127.0.0.1:0", "FF_CHAOS": "on", "REDIS_URL": "redis://127.0.0.1:6379/0", "SIDECAR_MODE": "live", "LOG_LEVEL": "warning"],
            to: &c)
        #expect(c.proxyListen.port == 0 && c.chaos.enabled && c.redisURL == "redis://127.0.0.1:6379/0")
        #expect(c.mockTools.isEmpty && c.logLevel == "warning")
        #expect(throws: DocumentError.self) { try ConfigLoader.applyEnvironment(["FF_CHAOS": "sometimes"], to: &c) }
        try ConfigLoader.applyEnvironment(["SIDECAR_UPSTREAM_PROXY": "http://svc:s3cret@proxy.corp:3128"], to: &c)
        #expect(c.upstreamProxy == UpstreamProxy(host: "proxy.corp", port: 3128, username: "svc", password: "s3cret"))
        do {
            try ConfigLoader.applyEnvironment(["SIDECAR_UPSTREAM_PROXY": "https://svc:s3cret@proxy.corp:3128"], to: &c)
            Issue.record("an https proxy was taken")
        } catch {
            #expect(error.path == "env.SIDECAR_UPSTREAM_PROXY" && !"\(error)".contains("s3cret"))
        }
    }

    @Test func leaseClassesAndClusterLocations() throws {
        #expect(try ConfigLoader.parse("version: 1").leasedClasses == Set(LimitCheck.Kind.allCases))
        #expect(try ConfigLoader.parse("state: {lease: off}").leasedClasses.isEmpty)
        #expect(try ConfigLoader.parse("state: {lease: {quota: off, rate: auto}}").leasedClasses == [.rate, .concurrency, .budget])
        let c = try ConfigLoader.parse("redis: {url: 'redis://10.0.0.1:7000', cluster: true}")
        #expect(c.redisCluster && RedisLocation.parse(c.redisURL!, cluster: c.redisCluster)?.cluster == true)
    }

    /// Both listeners on one address would fail the second bind as "address already in use": refused
    /// when the configuration is read, naming both, also when the environment sets one of them.
    @Test(arguments: [
        ("127.0.0.1:8080", "127.0.0.1:8080", true), ("0.0.0.0:8080", "127.0.0.1:8080", true), ("127.0.0.1:9090", "[::]:9090", true),
        ("localhost:7000", "LOCALHOST:7000", true),
        ("127.0.0.1:8080", "127.0.0.1:9090", false), ("127.0.0.1:0", "127.0.0.1:0", false), ("127.0.0.1:8080", "10.0.0.1:8080", false),
    ])
    func listenersOnOneAddressAreRefused(_ proxy: String, _ admin: String, _ refused: Bool) {
        let env = ["SIDECAR_PROXY_LISTEN": proxy, "SIDECAR_ADMIN_LISTEN": admin]
        do {
            _ = try ConfigLoader.load(path: nil, environment: env)
            #expect(!refused)
        } catch {
            #expect(refused && error.path == "listen.admin" && error.message.contains(proxy.replacingOccurrences(of: "LOCALHOST", with: "localhost")), "\(error)")
        }
    }

    /// Valid settings an operator most likely did not mean are named at start, not refused.
    @Test(arguments: [
        ("tools: {openai: {mode: live, base_url: \"http://api.openai.com\"}}", ["tools.openai.base_url"]),
        ("tools: {openai: {mode: live, base_url: \"http://10.0.0.7:4000\"}}", ["tools.openai.base_url"]),
        ("tools: {serpapi: {mode: live, base_url: \"http://127.0.0.1:9000\"}, gmail_send: {mode: live, base_url: \"http://localhost:1\"}}", []),
        ("tools: {openai: {mode: mock, base_url: \"http://api.openai.com\"}}", []),
        ("tools: {openai: {mode: live, base_url: \"https://api.openai.com\"}}", []),
        ("egress: {allow_cidrs: [\"10.0.0.0/8\", \"0.0.0.0/0\"]}", ["egress.allow_cidrs[1]"]),
        ("egress: {allow_cidrs: [\"169.254.0.0/16\"]}", ["egress.allow_cidrs[0]"]),
        ("egress: {allow_cidrs: [\"fd00::/8\"]}", ["egress.allow_cidrs[0]"]),
        ("egress: {allow_cidrs: [\"10.0.0.0/8\", \"127.0.0.0/8\", \"fc00::/8\"]}", []),
        ("version: 1", []),
        ("auth: {required: false}\nlisten: {proxy: \"0.0.0.0:8080\"}", ["auth.required"]),
        ("auth: {required: false}\nlisten: {proxy: \"[::]:8080\"}", ["auth.required"]),
        ("auth: {required: false}\nlisten: {proxy: \"10.1.2.3:8080\"}", ["auth.required"]),
        ("auth: {required: false}\nlisten: {proxy: \"127.0.0.1:8080\"}", []),
        ("auth: {required: false}\nlisten: {proxy: \"localhost:8080\"}", []),
        ("auth: {required: false}\nlisten: {proxy: \"[::1]:8080\"}", []),
        ("listen: {proxy: \"0.0.0.0:8080\"}", []),
        ("upstream: {proxy: \"http://proxy.corp:3128\"}\ntools: {http_fetch: {mode: live}}", ["upstream.proxy"]),
        ("upstream: {proxy: \"http://proxy.corp:3128\"}\ntools: {http_fetch: {mode: mock}}", []),
    ])
    func riskySettingsAreNamed(_ document: String, _ fields: [String]) throws {
        #expect(try ConfigLoader.parse(document).warnings().map(\.field) == fields)
    }

    /// A secret file the operator names is named in a warning when users other than its owner may read
    /// or write it; a file that cannot be read is the loader's error, not a warning.
    @Test(arguments: [
        ([0o600, 0o400, 0o700], [String]()),
        ([0o644, 0o600, 0o600], ["admin.token_file"]),
        ([0o600, 0o640, 0o604], ["vault.kek_file", "intercept.ca_key"]),
        ([0o602, 0o620, 0o606], ["admin.token_file", "vault.kek_file", "intercept.ca_key"]),
    ])
    func secretFilesOpenToOthersAreNamed(_ modes: [Int], _ fields: [String]) throws {
        var config = try ConfigLoader.parse("admin: {token_file: /s/admin}\nvault: {kek_file: /s/kek}")
        config.intercept.caKey = "/s/ca.key"  // set here: the loader reads the CA files it is given
        let byPath = ["/s/admin": modes[0], "/s/kek": modes[1], "/s/ca.key": modes[2]]
        let warnings = config.warnings(fileMode: { byPath[$0] })
        #expect(warnings.map(\.field) == fields)
        #expect(warnings.allSatisfy { $0.message.contains("chmod 600") })
        #expect(try ConfigLoader.parse("admin: {token_file: /s/missing}").warnings(fileMode: { _ in nil }).isEmpty)
    }

    /// A YAML mistake is named by line and column, never by quoting the document: its lines hold Redis
    /// passwords and credentials (Yams quotes the lines around the problem, and a duplicated key's
    /// error carried the whole document).
    @Test(arguments: [
        "version: 1\nredis: {url: \"redis://:s3cr3t-pw@h:6379\"\n",
        "redis:\n  url: redis://:s3cr3t-pw@h:6379\n  url: x\n",
        "redis:\n\turl: redis://:s3cr3t-pw@h:6379\n",
        "redis: {url: \"redis://:s3cr3t-pw@h:6379\"}\n---\nversion: 1\n",
        "x: \"s3cr3t-pw\nredis: [*s3cr3t-pw]\n",
        "s3cr3t-pw: &a [*b]\n",
        "x: " + String(repeating: "[", count: 3000) + "s3cr3t-pw" + String(repeating: "]", count: 3000),
    ])
    func yamlErrorsNeverQuoteTheDocument(_ yaml: String) {
        do {
            _ = try ConfigLoader.parse(yaml)
            Issue.record("accepted invalid YAML")
        } catch {
            #expect(error.message.hasPrefix("not valid YAML: line ") || error.message.hasPrefix("line 1: YAML anchors"))
            #expect(!error.message.contains("s3cr3t") && error.message.utf8.count < 200, "\(error.message)")
        }
    }

    @Test func unreadableFilesSayWhy() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("textfile-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let latin1 = dir.appendingPathComponent("latin1.yaml")
        try Data([0x78, 0x3A, 0x20, 0xE9, 0x0A]).write(to: latin1)
        for (path, reason) in [(dir.path + "/none.yaml", "no such file"), (dir.path, "it is a directory"), (latin1.path, "not UTF-8 text")] {
            do {
                _ = try ConfigLoader.load(path: path, environment: [:])
                Issue.record("read \(path)")
            } catch {
                #expect(error.message == "cannot read \(path): \(reason)")
            }
        }
    }

    /// Anchors are refused before Yams reads the text (it expands aliases: a 300-byte "billion laughs"
    /// held the process at full CPU); an `&` that begins no node is not an anchor.
    @Test(arguments: [
        ("a: &x [1]\nb: *x\n", 1),
        ("version: 1\nroles:\n  r: &r {allow: [\"*\"]}\n", 3),
        ("x: [1, &y 2]\n", 1),
        ("x:\n  - &y 2\n", 2),
        ("? &k a\n: 1\n", 1),
        ("x: !!str &t v\n", 1),
        ("x: {\"a\":&y [1]}\n", 1),
        ("x: \"a&b\"\ny: 'it''s &not'\nz: a&b\nu: http://h/?a=1&b=2  # &comment\n# &also\nw: \"\\\"&q\"\n", 0),
        ("version: 1\n", 0),
    ] as [(String, Int)])
    func anchorsAreFoundWhereANodeBegins(_ yaml: String, _ line: Int) {
        #expect(YAMLDocument.anchorLine(yaml) == (line == 0 ? nil : line))
    }

    @Test func aBillionLaughsIsRefusedAtOnce() {
        var doc = "version: 1\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        for (name, prev) in zip("bcdefghi", "abcdefgh") { doc += "\(name): &\(name) [" + Array(repeating: "*\(prev)", count: 9).joined(separator: ",") + "]\n" }
        let started = ContinuousClock.now
        #expect(throws: DocumentError.self) { _ = try ConfigLoader.parse(doc) }
        #expect(ContinuousClock.now - started < .seconds(1))
    }
}
