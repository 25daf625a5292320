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
    }

    @Test func readsAFullDocument() throws {
        let c = try ConfigLoader.parse("""
            version: 1
            listen: {proxy: "127.0.0.1:0", admin: "[::1]:9191"}
            limits: {max_request_body_bytes: 2048, idle_timeout: 5s, drain_timeout: 250ms}
            upstream: {http2: false}
            tools:
              openai: {mode: live, base_url: "https://127.0.0.1:8443/v0", timeout: 2m, credential_env: MY_KEY}
              serpapi: {hosts: [serpapi.com, serpapi.test]}
              http_fetch: {upgrade_to_https: true}
            log: {level: debug}
            """)
        #expect(c.proxyListen.port == 0 && c.adminListen.host == "::1")
        #expect(c.limits.maxRequestBodyBytes == 2048 && c.limits.drainTimeout == .milliseconds(250))
        #expect(c.tools[.openai]!.mode == .live && c.tools[.openai]!.timeout == .seconds(120))
        #expect(c.tools[.openai]!.baseURL.description == "https://127.0.0.1:8443/v0")
        #expect(c.tools[.serpapi]!.hosts == ["serpapi.com", "serpapi.test"])
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
        ("upstream: {ca_bundle: /does/not/exist.pem}", "upstream.ca_bundle"),
        ("log: {level: loud}", "log.level"),
        ("version: 2", "version"),
        ("listn: {}", "listn"),
    ])
    func namesTheOffendingField(_ yaml: String, _ path: String) {
        do {
            _ = try ConfigLoader.parse(yaml)
            Issue.record("accepted invalid config")
        } catch {
            #expect(error.path == path)
        }
    }

    @Test func environmentOverrides() throws {
        var c = SidecarConfig()
        try ConfigLoader.applyEnvironment(
            ["SIDECAR_PROXY_LISTEN": "127.0.0.1:0", "FF_CHAOS": "on", "REDIS_URL": "redis://127.0.0.1:6379/0", "SIDECAR_MODE": "live", "LOG_LEVEL": "warning"],
            to: &c)
        #expect(c.proxyListen.port == 0 && c.chaos.enabled && c.redisURL == "redis://127.0.0.1:6379/0")
        #expect(c.mockTools.isEmpty && c.logLevel == "warning")
        #expect(throws: DocumentError.self) { try ConfigLoader.applyEnvironment(["FF_CHAOS": "sometimes"], to: &c) }
    }
}
