#if os(Linux)
import CRouterIO
#endif
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import NIOTLS
import NIOPosix
import ServiceLifecycle
import Subscriptions
import Synchronization

/// Settings of the HTTP router (the `[router]` table).
public struct RouterSettings: Sendable {
    public var http: NodeConfig.Endpoint
    public var subscription: NodeConfig.Endpoint
    public var algorithm: SubscriptionTable.Algorithm = .weightedRoundRobin
    public var serverName: String = "legion"
    public var connectTimeoutMs: Int64 = 2000
    public var headersTimeoutMs: Int64 = 10_000
    public var idleTimeoutMs: Int64 = 60_000
    /// Largest chunked (no Content-Length) request body collected before it is sent to a uwsgi backend.
    public var maxChunkedBodyBytes = 16 << 20
    public var maxRetries = 3
    public var signCheck: (SubscriptionDigest, String)?
    public var toleranceMs: UInt64 = 17_000
    /// The last node of a domain that unsubscribes stays a fallback this long (a vassal's graceful reload), ms.
    public var drainLastMs: UInt64 = 5000
    /// Event-loop threads of the router (`[router] threads`, default: one per core).
    public var threads = System.coreCount
    /// Serve plain HTTP/1.x requests to uwsgi backends on the fast path (`[router] fast_path`,
    /// Linux; everything else goes to the general SwiftNIO router either way).
    public var fastPath = true
    /// Cluster domains: the internal router (uwsgi protocol, reached by other nodes), the address
    /// other nodes use for it, and the UDP socket local vassals subscribe cluster domains to.
    public var internalRouter: NodeConfig.Endpoint?
    public var advertise: String?
    public var clusterSubscription: NodeConfig.Endpoint?
    /// HTTPS with SNI: listen address, default certificate and key (paths), optional directory
    /// of `<name>.crt` / `<name>.key` pairs.
    public var https: NodeConfig.Endpoint?
    public var httpsCertificate: String?
    public var httpsKey: String?
    public var certificatesDirectory: String?

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

    let certificates: CertificateStore?

    public init(settings: RouterSettings, store: SubscriptionStore, logger: Logger, certificates: CertificateStore? = nil) {
        self.settings = settings
        self.store = store
        self.logger = logger
        self.certificates = certificates
    }

    public func run() async throws {
        let shared = RouterShared(settings: settings, store: store, logger: logger)
        var channels: [Channel] = []
        #if os(Linux)
        var fast: FastRouter?
        #endif
        do {
            #if os(Linux)
            if settings.fastPath {
                let router = try FastRouter(shared: shared, host: settings.http.host, port: settings.http.port, threads: settings.threads,
                                            handOff: { fd, bytes in HTTPRouter.adopt(fd: fd, replay: bytes, shared: shared) })
                router.start()
                fast = router
            } else {
                channels.append(try await HTTPRouter.bootstrap(shared: shared, host: settings.http.host, port: settings.http.port))
            }
            #else
            channels.append(try await HTTPRouter.bootstrap(shared: shared, host: settings.http.host, port: settings.http.port))
            #endif
        } catch {
            throw NodeConfigError.invalid(key: "router.http", problem: "cannot listen on \(settings.http): \(error)")
        }
        logger.notice("HTTP router listening", metadata: ["bind": "\(settings.http)", "algorithm": "\(settings.algorithm.rawValue)",
                                                          "fast_path": "\(settings.fastPath)"])
        #if os(Linux)
        var fastTLS: FastRouter?
        #endif
        if let https = settings.https, let certificates {
            let secure = RouterShared(settings: settings, store: store, logger: logger, https: true, certificates: certificates)
            do {
                var onFastPath = false
                #if os(Linux)
                if settings.fastPath {
                    // TLS terminated in the fast path's loops (OpenSSL); what it does not serve is bridged to the general router.
                    let contexts = try FastTLSContexts(certificates: certificates, logger: logger)
                    let router = try FastRouter(shared: secure, host: https.host, port: https.port, threads: settings.threads,
                                                kind: .https(contexts), handOff: { fd, _ in _ = crio_close(fd) },
                                                bridge: { fd, bytes, origin in HTTPRouter.adopt(fd: fd, replay: bytes, shared: secure, origin: origin) })
                    router.start()
                    fastTLS = router
                    onFastPath = true
                }
                #endif
                if !onFastPath {
                    // TLS in SwiftNIO (`fast_path = false`, or not Linux).
                    let context = try NIOSSLContext(configuration: certificates.serverConfiguration())
                    channels.append(try await HTTPRouter.bootstrap(shared: secure, host: https.host, port: https.port, tls: context))
                }
            } catch {
                // The HTTP listener's loops are running: stop them before this service (and its routers) goes away.
                #if os(Linux)
                if let fast { await Task.detached { fast.stop() }.value }
                #endif
                for channel in channels { try? await channel.close().get() }
                throw NodeConfigError.invalid(key: "router.https", problem: "cannot listen on \(https) with TLS: \(error)")
            }
            logger.notice("HTTPS router listening (SNI)", metadata: ["bind": "\(https)", "fast_path": "\(settings.fastPath)"])
        }
        try? await gracefulShutdown()
        #if os(Linux)
        if let fast { await Task.detached { fast.stop(drainMs: 3000) }.value }
        if let fastTLS { await Task.detached { fastTLS.stop(drainMs: 3000) }.value }
        #endif
        for channel in channels { try? await channel.close().get() }
    }

