import AsyncHTTPClient
import Crypto
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Policy
import ServiceLifecycle
import UnixSignals
import Upstreams

/// Assembles the sidecar from a configuration and runs it until SIGTERM/SIGINT.
public enum SidecarApp {
    /// Wall-clock seconds. Only the Sidecar module reads the clock; Policy gets time passed in.
    static let unixNow: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) }

    /// Runs until SIGTERM/SIGINT. Whatever fails — at start-up (a busy port, an unreadable key, a bad CA
    /// bundle, a state directory that cannot be used) or later — everything already started is shut
    /// down before the error is thrown on (the caller logs it and exits 1).
    public static func run(config: SidecarConfig, environment: [String: String] = ProcessInfo.processInfo.environment) async throws {
        let started = ShutdownList()
        do {
            try await run(config: config, environment: environment, started: started)
        } catch {
            await started.run()
            throw error
        }
        await started.run()
    }

    private static func run(config: SidecarConfig, environment: [String: String], started: ShutdownList) async throws {
        let logger = Logger(label: "sidecar")
        let metrics = GatewayMetrics()
        try checkStateDirectory(config.stateDir)
        // Held until everything else has shut down (the first step added runs last), then let go.
        let lock = try lockStateDirectory(config.stateDir, fleet: config.redisURL != nil, logger: logger)
        started.add { withExtendedLifetime(lock) {} }
        if let bundle = config.caBundlePath { _ = try readCABundle(bundle, field: "upstream.ca_bundle") }

        // Shared state: Redis when configured (a fleet), else the embedded SQLite store (one host).
        var redis: RedisClient?
        if let url = config.redisURL, var location = RedisLocation.parse(url, cluster: config.redisCluster) {
            if location.secure {
                let tls = try config.redisCABundle.map { try RedisTLS(caBundle: $0) } ?? RedisTLS.system.get()
                for i in location.seeds.indices { location.seeds[i].tls = tls }
            }
            // A `redis://` URL that names a cluster node is followed as a cluster: sent as one server, every
            // key on another node would answer MOVED (and read as "Redis down").
            let info = await RedisClient.serverInfo(location.seeds[0], timeout: TimeAmount(config.redisConnectTimeout))
            if let info, info.tooOld {
                // Not refused: limits, identity and approvals work; a run's events (Streams) do not.
                logger.warning(
                    "redis is older than 5.0: runs' event streams (XADD) will fail", metadata: ["redis_version": "\(info.version!.map(String.init).joined(separator: "."))"])
            }
            switch info?.cluster {
            case true? where !location.cluster:
                logger.notice("redis is a cluster node; following the cluster", metadata: ["redis": "\(location)"])
                location.cluster = true
            case false? where location.cluster:
                // Configured as a cluster, but the server says it is not one: routing by slot would find no
                // slot table and fail every command.
                logger.warning("redis is configured as a cluster but the server is not one; using it as one server", metadata: ["redis": "\(location)"])
                location = RedisLocation(seeds: [location.seeds[0]], cluster: false)
            default:
                break
            }
            redis = RedisClient(
                seeds: location.seeds, cluster: location.cluster, poolSize: config.redisPoolSize, commandTimeout: config.redisCommandTimeout,
                connectTimeout: config.redisConnectTimeout, scripts: AdmissionScripts.all + RunScripts.all + RedisIdempotencyStore.scripts + RedisApprovalStore.scripts, observe: { latency, failed in metrics.redisCommand(latency, failed: failed) })
            // Not fatal (the failure policy answers while Redis is away), but said at once: a wrong password
            // is a WRONGPASS now, not a mystery at the first request that needs Redis.
            if let error = await redis?.connectAll() {
                logger.error(
                    "redis is not usable at start; its limit classes follow state.on_redis_failure until it is",
                    metadata: ["redis": "\(location)", "error": "\(error)"])
            }
            if let redis, !location.cluster { await RedisIdentityStore.moveLegacyKeys(redis, logger: logger) }
        }
        let store: any IdentityStore
        do {
            store = try redis.map { RedisIdentityStore(redis: $0) } ?? SQLiteIdentityStore(path: config.databasePath)
        } catch {
            throw StartupError("state.dir: cannot open the embedded store \(config.databasePath) (\(error))")
        }
        let identityState = IdentityState(
            store: store, localCopy: (config.stateDir as NSString).appendingPathComponent("identity-snapshot.json"), logger: logger, metrics: metrics)
        do {
            try await identityState.refresh()
        } catch {
            logger.error("cannot load identities from the store; starting with none until it answers", metadata: ["error": "\(error)"])
        }
        let policy = try PolicyRuntime(file: config.policyFile, metrics: metrics, logger: logger)
        let limits: any LimitStore
        var embeddedLimits: EmbeddedLimitStore?
        var leased: LeasedLimitStore?
        if let redis {
            let shared = RedisLimitStore(redis: redis, failure: config.stateFailure, leaseTTL: config.concurrencyLeaseTTL, metrics: metrics, logger: logger)
            if config.leasedClasses.isEmpty {
                limits = shared
            } else {
                leased = LeasedLimitStore(
                    inner: shared, classes: config.leasedClasses, leaseTTL: config.concurrencyLeaseTTL, metrics: metrics, logger: logger)
                limits = leased!
            }
        } else {
            do { embeddedLimits = try EmbeddedLimitStore(databasePath: config.databasePath, leaseTTL: config.concurrencyLeaseTTL) } catch {
                throw StartupError("state.dir: cannot open the embedded store \(config.databasePath) (\(error))")
            }
            limits = embeddedLimits!
        }
        let (authenticator, minter) = try buildAuthentication(config, environment, identityState, metrics, logger)
        let interceptCA = try loadInterceptCA(config, logger: logger)
        let (adminToken, generatedAdminToken) = try AdminToken.load(path: config.adminTokenPath, environment: environment)
        if generatedAdminToken {
            logger.notice("generated the admin token", metadata: ["file": "\(config.adminTokenPath)"])
        }

        // Upstreams and credentials.
        let adapters = ToolAdapters(mockStreamDelay: config.mockStreamDelay, openAIAccount: config.tools[.openai]?.openAIAccount ?? .init())
        var settings: [Tool: UpstreamClientSettings] = [:]
        for (tool, t) in config.tools {
            settings[tool] = UpstreamClientSettings(
                connectTimeout: t.connectTimeout, caBundlePath: config.caBundlePath, http2: config.http2,
                maxConnectionsPerHost: config.maxConnectionsPerHost)
            settings[tool]?.proxy = config.upstreamProxy
        }
        let live = try HTTPClientTransport(settings: settings, logger: Logger(label: "upstream"))
        started.add { await live.shutdown() }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = config.caBundlePath { tls.trustRoots = .file(ca) }
        let pool = try HTTP1ConnectionPool(
            connectTimeouts: config.tools.mapValues(\.connectTimeout), maxIdlePerOrigin: config.maxConnectionsPerHost, tls: tls)
        started.add { pool.shutdown() }
        let clients = ProtocolRouterTransport(http1: pool, http2Capable: live, offerHTTP2: config.http2, proxied: config.upstreamProxy != nil)
        // The configured listeners now (a fixed port is known before it is bound), the bound ones as they come up.
        let egress = EgressGuard(
            allowed: config.egressAllow, ownListeners: [config.proxyListen, config.adminListen].map { Self.listener(host: $0.host, port: $0.port) })
        let resolver: any HostResolver = config.dnsCacheTTL > .zero ? CachingResolver(ttl: config.dnsCacheTTL) : SystemResolver()
        let fetch = try SafeFetchTransport(
            egress: egress, resolver: resolver, tls: tls, connectTimeout: config.tools[.httpFetch]!.connectTimeout, maxRedirects: config.followRedirects)
        started.add { fetch.shutdown() }
        let routed = ToolRouterTransport(routes: [.httpFetch: fetch], fallback: clients)
        let modes = ModeSwitchTransport(live: routed, mock: MockTransport(adapters: adapters), mockTools: config.mockTools)
        let chaos = ChaosTransport(base: modes, settings: config.chaos, now: unixMillis) { tool, kind in metrics.chaosInjected(tool, kind) }
        let fleet = redis.map {
            FleetResilience(
                redis: $0, sidecarID: config.auth.sidecarID, budgetRatio: config.resilience.retryBudgetRatio,
                budgetMinimumPerSecond: config.resilience.retryBudgetMinimumPerSecond)
        }
        let sharedCache = config.resilience.sharedCache ? redis.map { RedisSharedCache(redis: $0, now: unixMillis) } : nil
        var resilienceSettings = config.resilience
        resilienceSettings.maxDecodedBytes = config.limits.maxResponseBodyBytes
        let resilience = ResilientCaller(
            transport: chaos, settings: resilienceSettings, metrics: metrics, logger: logger, fleet: fleet, shared: sharedCache)
        let transport = chaos
        var oauthConfiguration = HTTPClient.Configuration(tlsConfiguration: tls)
        oauthConfiguration.proxy = config.upstreamProxy?.clientProxy
        let oauthClient = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: oauthConfiguration)
        started.add { try? await oauthClient.shutdown() }
        // Every value the sidecar injects, and the canaries: what no outbound call may carry.
        let secrets = SecretCatalog()
        secrets.set("canaries", config.vault.canaries.sorted { $0.key < $1.key }.map { .init(label: "canary \($0.key)", value: $0.value, canary: true) })
        let gmail = GmailTokenProvider(
            endpoint: HTTPTokenEndpoint(client: oauthClient, url: config.vault.gmailTokenURL), now: unixNow,
            onToken: { secrets.add("gmail-token", .init(label: Tool.gmailSend.rawValue, value: $0.reveal(), canary: false), keep: 2) })
        let kek = try KeyEncryptionKey.load(env: config.vault.kekEnv, file: config.vault.kekFile, environment: environment)
        let credentials = try VaultCredentialSource(
            directory: config.vaultDir, kek: kek, fallback: try credentialsFromEnvironment(config, environment), gmail: gmail, catalog: secrets)
        if !credentials.versions.isEmpty {
            logger.info("vault unsealed", metadata: ["versions": "\(credentials.versions.map { "\($0.key)=v\($0.value)" }.sorted().joined(separator: ","))"])
        }

        let interception = try interceptCA.map { ca in
            Interception(
                settings: config.intercept,
                leaves: try LeafCertificates(ca: ca, validity: config.intercept.leafValidity, capacity: config.intercept.leafCacheSize),
                destinations: fetch, connectTimeout: config.tools[.httpFetch]!.connectTimeout, metrics: metrics, logger: logger)
        }
        // Agent runs: in Redis with a fleet, else in the embedded store (its own SQLite file).
        let runStore: any RunStore
        var embeddedRuns: EmbeddedRunStore?
        if let redis {
            runStore = RedisRunStore(redis: redis, maxEvents: config.runs.maxEvents)
        } else {
            let path = (config.stateDir as NSString).appendingPathComponent("runs.sqlite")
            do { embeddedRuns = try EmbeddedRunStore(path: path, maxEvents: config.runs.maxEvents) } catch {
                throw StartupError("state.dir: cannot open the embedded run store \(path) (\(error))")
            }
            runStore = embeddedRuns!
        }
        var publish: (@Sendable (String) -> Void)?
        if let redis {
            publish = { text in Task { _ = try? await redis.send(["PUBLISH", RunService.channel, text]) } }
        }
        let runs = RunService(
            store: runStore, metrics: metrics, settings: config.runs, policy: policy, logger: logger, sidecarID: config.auth.sidecarID,
            maxFetchBytes: config.limits.maxResponseBodyBytes, publish: publish)
        let leases = LeaseRenewer(store: limits, ttl: config.concurrencyLeaseTTL, logger: logger)
        // The exactly-once ledger: in Redis with a fleet (a duplicate on another sidecar is caught), else
        // in its own SQLite file.
        let idempotencyStore: any IdempotencyStore
        if let redis {
            idempotencyStore = RedisIdempotencyStore(redis: redis)
        } else {
            let path = (config.stateDir as NSString).appendingPathComponent("idempotency.sqlite")
            do { idempotencyStore = try EmbeddedIdempotencyStore(path: path, now: unixMillis) } catch {
                throw StartupError("state.dir: cannot open the idempotency ledger \(path) (\(error))")
            }
        }
        // Receipts: one writer thread, the chain head stored in Redis per sidecar with a fleet.
        var receipts: ReceiptLog?
        if config.receipts.enabled {
            let sidecarID = config.auth.sidecarID
            let heads = redis.map { fleetRedis in
                ReceiptHeadPublisher(key: ReceiptLog.headKey(sidecarID), logger: logger) { command in
                    _ = try await fleetRedis.send(command).checked()
                }
            }
            let storeHead: @Sendable (Int64, String) -> Void = { seq, hash in heads?.publish(seq: seq, hash: hash) }
            let log: ReceiptLog
            do {
                log = try ReceiptLog(
                    settings: config.receipts, stateDir: config.stateDir, sidecar: sidecarID, logger: logger,
                    credentialVersions: { credentials.versions }, onSeal: storeHead)
            } catch {
                throw StartupError("receipts: \(error)")
            }
            log.start()
            started.add { await log.stop() }
            receipts = log
        }
        let approvalStore: any ApprovalStore = redis.map { RedisApprovalStore(redis: $0) } ?? EmbeddedApprovalStore()
        let approvals = ApprovalService(
            store: approvalStore, runs: runs, metrics: metrics, logger: logger, now: unixMillis, maxPendingPerAgent: config.approvalsMaxPendingPerAgent)
        let idempotency = IdempotencyLedger(store: idempotencyStore, settings: config.idempotency, metrics: metrics, logger: logger)
        // Who was handed which stored OpenAI response: in Redis with a fleet, else in its own SQLite file.
        let ownerStore: any ResponseOwnerStore
        if let redis {
            ownerStore = RedisResponseOwnerStore(redis: redis)
        } else {
            let path = (config.stateDir as NSString).appendingPathComponent("responses.sqlite")
            do { ownerStore = try EmbeddedResponseOwnerStore(path: path) } catch {
                throw StartupError("state.dir: cannot open the stored-response owners \(path) (\(error))")
            }
        }
        let owners = ResponseOwners(store: ownerStore, logger: logger, now: unixMillis)
        let pipeline = Pipeline(
            classifier: EntryClassifier(hosts: config.tools.mapValues(\.hosts)), adapters: adapters,
            transport: transport, credentials: credentials, settings: PipelineSettings(config: config),
            authenticator: authenticator, metrics: metrics, policy: policy, limits: limits, resilience: resilience, egress: egress,
            interception: interception, runs: runs, leases: leases, secrets: secrets, idempotency: idempotency, receipts: receipts, approvals: approvals,
            owners: owners)
        let readiness = Readiness()
        let context = ProxyContext(
            pipeline: pipeline, limits: config.limits, metrics: metrics, accessLog: AccessLog(
                enabled: config.accessLog,
                writer: BufferedLineWriter(onDropped: { metrics.accessLogDrops.increment(by: Int64($0)) })), logger: logger)
        let bodies = context.bodies
        metrics.watchBufferedBodies { bodies.current }

        for warning in config.warnings() {
            logger.warning("risky setting", metadata: ["field": "\(warning.field)", "why": "\(warning.message)"])
        }
        for tool in Tool.allCases where tool.isBrokered && config.tools[tool]?.mode == .live {
            if (try? await credentials.credential(for: tool)) == nil {
                logger.warning(
                    "no credential for live tool; its calls will be refused with credential_unavailable",
                    metadata: ["tool": "\(tool)", "env": "\(config.tools[tool]?.credentialEnv ?? "-")"])
            }
        }

        let identity = IdentityService(
            state: identityState, minter: minter, settings: config.auth, metrics: metrics, authenticator: authenticator, now: unixNow)
        let router = Router(context: AdminContext.self)
        router.add(middleware: AdminGate<AdminContext>(settings: config.adminGate))
        // Preflights are answered by the gate; any other OPTIONS is an empty answer.
        router.on("**", method: .options) { _, _ in Response(status: .noContent) }
        AdminRoutes(metrics: metrics, readiness: readiness, redis: redis, identity: identityState, caPEM: interceptCA?.pem).register(on: router)
        RunsAPI(runs: runs, adminToken: adminToken, authenticator: authenticator, maxBodyBytes: config.adminMaxBodyBytes).register(on: router)
        let api = router.group("api").add(middleware: AdminAuthMiddleware(token: adminToken, metrics: metrics))
        ControlAPI(identity: identity, credentials: credentials, maxBodyBytes: config.adminMaxBodyBytes, policy: policy, runs: runs).register(on: api)
        if let receipts { ReceiptsAPI(receipts: receipts).register(on: api) }
        ApprovalsAPI(approvals: approvals, adminToken: adminToken, authenticator: authenticator, maxBodyBytes: config.adminMaxBodyBytes).register(on: router)
        ChaosAPI(chaos: chaos, fleetState: fleet, maxBodyBytes: config.adminMaxBodyBytes, logger: logger).register(on: api)
        let descriptors = ConnectionCap.raiseDescriptorLimit()
        let caps = ConnectionCap.budget(descriptors: descriptors, proxy: config.limits.maxConnections, admin: config.adminMaxConnections)
        if let warning = caps.warning { logger.warning("risky setting", metadata: ["field": "limits.max_connections", "why": "\(warning)"]) }
        let proxyCap = ConnectionCap(listener: "proxy", max: caps.proxy, metrics: metrics, logger: logger)
        let adminCap = ConnectionCap(listener: "admin", max: caps.admin, metrics: metrics, logger: logger)
        var hbLogger = Logger(label: "admin")
        hbLogger.logLevel = .warning
        let adminApp = Application(
            router: router,
            // Hummingbird keeps a connection forever by default: one that never finishes its head, or sits
            // idle, held a descriptor each, and enough of them starve the probes (/healthz) the
            // orchestrator restarts the pod by. The proxy's idle_timeout applies here too; an answer
            // being written (an SSE stream of a run) is never cut by it.
            server: .http1(
                configuration: .init(
                    additionalChannelHandlers: [ConnectionCap.Handler(adminCap), EventStreamHangup()], idleTimeout: TimeAmount(config.limits.idleTimeout))),
            configuration: .init(address: .hostname(config.adminListen.host, port: config.adminListen.port), serverName: nil),
            onServerRunning: { channel in
                if let address = channel.localAddress {
                    egress.own.add(Self.listener(address))
                    logger.info("listening", metadata: ["listener": "admin", "address": "\(Self.format(address))"])
                }
            },
            logger: hbLogger)
        let admin = NamedListener(name: "admin", address: config.adminListen, service: adminApp)

        logger.info(
            "starting",
            metadata: [
                "version": "\(GatewayMetrics.version)",
                "mock_tools": "\(config.mockTools.map(\.rawValue).sorted().joined(separator: ","))",
                "auth": "\(config.auth.required ? "required" : "off")", "sidecar_id": "\(config.auth.sidecarID)",
                "chaos": "\(config.chaos.enabled)", "state": "\(redis.map { "\(RedisLocation(seeds: $0.seeds, cluster: $0.cluster))" } ?? "embedded")",
                "policy": "\(policy.policy.hash.prefix(16))",
                "max_connections": "proxy=\(caps.proxy),admin=\(caps.admin),descriptors=\(descriptors)",
                "upstream_proxy": "\(config.upstreamProxy.map { "\($0)" } ?? "none")",
            ])
        let reload = ReloadOnHangup(logger: logger) {
            let versions = try credentials.reload()
            logger.info("credentials reloaded", metadata: ["versions": "\(versions.map { "\($0.key)=v\($0.value)" }.sorted().joined(separator: ","))"])
            try policy.reload(reason: "SIGHUP")
        }
        var background: [@Sendable () async -> Void] = []
        if config.policyWatch { background.append { await policy.watch() } }
        if let embeddedLimits { background.append { await embeddedLimits.runFlusher(logger: logger) } }
        if let embeddedRuns { background.append { await embeddedRuns.runFlusher() } }
        background.append { await runs.runMaintenance() }
        background.append { await CodePages.releaseAfterStart(logger: logger) }
        background.append { await leases.run() }
        if let leased { background.append { await leased.runMaintenance() } }
        if let redis {
            background.append { await redis.runTopologyRefresher() }
            var subscriber = FleetSubscriber(endpoints: { redis.subscriptionEndpoints() }, state: identityState, authenticator: authenticator, logger: logger)
            subscriber.handlers[FleetResilience.breakerChannel] = { text in
                guard let json = JSONValue.parse(Array(text.utf8)), let key = json["key"]?.stringValue,
                    json["from"]?.stringValue != config.auth.sidecarID
                else { return }
                if json["state"] == "open", let until = json["until"]?.intValue {
                    resilience.applyFleetOpen(key: key, until: Int64(until))
                } else if json["state"] == "closed" {
                    resilience.applyFleetClosed(key: key)
                }
            }
            let applyChaos: @Sendable (String) -> Void = { text in
                guard let settings = try? JSONDecoder().decode(ChaosSettings.self, from: Data(text.utf8)), settings != chaos.current else { return }
                chaos.update(settings)
                logger.notice("chaos updated by the fleet", metadata: ["enabled": "\(settings.enabled)"])
            }
            subscriber.handlers[FleetResilience.chaosChannel] = applyChaos
            subscriber.handlers[RunService.channel] = { runs.received($0) }
            // Catch up on what the fleet decided while this sidecar was starting or disconnected.
            subscriber.onConnect = {
                if let fleet {
                    for (key, until) in await fleet.openBreakers() { resilience.applyFleetOpen(key: key, until: until) }
                    if let text = await fleet.currentChaos() { applyChaos(text) }
                }
                await runs.catchUp()
            }
            let running = subscriber
            background.append { await running.run() }
        }
        if let fleet { background.append { await fleet.runFlusher() } }
        let proxy = try await ProxyServer.bind(listen: config.proxyListen, context: context, cap: proxyCap, readiness: readiness, logger: logger) { address in
            egress.own.add(Self.listener(address))
            logger.info("listening", metadata: ["listener": "proxy", "address": "\(Self.format(address))"])
        }
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: AccessLogFlusher(writer: context.accessLog.writer)), .init(service: BackgroundTasks(tasks: background)),
                    .init(service: reload), .init(service: admin), .init(service: proxy),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: hbLogger))
        try await group.run()
        context.accessLog.writer.flush()
        logger.info("stopped")
    }

    /// The state directory exists (made 0700 if not) and the sidecar can write in it.
    static func checkStateDirectory(_ dir: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw StartupError("state.dir \(dir): cannot be created (\((error as NSError).localizedDescription))")
        }
        guard FileManager.default.isWritableFile(atPath: dir) else { throw StartupError("state.dir \(dir): not writable by this process") }
    }

    /// One sidecar per state directory (`StateDirectoryLock`). Without Redis the embedded stores live
    /// there and a second sidecar would overwrite the first's run events and split its limits: refused.
    /// With Redis the shared state is in Redis; what two sidecars would still both write here (receipts,
    /// snapshots) is warned about, and the second runs. A file system that cannot lock is warned about.
    static func lockStateDirectory(_ dir: String, fleet: Bool, logger: Logger) throws -> StateDirectoryLock? {
        switch try StateDirectoryLock.acquire(in: dir) {
        case .held(let lock):
            return lock
        case .busy(let pid):
            let who = pid.map { "another sidecar (pid \($0))" } ?? "another sidecar"
            guard fleet else {
                throw StartupError("state.dir \(dir): in use by \(who); give each sidecar its own state directory (state.dir, SIDECAR_STATE_DIR)")
            }
            logger.warning(
                "state.dir is in use by another sidecar; the fleet's state is in Redis, but this directory's own files (receipts, snapshots) are written by both: give each sidecar its own",
                metadata: ["state_dir": "\(dir)", "holder_pid": "\(pid.map(String.init) ?? "unknown")"])
            return nil
        case .unsupported(let code):
            logger.warning(
                "state.dir cannot be locked on this file system; make sure no other sidecar uses it",
                metadata: ["state_dir": "\(dir)", "error": "\(String(cString: strerror(code)))"])
            return nil
        }
    }

    /// A CA bundle setting (`upstream.ca_bundle`, `redis.ca_bundle`) holds certificates TLS can use — read
    /// at start, since a bad bundle otherwise fails only at the first call, inside a client already running.
    static func readCABundle(_ path: String, field: String) throws -> [NIOSSLCertificate] {
        let certificates: [NIOSSLCertificate]
        do { certificates = try NIOSSLCertificate.fromPEMFile(path) } catch {
            throw StartupError("\(field) \(path): not a PEM certificate bundle (\(error))")
        }
        guard !certificates.isEmpty else { throw StartupError("\(field) \(path): holds no certificate") }
        return certificates
    }

    /// The interception CA when `intercept.enabled` (generated on first start unless the operator brings one).
    static func loadInterceptCA(_ config: SidecarConfig, logger: Logger) throws -> InterceptCA? {
        guard config.intercept.enabled else { return nil }
        let (ca, generated) = try InterceptCA.load(config.intercept, dir: config.caDir, sidecarID: config.auth.sidecarID, now: Date())
        if generated {
            logger.notice("generated the interception CA", metadata: ["file": "\((config.caDir as NSString).appendingPathComponent("ca.pem"))"])
        }
        return ca
    }

    /// Loads (or, in the default state directory, generates) the keys and builds the authenticator and,
    /// when this host holds an issuer signing key, the minter used by the control API.
    static func buildAuthentication(
        _ config: SidecarConfig, _ environment: [String: String], _ state: IdentityState, _ metrics: GatewayMetrics, _ logger: Logger
    ) throws -> (Authenticator?, TokenMinter?) {
        guard config.auth.required else {
            logger.warning("authentication is OFF: every call runs as the anonymous agent (auth.required: false)")
            return (nil, nil)
        }
        var keys = try KeyFiles.load(directory: config.keysDir)
        var hs256: SymmetricKey?
        if let name = config.auth.hs256SecretEnv {
            guard let secret = environment[name], secret.utf8.count >= 32 else {
                throw KeyError("auth.hs256_secret_env: $\(name) must hold at least 32 bytes")
            }
            hs256 = SymmetricKey(data: Array(secret.utf8))
        }
        if keys.decryption.isEmpty, config.auth.keysDir == nil {
            let generated = try KeyFiles.initialize(directory: config.keysDir)
            logger.notice(
                "generated fleet and issuer keys", metadata: ["dir": "\(config.keysDir)", "fleet_kid": "\(generated.fleetKid)", "issuer_kid": "\(generated.issuerKid)"])
            keys = try KeyFiles.load(directory: config.keysDir)
        }
        guard !keys.decryption.isEmpty else { throw KeyError("no fleet decryption key (fleet-*.key.pem) in \(config.keysDir)") }
        var issuerKeys = keys.verification
        if let hs256 { issuerKeys.append(.hs256(kid: config.auth.hs256Kid, hs256)) }
        guard !issuerKeys.isEmpty else { throw KeyError("no issuer verification key (issuer-*.pub.pem) in \(config.keysDir)") }
        let verifier = TokenVerifier(
            decryptionKeys: keys.decryption, issuerKeys: issuerKeys, issuer: config.auth.issuer, audience: config.auth.audience,
            leeway: config.auth.leeway.components.seconds)
        let authenticator = Authenticator(
            verifier: verifier, state: state, settings: config.auth, metrics: metrics, now: unixNow, logger: logger)
        var minter: TokenMinter?
        let signing: IssuerSigningKey? = keys.signing.last ?? hs256.map { .hs256(kid: config.auth.hs256Kid, $0) }
        if let signing {
            minter = TokenMinter(signingKey: signing, encryptionKey: keys.encryption.last ?? keys.decryption.last!.publicKey)
        }
        return (authenticator, minter)
    }

    /// A listener as the egress guard sees it (a wildcard address means every local address).
    static func listener(host: String, port: Int) -> EgressGuard.Listener {
        let ip = IPAddress.parse(host)
        let any = ip == .v4(0) || ip == .v6(Array(repeating: 0, count: 16))
        return EgressGuard.Listener(address: any ? nil : ip, port: port)
    }

    static func listener(_ address: SocketAddress) -> EgressGuard.Listener {
        listener(host: address.ipAddress ?? "", port: address.port ?? 0)
    }

    /// The brokered tools' credentials from their `credential_env` variables. A value read from a file or
    /// a Kubernetes Secret often ends in a newline: white space around it is trimmed (as the vault's
    /// entries are). One with a space or control character inside, which no header can carry, stops the
    /// start naming the variable — never the value — instead of failing every call.
    static func credentialsFromEnvironment(_ config: SidecarConfig, _ env: [String: String]) throws(StartupError) -> [Tool: Credential] {
        var out: [Tool: Credential] = [:]
        for (tool, t) in config.tools where tool.isBrokered {
            guard let name = t.credentialEnv, let raw = env[name] else { continue }
            let value = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !value.isEmpty else { continue }
            guard Credential.isHeaderSafe(value) else {
                throw StartupError(
                    "\(name): the \(tool.rawValue) credential has a space, control or non-ASCII character inside it, which no request header can carry (the value is not shown)")
            }
            out[tool] = Credential(value)
        }
        return out
    }

    static func format(_ address: SocketAddress) -> String {
        let ip = address.ipAddress ?? "?"
        return ip.contains(":") ? "[\(ip)]:\(address.port ?? 0)" : "\(ip):\(address.port ?? 0)"
    }
}

