import Api
import Emperor
import Foundation
import Logging
import Node
import ServiceLifecycle
import Store
import Subscriptions

/// Builds a node's services from its configuration and runs them as one service group: the one place the CLI,
/// the tests and new subsystems plug in. Order matters only for shutdown (reverse): the Legion service first
/// (so a Lord resigns and hands the VIP over before anything else stops), hosting last.
public struct NodeRuntime: Sendable {
    public let config: NodeConfig
    public let state: NodeState
    /// The desired state, published by the store's change feed (or the local snapshot), consumed by many.
    public let feed: DesiredStateFeed
    public let logger: Logger

    public init(config: NodeConfig, logger: Logger) {
        self.config = config
        self.logger = logger
        self.feed = DesiredStateFeed()
        let pid = ProcessInfo.processInfo.processIdentifier
        var endpoints: [String: String] = ["legion": config.bind.description]
        if let router = config.router {
            endpoints["router"] = "http://\(router.http)"
            endpoints["subscriptions"] = "udp://\(router.subscription)"
        }
        if let api = config.api { endpoints["api"] = "http://\(api)" }
        if let store = config.store { endpoints["store"] = "dqlite://\(store.bind)" }
        if config.vip.driver != .none { endpoints["vip"] = "http://\(config.vip.endpoint)/.legion/lord" }
        self.state = NodeState(.init(nodeName: config.name, legionName: config.legionName, pid: pid,
                                     startedAtMs: SystemClock.wallMillis(),
                                     vip: config.vip.driver == .none ? nil : config.vip.endpoint, endpoints: endpoints))
    }

    /// Every service of this node, in start order.
    /// Where hosting's unix subscription sockets live (`http`, `cluster`), when the node hosts containers.
    public var subscribeDir: String? { config.hosting.map { $0.subscribeDir } }

    /// This node's API as other nodes reach it: its bind address, or for a wildcard bind the router's advertised
    /// host, else the Legion bind host (loopback when that is a wildcard too).
    func apiURL(_ api: NodeConfig.Endpoint) -> String {
        let fallback = config.bind.host == "0.0.0.0" ? "127.0.0.1" : config.bind.host
        let host = api.host != "0.0.0.0" ? api.host : (config.router?.advertise?.split(separator: ":").first.map(String.init) ?? fallback)
        return "http://\(host):\(api.port)"
    }