    /// A router listener for the failover IP: routes like the node's router (cluster domains
    /// included) and answers `GET /.legion/lord` with `lordBody`.
    public static func vipListener(settings: RouterSettings, store: SubscriptionStore, logger: Logger,
                                   lordBody: @escaping @Sendable () -> String) -> VIPListenerFactory {
        { host, port in
            let shared = RouterShared(settings: settings, store: store, logger: logger, lordBody: lordBody)
            #if os(Linux)
            if settings.fastPath {
                let router = try FastRouter(shared: shared, host: host, port: port, threads: settings.threads,
                                            handOff: { fd, bytes in HTTPRouter.adopt(fd: fd, replay: bytes, shared: shared) })
                router.start()
                return FastRouterListener(router: router)
            }
            #endif
            return RouterListener(channel: try await bootstrap(shared: shared, host: host, port: port))
        }
    }

    static func bootstrap(shared: RouterShared, host: String, port: Int, tls: NIOSSLContext? = nil) async throws -> Channel {
        try await ServerBootstrap(group: RouterLoops.group(threads: shared.settings.threads))
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.Types.SocketOption(level: .ip, name: .init(rawValue: 15 /* IP_FREEBIND */)), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 16)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture {
                        try configureClient(child, shared: shared, tls: tls)
                    }
                }
                .bind(host: host, port: port)
                .get()
    }
}

extension HTTPRouter {
    /// The general router's pipeline for one client connection: TLS (SNI) if `tls`, the HTTP server
    /// codec, `RouterHandler`. Used for accepted connections and for those the fast path hands over.
    static func configureClient(_ child: Channel, shared: RouterShared, tls: NIOSSLContext?, origin: ClientOrigin? = nil) throws {
        let guardHandler = ConnectionGuard()
        if let tls {
            // The ClientHello's server name picks the TLS context: a name with client-certificate
            // authentication gets its own (verification is per context in swift-nio-ssl), every
            // other name the default context, which picks certificates per SNI itself.
            let certificates = shared.certificates
            let sni = SNIHandler { result in
                var context = tls
                if case .hostname(let name) = result, let auth = certificates?.clientAuthContext(for: name) {
                    context = auth
                }
                return child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context),
                                                                 position: .before(guardHandler))
                }
            }
            try child.pipeline.syncOperations.addHandler(ByteToMessageHandler(sni))
        }
        try child.pipeline.syncOperations.addHandler(guardHandler)
        // The HTTP server pipeline, with names so a WebSocket connection can take it out, and a
        // decoder that hands on the bytes after an upgrade request instead of dropping them.
        let sync = child.pipeline.syncOperations
        try sync.addHandler(HTTPResponseEncoder(), name: "http-encoder")
        try sync.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)), name: "http-decoder")
        try sync.addHandler(HTTPServerPipelineHandler(), name: "http-pipelining")
        try sync.addHandler(HTTPServerProtocolErrorHandler(), name: "http-errors")
        try sync.addHandler(HeaderTimeoutHandler(timeoutMs: shared.settings.headersTimeoutMs, guardHandler: guardHandler), name: "header-timeout")
        try sync.addHandler(ChunkedBodyCollector(limitBytes: shared.settings.maxChunkedBodyBytes), name: "chunked-body")
        try sync.addHandler(RouterHandler(shared: shared, origin: origin))
    }

    /// Adopts a client socket from the fast path (with the bytes it already read) into the general router.
    static func adopt(fd: Int32, replay: [UInt8], shared: RouterShared, origin: ClientOrigin? = nil) {
        let group = RouterLoops.group(threads: shared.settings.threads)
        ClientBootstrap(group: group)
            .channelOption(.maxMessagesPerRead, value: 16)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ReplayHandler(replay))
                    try configureClient(channel, shared: shared, tls: nil, origin: origin)
                }
            }
            .withConnectedSocket(fd)
            .whenFailure { error in
                shared.logger.warning("router: could not hand a connection to the general path", metadata: ["error": "\(error)"])
            }
    }
}