/// A listener service whose failure names it: "cannot listen on 127.0.0.1:9090 (admin): address already
/// in use" rather than a bare bind error.
struct NamedListener<Inner: Service>: Service {
    let name: String
    let address: HostPort
    let service: Inner

    func run() async throws {
        do { try await service.run() } catch { throw StartupError("cannot listen on \(address) (\(name)): \(error)") }
    }
}

/// Flushes buffered access-log lines until shutdown (it stops last, after the proxy has drained).
struct AccessLogFlusher: Service {
    let writer: BufferedLineWriter

    func run() async throws {
        await cancelWhenGracefulShutdown { await writer.runFlusher() }
    }
}

/// SIGHUP reloads what can change at run time (credentials now; the policy document with the policy
/// issue). A failed reload is logged and the previous state stays.
struct ReloadOnHangup: Service {
    let logger: Logger
    let reload: @Sendable () throws -> Void

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                do { try reload() } catch { logger.error("reload failed; keeping the previous state", metadata: ["error": "\(error)"]) }
            }
        }
    }
}

/// Long-running helpers (policy file watch, limit persistence, identity subscription) that stop when the
/// proxy has drained.
struct BackgroundTasks: Service {
    let tasks: [@Sendable () async -> Void]

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                for task in tasks { group.addTask { await task() } }
            }
        }
    }
}