    public func services() throws -> [ServiceGroupConfiguration.ServiceConfiguration] {
        // The Prometheus registry becomes the swift-metrics backend before any service records a measurement.
        _ = NodeMetricsExporter.shared
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var relay: ClusterRelay?
        var vipListener: VIPListenerFactory?
        var subscriptionVerifier: SubscriptionVerifier?
        var routerTable: SubscriptionStore?
        if let router = config.router {
            var policy = SubscriptionTable.Policy()
            policy.toleranceMs = router.toleranceMs
            policy.drainLastMs = router.drainLastMs
            let verifier = router.signCheck.map { SubscriptionVerifier(digest: $0.0, keyDirectory: $0.1) }
            subscriptionVerifier = verifier
            policy.requireSignature = verifier != nil
            let store = SubscriptionStore(policy: policy, algorithm: router.algorithm, verifier: verifier)
            routerTable = store
            var certificates: CertificateStore?
            if router.https != nil, let cert = router.httpsCertificate, let key = router.httpsKey {
                do {
                    certificates = try CertificateStore(defaultCertificate: cert, defaultKey: key, directory: router.certificatesDirectory, logger: logger)
                } catch {
                    throw NodeRuntimeError("router.https_certificate / router.https_key: \(error)")
                }
            }
            services.append(.init(service: SubscriptionServer(bind: router.subscription, store: store, logger: logger, certificates: certificates)))
            if let dir = subscribeDir {
                // Hosted vassals subscribe over unix sockets (reachable from containers without a network of their own).
                services.append(.init(service: SubscriptionServer(bind: router.subscription, store: store, logger: logger,
                                                                  certificates: certificates, unixPath: dir + "/http")))
            }
            if let internalBind = router.internalRouter, let clusterBind = router.clusterSubscription {
                // Cluster domains: local vassals subscribe here; the internal router serves them to
                // other nodes; the relay puts "this node's internal router" into every node's table.
                let local = SubscriptionStore(policy: policy, algorithm: router.algorithm, verifier: verifier)
                let clusterRelay = ClusterRelay(origin: config.name, internalAddress: router.advertise ?? internalBind.description,
                                                store: store, localStore: local, logger: logger)
                services.append(.init(service: SubscriptionServer(bind: clusterBind, store: local, logger: logger, relay: clusterRelay)))
                if let dir = subscribeDir {
                    services.append(.init(service: SubscriptionServer(bind: clusterBind, store: local, logger: logger, relay: clusterRelay,
                                                                      unixPath: dir + "/cluster")))
                }
                services.append(.init(service: InternalRouter(bind: internalBind, store: local, logger: logger, settings: router)))
                relay = clusterRelay
                if let domain = config.apiDomain, let api = config.api {
                    services.append(.init(service: APIDomainService(domain: domain, backend: apiURL(api), relay: clusterRelay,
                                                                     refreshMs: max(1000, router.toleranceMs / 3), logger: logger)))
                }
            }
            // After the internal router, so it stops first: clients' requests drain while the hop they may take to
            // this node's own vassals still serves.
            services.append(.init(service: HTTPRouter(settings: router, store: store, logger: logger, certificates: certificates)))
            let lordState = state
            vipListener = HTTPRouter.vipListener(settings: router, store: store, logger: logger, lordBody: { lordState.lordJSON() })
        }
        services.append(.init(service: ReadinessNotifier(state: state, hasStore: config.store != nil, logger: logger),
                              successTerminationBehavior: .ignore))
        // Says when the async side stalls (the task pool or a shared event loop held by a blocking job) and which
        // threads wait where.
        services.append(.init(service: ExecutorWatchdog(logger: logger)))
        let storeHints = config.store.map { _ in StoreChangeHints(origin: config.name) }
        let legion = try LegionService(config: config, state: state, logger: logger, relay: relay, storeHints: storeHints,
                                       vipListener: vipListener)
        if let store = config.store {
            services.append(.init(service: StoreService(settings: store, nodeName: config.name, dataDir: config.dataDir,
                                                        state: state, logger: logger, feed: feed, hints: storeHints)))
        }
        if let verifier = subscriptionVerifier {
            services.append(.init(service: StoreKeyVerifierService(feed: feed, verifier: verifier)))
        }
        // Metrics: the node-local collector (containers and router counters) and its store, read by the API.
        var metricDatabase: MetricDatabase?
        if config.metrics.enabled, config.hosting != nil || config.router != nil {
            do {
                try FileManager.default.createDirectory(atPath: config.dataDir, withIntermediateDirectories: true)
                let database = try MetricDatabase(path: config.dataDir + "/metrics.sqlite")
                metricDatabase = database
                let source: ContainerSampler.Source = config.hosting?.runtime == .runc ? .cgroup(node: config.name) : .processes
                services.append(.init(service: MetricsCollector(database: database, sampler: ContainerSampler(source: source), feed: feed, state: state,
                                                                subscriptions: routerTable, intervalSeconds: config.metrics.intervalSeconds,
                                                                retention: config.metrics.retention, logger: logger)))
            } catch {
                throw NodeRuntimeError("metrics: \(error)")
            }
        }
        if let store = config.store, config.alarms.enabled {
            var options = StoreClient.Options(nodes: store.addresses)
            options.database = store.database
            if let storeHints { options.afterWrite = { storeHints.wroteHere() } }
            services.append(.init(service: AlarmDeliveryService(settings: config.alarms, options: options, state: state, feed: feed, logger: logger)))
        }
        if let api = config.api {
            let apiServices = config.store.map { store in
                var options = StoreClient.Options(nodes: store.addresses)
                options.database = store.database
                if let storeHints { options.afterWrite = { storeHints.wroteHere() } }
                var services = APIServices(store: options, resolver: config.apiResolver, logger: logger)
                // API writes go to the store leader's node: one group-commit writer for the whole cluster.
                services.forwarder = StoreWriteForwarder(secret: config.secret.secret, state: state, nodeName: config.name,
                                                         ownStoreAddress: store.bind.description, ownURL: apiURL(api), logger: logger)
                services.peers = PeerClient(secret: config.secret.secret, nodeName: config.name, ownURL: apiURL(api), logger: logger)
                services.local = LocalNode(name: config.name, state: state, subscriptions: routerTable, metrics: metricDatabase,
                                           auditPath: config.dataDir + "/audit.jsonl")
                return services
            }
            let app = NodeAPI.application(state: state, subscriptions: routerTable, services: apiServices, host: api.host, port: api.port, logger: logger)
            services.append(.init(service: app))
            if let apiServices {
                services.append(.init(service: APIEndpointRegistration(services: apiServices), successTerminationBehavior: .ignore))
            }
        }
        let emperorSettings = config.emperor?.settings ?? EmperorSettings()
        if let dirs = config.emperor?.vassalDirectories, !dirs.isEmpty {
            var settings = emperorSettings
            settings.monitors = dirs
            services.append(.init(service: EmperorService(emperor: Emperor(settings: settings, logger: logger))))
        }
        if var hosting = config.hosting {
            hosting.openPorts = [config.router?.http.port, config.router?.https?.port].compactMap { $0 }
            let routes = HostingShortcuts.Routes(http: config.router.map { _ in hosting.subscribeDir + "/http" },
                                                 cluster: config.router?.clusterSubscription.map { _ in hosting.subscribeDir + "/cluster" },
                                                 digest: config.router?.signCheck?.0.rawValue ?? "SHA1")
            // Container alarms: spooled on disk first, then stored (never lost while the store has no quorum).
            let spool = config.store.map { store in
                var options = StoreClient.Options(nodes: store.addresses)
                options.database = store.database
                if let storeHints { options.afterWrite = { storeHints.wroteHere() } }
                return AlarmSpool(dir: config.dataDir + "/alarm-spool", options: options, logger: logger)
            }
            if let spool { services.append(.init(service: spool)) }
            services.append(.init(service: HostingService(settings: hosting, emperor: emperorSettings, routes: routes,
                                                          feed: feed, logger: logger, state: state, nodeName: config.name,
                                                          alarms: spool)))
        }
        // Last in the list, so first to stop (the group stops services in reverse order): a stopping node resigns
        // lordship and leaves the legion first — the failover IP moves on, other routers drop its cluster backends —
        // and only then drains its routers and stops its store and vassals.
        services.append(.init(service: legion, successTerminationBehavior: .gracefullyShutdownGroup))
        return services
    }

