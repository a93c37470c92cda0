import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Subscriptions

/// Settings of the HTTP router (the `[router]` table).
public struct RouterSettings: Sendable {
    public var http: NodeConfig.Endpoint
    public var subscription: NodeConfig.Endpoint
    public var algorithm: SubscriptionTable.Algorithm = .weightedRoundRobin
    public var serverName: String = "legion"
    public var connectTimeoutMs: Int64 = 2000
    public var headersTimeoutMs: Int64 = 10_000
    public var idleTimeoutMs: Int64 = 60_000
    public var maxRetries = 3
    public var signCheck: (SubscriptionDigest, String)?
    public var toleranceMs: UInt64 = 17_000

    public init(http: NodeConfig.Endpoint, subscription: NodeConfig.Endpoint) {
        self.http = http
        self.subscription = subscription
    }
}

/// The HTTP router (uWSGI `--http` with subscriptions): Host → subscribed backends over the
/// uwsgi protocol, with retries on connect failure, clear 4xx/5xx answers instead of silent
/// closes, client keep-alive and X-Forwarded-For/-Proto.
public final class HTTPRouter: Service {
    let settings: RouterSettings
    let store: SubscriptionStore
    let logger: Logger

    public init(settings: RouterSettings, store: SubscriptionStore, logger: Logger) {
        self.settings = settings
        self.store = store
        self.logger = logger
    }

    public func run() async throws {
        let shared = RouterShared(settings: settings, store: store, logger: logger)
        let channel: Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 16)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try child.pipeline.syncOperations.addHandler(RouterHandler(shared: shared))
                    }
                }
                .bind(host: settings.http.host, port: settings.http.port)
                .get()
        } catch {
            throw NodeConfigError.invalid(key: "router.http", problem: "cannot listen on \(settings.http): \(error)")
        }
        logger.notice("HTTP router listening", metadata: ["bind": "\(settings.http)", "algorithm": "\(settings.algorithm.rawValue)"])
        try? await gracefulShutdown()
        try? await channel.close().get()
    }
}

/// Everything the per-connection handlers share (immutable or thread-safe).
final class RouterShared: Sendable {
    let settings: RouterSettings
    let store: SubscriptionStore
    let logger: Logger
    let access: Logger

    init(settings: RouterSettings, store: SubscriptionStore, logger: Logger) {
        self.settings = settings
        self.store = store
        self.logger = logger
        var access = Logger(label: "legion.access")
        access.logLevel = logger.logLevel
        self.access = access
    }
}