/// First handler of a connection adopted from the fast path: replays the bytes the fast path
/// read before anything new is read from the socket, then leaves.
final class ReplayHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private var bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if !bytes.isEmpty {
            let buffer = context.channel.allocator.buffer(bytes: bytes)
            bytes = []
            context.fireChannelRead(NIOAny(buffer))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// The router's own event loops, created once per thread count and kept for the process.
enum RouterLoops {
    private static let groups = Mutex<[Int: MultiThreadedEventLoopGroup]>([:])

    static func group(threads: Int) -> MultiThreadedEventLoopGroup {
        groups.withLock { g in
            if let existing = g[threads] { return existing }
            let created = MultiThreadedEventLoopGroup(numberOfThreads: max(threads, 1))
            g[threads] = created
            return created
        }
    }
}

#if os(Linux)
struct FastRouterListener: VIPListener {
    let router: FastRouter
    /// The failover IP is already released: the requests in flight on it (and connections the kernel accepted) finish.
    func stop() async { await Task.detached { [router] in router.stop(drainMs: 2000) }.value }
}
#endif

struct RouterListener: VIPListener {
    let channel: Channel
    func stop() async { try? await channel.close().get() }
}

/// Everything the per-connection handlers share (immutable or thread-safe).
final class RouterShared: Sendable {
    let settings: RouterSettings
    let store: SubscriptionStore
    let logger: Logger
    let access: Logger
    let lordBody: (@Sendable () -> String)?
    let https: Bool
    let certificates: CertificateStore?
    /// Idle keep-alive connections to HTTP/1.1 backends.
    let pool = BackendPool()

    init(settings: RouterSettings, store: SubscriptionStore, logger: Logger, lordBody: (@Sendable () -> String)? = nil, https: Bool = false,
         certificates: CertificateStore? = nil) {
        self.lordBody = lordBody
        self.https = https
        self.certificates = certificates
        self.settings = settings
        self.store = store
        self.logger = logger
        var access = Logger(label: "legion.access")
        access.logLevel = logger.logLevel
        self.access = access
    }
}

/// Connects to a subscribed backend address: a UNIX socket path, or `host:port` (an empty host
/// means 127.0.0.1, as uWSGI's `:3031`). IP literals connect directly (no resolver, no
/// happy-eyeballs machinery on the hot path); names go through NIO's resolver.
func connectBackend(_ bootstrap: ClientBootstrap, address: String, on eventLoop: EventLoop) -> EventLoopFuture<Channel> {
    if address.hasPrefix("/") {
        return bootstrap.connect(unixDomainSocketPath: address)
    }
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
        return eventLoop.makeFailedFuture(ChannelError.badInterfaceAddressFamily)
    }
    let parsed = String(address[..<colon])
    let host = parsed.isEmpty ? "127.0.0.1" : parsed
    if let socketAddress = try? SocketAddress(ipAddress: host, port: port) {
        return bootstrap.connect(to: socketAddress)
    }
    return bootstrap.connect(host: host, port: port)
}
