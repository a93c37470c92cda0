import Api
import ArgumentParser
import Foundation
import Logging
import Node
import ServiceLifecycle
import Subscriptions

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run one legion node in the foreground until SIGTERM or SIGINT.",
        discussion: """
        On SIGTERM/SIGINT the node shuts down cleanly: it resigns if Lord (failover IP released,
        unlord hooks run), announces its death so peers elect a new Lord at once, runs the death
        hooks and exits 0. Election events go to DATA_DIR/audit.jsonl; the pid to DATA_DIR/node.pid.
        """
    )

    @Option(name: .long, help: "The node's TOML configuration file.")
    var config: String

    @Option(name: .long, help: "Override [node].data_dir.")
    var dataDir: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        CLILogging.bootstrap(level: logLevel)
        var nodeConfig: NodeConfig
        do {
            nodeConfig = try NodeConfig.load(path: config)
        } catch {
            throw UserFacingError("\(error)")
        }
        if let dataDir { nodeConfig.dataDir = dataDir }
        let logger = Logger(label: "legion.\(nodeConfig.name)")
        try FileManager.default.createDirectory(atPath: nodeConfig.dataDir, withIntermediateDirectories: true)
        let pidFile = nodeConfig.dataDir + "/node.pid"
        let pid = ProcessInfo.processInfo.processIdentifier
        try "\(pid)\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: pidFile) }

        var endpoints: [String: String] = ["legion": nodeConfig.bind.description]
        if let router = nodeConfig.router {
            endpoints["router"] = "http://\(router.http)"
            endpoints["subscriptions"] = "udp://\(router.subscription)"
        }
        if let api = nodeConfig.api { endpoints["api"] = "http://\(api)" }
        if let store = nodeConfig.store { endpoints["store"] = "dqlite://\(store.bind)" }
        if nodeConfig.vip.driver != .none { endpoints["vip"] = "http://\(nodeConfig.vip.endpoint)/.legion/lord" }
        let state = NodeState(.init(nodeName: nodeConfig.name, legionName: nodeConfig.legionName, pid: pid,
                                    startedAtMs: SystemClock.wallMillis(),
                                    vip: nodeConfig.vip.driver == .none ? nil : nodeConfig.vip.endpoint, endpoints: endpoints))
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var relay: ClusterRelay?
        var vipListener: VIPListenerFactory?
        var subscriptionVerifier: SubscriptionVerifier?
        var routerTable: SubscriptionStore?
        if let router = nodeConfig.router {
            var policy = SubscriptionTable.Policy()
            policy.toleranceMs = router.toleranceMs
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
                    throw UserFacingError("router.https_certificate / router.https_key: \(error)")
                }
            }
            services.append(.init(service: SubscriptionServer(bind: router.subscription, store: store, logger: logger, certificates: certificates)))
            services.append(.init(service: HTTPRouter(settings: router, store: store, logger: logger, certificates: certificates)))
            if let internalBind = router.internalRouter, let clusterBind = router.clusterSubscription {
                // Cluster domains: local vassals subscribe here; the internal router serves them to
                // other nodes; the relay puts "this node's internal router" into every node's table.
                let local = SubscriptionStore(policy: policy, algorithm: router.algorithm, verifier: verifier)
                let clusterRelay = ClusterRelay(origin: nodeConfig.name, internalAddress: router.advertise ?? internalBind.description,
                                                store: store, localStore: local, logger: logger)
                services.append(.init(service: SubscriptionServer(bind: clusterBind, store: local, logger: logger, relay: clusterRelay)))
                services.append(.init(service: InternalRouter(bind: internalBind, store: local, logger: logger, settings: router)))
                relay = clusterRelay
            }
            let lordState = state
            vipListener = HTTPRouter.vipListener(settings: router, store: store, logger: logger, lordBody: { lordState.lordJSON() })
        }
        let legion = try LegionService(config: nodeConfig, state: state, logger: logger, relay: relay, vipListener: vipListener)
        services.insert(.init(service: legion, successTerminationBehavior: .gracefullyShutdownGroup), at: 0)
        if let store = nodeConfig.store {
            let verifier = subscriptionVerifier
            services.append(.init(service: StoreService(settings: store, nodeName: nodeConfig.name, dataDir: nodeConfig.dataDir,
                                                        state: state, logger: logger, onState: { desired in
                // Signed subscriptions for a customer's domains verify with that customer's key.
                var keys: [String: String] = [:]
                for domain in desired.domains {
                    if let pem = desired.customerKeys[domain.customer] { keys[domain.name] = pem }
                }
                verifier?.replaceStoreKeys(keys)
            })))
        }
        if let api = nodeConfig.api {
            let app = NodeAPI.application(state: state, subscriptions: routerTable, host: api.host, port: api.port, logger: logger)
            services.append(.init(service: app))
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        do {
            try await group.run()
        } catch {
            throw UserFacingError("node \(nodeConfig.name) stopped: \(error)")
        }
    }
}
