import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Upstreams

/// Assembles the sidecar from a configuration and runs it until SIGTERM/SIGINT.
public enum SidecarApp {
    public static func run(config: SidecarConfig, environment: [String: String] = ProcessInfo.processInfo.environment) async throws {
        let logger = Logger(label: "sidecar")
        let metrics = GatewayMetrics()
        let adapters = ToolAdapters(mockStreamDelay: config.mockStreamDelay)
        var settings: [Tool: UpstreamClientSettings] = [:]
        for (tool, t) in config.tools {
            settings[tool] = UpstreamClientSettings(
                connectTimeout: t.connectTimeout, caBundlePath: config.caBundlePath, http2: config.http2,
                maxConnectionsPerHost: config.maxConnectionsPerHost)
        }
        let live = try HTTPClientTransport(settings: settings, logger: Logger(label: "upstream"))
        let transport = ModeSwitchTransport(live: live, mock: MockTransport(adapters: adapters), mockTools: config.mockTools)
        let credentials = StaticCredentials(Self.credentialsFromEnvironment(config, environment))
        let pipeline = Pipeline(
            classifier: EntryClassifier(hosts: config.tools.mapValues(\.hosts)), adapters: adapters,
            transport: transport, credentials: credentials, settings: PipelineSettings(config: config))
        let readiness = Readiness()
        let context = ProxyContext(
            pipeline: pipeline, limits: config.limits, metrics: metrics, accessLog: AccessLog(enabled: config.accessLog))

        for tool in Tool.allCases where tool.isBrokered && config.tools[tool]?.mode == .live {
            if (try? await credentials.credential(for: tool)) == nil {
                logger.warning(
                    "no credential for live tool; its calls will be refused with credential_unavailable",
                    metadata: ["tool": "\(tool)", "env": "\(config.tools[tool]?.credentialEnv ?? "-")"])
            }
        }

        let proxy = ProxyServer(
            listen: config.proxyListen, context: context, readiness: readiness, logger: logger
        ) { address in
            logger.info("listening", metadata: ["listener": "proxy", "address": "\(Self.format(address))"])
        }

        let router = Router()
        AdminRoutes(metrics: metrics, readiness: readiness).register(on: router)
        var hbLogger = Logger(label: "admin")
        hbLogger.logLevel = .warning
        let admin = Application(
            router: router,
            configuration: .init(address: .hostname(config.adminListen.host, port: config.adminListen.port), serverName: nil),
            onServerRunning: { channel in
                if let address = channel.localAddress {
                    logger.info("listening", metadata: ["listener": "admin", "address": "\(Self.format(address))"])
                }
            },
            logger: hbLogger)

        logger.info(
            "starting",
            metadata: [
                "version": "\(GatewayMetrics.version)",
                "mock_tools": "\(config.mockTools.map(\.rawValue).sorted().joined(separator: ","))",
                "chaos": "\(config.chaosEnabled)", "state": "\(config.redisURL == nil ? "embedded" : "redis")",
            ])
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: AccessLogFlusher(writer: context.accessLog.writer)), .init(service: admin), .init(service: proxy)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: hbLogger))
        try await group.run()
        await live.shutdown()
        context.accessLog.writer.flush()
        logger.info("stopped")
    }

    static func credentialsFromEnvironment(_ config: SidecarConfig, _ env: [String: String]) -> [Tool: Credential] {
        var out: [Tool: Credential] = [:]
        for (tool, t) in config.tools where tool.isBrokered {
            if let name = t.credentialEnv, let value = env[name], !value.isEmpty { out[tool] = Credential(value) }
        }
        return out
    }

    static func format(_ address: SocketAddress) -> String {
        let ip = address.ipAddress ?? "?"
        return ip.contains(":") ? "[\(ip)]:\(address.port ?? 0)" : "\(ip):\(address.port ?? 0)"
    }
}

/// Flushes buffered access-log lines until shutdown (it stops last, after the proxy has drained).
struct AccessLogFlusher: Service {
    let writer: BufferedLineWriter

    func run() async throws {
        await cancelWhenGracefulShutdown { await writer.runFlusher() }
    }
}