    /// Runs the node until SIGTERM/SIGINT (or a fatal error), then shuts every service down in reverse order.
    public func run() async throws {
        let group = ServiceGroup(configuration: .init(services: try services(), gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        try await group.run()
    }
}

/// Signed subscriptions for a customer's domains verify with that customer's key from the store.
struct StoreKeyVerifierService: Service {
    let feed: DesiredStateFeed
    let verifier: SubscriptionVerifier

    func run() async throws {
        await cancelWhenGracefulShutdown {
            for await desired in feed.subscribe() {
                var keys: [String: String] = [:]
                for domain in desired.domains {
                    if let pem = desired.customerKeys[domain.customer] { keys[domain.name] = pem }
                }
                verifier.replaceStoreKeys(keys)
            }
        }
    }
}

/// `[api] domain`: this node's API announces itself to every member's router as an HTTP backend of the API
/// domain (in process, through the legion's authenticated relay), so every router — and the Lord on the
/// failover IP — balances the API across every node. A node that stops unsubscribes; one that dies drops out
/// when its entry expires, and meanwhile the routers eject it on the first failed connection.
struct APIDomainService: Service {
    let domain: String
    /// `http://host:port` as other nodes reach this node's API.
    let backend: String
    let relay: ClusterRelay
    let refreshMs: UInt64
    let logger: Logger

    func run() async throws {
        let packet = SubscriptionPacket(command: .subscribe, key: domain, address: backend)
        logger.notice("API served by name through every router", metadata: ["domain": "\(domain)", "backend": "\(backend)"])
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                relay.announce(packet, nowMs: SystemClock.wallMillis())
                try? await Task.sleep(for: .milliseconds(Int64(refreshMs)))
            }
        }
        var leave = packet
        leave.command = .unsubscribe
        relay.announce(leave, nowMs: SystemClock.wallMillis())
    }
}

/// Tells systemd (`Type=notify`) the node is ready — its Legion service runs and, with a store, the store is
/// reachable (or 30 s passed: a node without quorum still routes and hosts from its snapshot) — and, on shutdown,
/// that it is stopping. Without `$NOTIFY_SOCKET` it does nothing.
struct ReadinessNotifier: Service {
    let state: NodeState
    let hasStore: Bool
    let logger: Logger

    func run() async throws {
        guard ProcessInfo.processInfo.environment["NOTIFY_SOCKET"] != nil else { return }
        await cancelWhenGracefulShutdown {
            let started = ContinuousClock.now
            while !Task.isCancelled {
                let snapshot = state.snapshot
                let storeReady = !hasStore || snapshot.store?.reachable == true || ContinuousClock.now - started > .seconds(30)
                if snapshot.legion != nil && storeReady { break }
                try? await Task.sleep(for: .milliseconds(50))
            }
            guard !Task.isCancelled else { return }
            SystemdNotifier.notify("READY=1\nSTATUS=serving (\(state.snapshot.nodeName))")
            logger.info("told systemd the node is ready")
            try? await gracefulShutdown()
        }
        SystemdNotifier.notify("STOPPING=1")
    }
}

/// Records in the store where this node's API answers (so other nodes can send it writes while it leads).
struct APIEndpointRegistration: Service {
    let services: APIServices

    func run() async throws {
        await cancelWhenGracefulShutdown { await services.registerEndpoint() }
    }
}

/// An Emperor on operator vassal directories (`[emperor] vassals`), as a service.
struct EmperorService: Service {
    let emperor: Emperor

    func run() async throws {
        try await withGracefulShutdownHandler {
            _ = try await emperor.run()
        } onGracefulShutdown: {
            emperor.shutdown()
        }
    }
}

public struct NodeRuntimeError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
