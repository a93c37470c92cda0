#if os(Linux)
import CRouterIO
#endif
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Subscriptions
import UwsgiWire

/// The node's internal router (uWSGI's "fastrouter" role): other nodes' routers send it
/// cluster-domain requests over the uwsgi protocol; it routes each by `HTTP_HOST` to a local
/// vassal subscribed on the cluster subscription socket and relays bytes both ways.
public final class InternalRouter: Service {
    let bind: NodeConfig.Endpoint
    let store: SubscriptionStore
    let logger: Logger
    let settings: RouterSettings?

    /// `settings`: the node's router settings (timeouts, threads, `fast_path`); nil runs the SwiftNIO relay.
    public init(bind: NodeConfig.Endpoint, store: SubscriptionStore, logger: Logger, settings: RouterSettings? = nil) {
        self.bind = bind
        self.store = store
        self.logger = logger
        self.settings = settings
    }

    public func run() async throws {
        let store = self.store
        let logger = self.logger
        #if os(Linux)
        if let settings, settings.fastPath {
            let shared = RouterShared(settings: settings, store: store, logger: logger)
            let relay: FastRouter
            do {
                relay = try FastRouter(shared: shared, host: bind.host, port: bind.port, threads: settings.threads, kind: .relay,
                                       handOff: { fd, _ in _ = crio_close(fd) })
            } catch {
                throw NodeConfigError.invalid(key: "router.internal", problem: "cannot listen on \(bind): \(error)")
            }
            relay.start()
            logger.notice("internal router listening", metadata: ["bind": "\(bind)", "fast_path": "true"])
            try? await gracefulShutdown()
            // Relays in flight (and ones accepted but not read yet) finish: other nodes' routers are waiting on them.
            await Task.detached { relay.stop(drainMs: 3000) }.value
            return
        }
        #endif
        let (maxRetries, connectTimeoutMs) = (settings?.maxRetries ?? 3, settings?.connectTimeoutMs ?? 2000)
        let channel: Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.addHandler(InternalRouterHandler(store: store, logger: logger, maxRetries: maxRetries,
                                                                                           connectTimeoutMs: connectTimeoutMs))
                    }
                }
                .bind(host: bind.host, port: bind.port)
                .get()
        } catch {
            throw NodeConfigError.invalid(key: "router.internal", problem: "cannot listen on \(bind): \(error)")
        }
        logger.notice("internal router listening", metadata: ["bind": "\(bind)"])
        try? await gracefulShutdown()
        try? await channel.close().get()
    }
}

final class InternalRouterHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let store: SubscriptionStore
    let logger: Logger
    private var context: ChannelHandlerContext?
    private var pending: ByteBuffer?
    private var peer: Channel?
    private var routing = false
    private var attempts = 0
    private var excluded: Set<[UInt8]> = []
    private var node: SubscriptionTable.Node?
    /// The node's `[router]` max_retries and connect_timeout_ms: the same as its other paths.
    let maxRetries: Int
    let connectTimeoutMs: Int64

    init(store: SubscriptionStore, logger: Logger, maxRetries: Int, connectTimeoutMs: Int64) {
        self.store = store
        self.logger = logger
        self.maxRetries = maxRetries
        self.connectTimeoutMs = connectTimeoutMs
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if let peer {
            peer.writeAndFlush(buffer, promise: nil)
            return
        }
        if pending == nil { pending = buffer } else { pending?.writeBuffer(&buffer) }
        guard !routing, let head = pending, head.readableBytes >= 4,
              let size = head.getInteger(at: head.readerIndex + 1, endianness: .little, as: UInt16.self),
              head.readableBytes >= 4 + Int(size) else {
            if (pending?.readableBytes ?? 0) > 70_000 { fail(context, .relayRequestRefused("request head too large")) }
            return
        }
        routing = true
        let varsBytes = head.getBytes(at: head.readerIndex + 4, length: Int(size)) ?? []
        guard let vars = try? UwsgiVars(decoding: varsBytes), let host = vars["HTTP_HOST"] else {
            fail(context, .relayRequestRefused("malformed uwsgi request (no HTTP_HOST)"))
            return
        }
        connect(context, host: host)
    }

    private func connect(_ context: ChannelHandlerContext, host: [UInt8]) {
        guard let node = store.pick(host: host, nowMs: SystemClock.wallMillis(), excluding: excluded) else {
            fail(context, RouterPolicy.noLocalPick(host: String(decoding: host, as: UTF8.self), attempts: attempts))
            return
        }
        self.node = node
        attempts += 1
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let bootstrap = ClientBootstrap(group: context.eventLoop)
            .connectTimeout(.milliseconds(connectTimeoutMs))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(RelayBackHandler(client: bound)) }
            }
        connectBackend(bootstrap, address: node.addressString, on: context.eventLoop).whenComplete { result in
            let handler = bound.value
            guard let ctx = handler.context else {
                if case .success(let ch) = result { ch.close(promise: nil) }
                return
            }
            switch result {
            case .success(let ch):
                handler.peer = ch
                if let pending = handler.pending { ch.writeAndFlush(pending, promise: nil) }
                handler.pending = nil
            case .failure:
                handler.store.release(node)
                handler.store.eject(node, nowMs: SystemClock.wallMillis())
                handler.excluded.insert(node.address)
                handler.node = nil
                if RouterPolicy.retry(attempts: handler.attempts, maxRetries: handler.maxRetries, replayable: true, answerStarted: false) {
                    handler.connect(ctx, host: host)
                } else {
                    handler.fail(ctx, .localBackendsUnreachable)
                }
            }
        }
    }

    /// Answers with a raw HTTP error (uwsgi backends answer raw HTTP, so the caller parses it), then closes.
    private func fail(_ context: ChannelHandlerContext, _ refusal: RouterPolicy.Refusal) {
        let text = RouterPolicy.raw(RouterPolicy.answer(refusal), minor: 1, keepAlive: false)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: text))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func fromPeer(_ buffer: ByteBuffer) {
        context?.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func peerClosed() {
        if let node { store.release(node) }
        node = nil
        context?.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer?.close(promise: nil)
        if let node { store.release(node) }
        node = nil
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

final class RelayBackHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let client: NIOLoopBound<InternalRouterHandler>

    init(client: NIOLoopBound<InternalRouterHandler>) { self.client = client }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        client.value.fromPeer(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.value.peerClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
