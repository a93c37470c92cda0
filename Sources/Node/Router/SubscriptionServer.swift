import CRouterIO
import Foundation
import Synchronization
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Subscriptions
import Supervisor

/// The UDP subscription server (uWSGI `--http-subscription-server`): real uWSGI vassals
/// subscribe here with `--subscribe-to` / `--subscribe2`. Never answers on the socket (as uWSGI).
public final class SubscriptionServer: Service {
    let bind: NodeConfig.Endpoint
    let store: SubscriptionStore
    let logger: Logger
    /// For the cluster subscription socket: accepted packets are relayed to every member.
    let relay: ClusterRelay?
    /// Learns SNI certificates carried by subscriptions.
    let certificates: CertificateStore?
    /// Listen on this unix datagram socket instead of UDP (uwsgi.it's `/subscribe/http`): containers without a
    /// network of their own reach it through a bind mount; mode 0666 so any container uid may send.
    let unixPath: String?

    public init(bind: NodeConfig.Endpoint, store: SubscriptionStore, logger: Logger, relay: ClusterRelay? = nil,
                certificates: CertificateStore? = nil, unixPath: String? = nil) {
        self.certificates = certificates
        self.unixPath = unixPath
        self.bind = bind
        self.store = store
        self.logger = logger
        self.relay = relay
    }

    public func run() async throws {
        if let unixPath { return try await runUnix(unixPath) }
        let channel: NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>
        do {
            channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelOption(.socketOption(.so_rcvbuf), value: 1 << 20)
                .bind(host: bind.host, port: bind.port) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>(wrappingChannelSynchronously: ch)
                    }
                }
        } catch {
            throw NodeConfigError.invalid(key: "router.subscription", problem: "cannot bind UDP \(bind): \(error)")
        }
        logger.notice("subscription server listening", metadata: ["bind": "\(bind)", "algorithm": "\(store.algorithm.rawValue)",
                                                                   "signed": "\(store.verifier != nil)"])
        let store = self.store
        try await channel.executeThenClose { inbound, _ in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await Self.expireLoop(store: store, logger: self.logger) }
                group.addTask {
                    var drops = RateLimitedLog()
                    for try await envelope in inbound {
                        self.process(Array(buffer: envelope.data), from: "\(envelope.remoteAddress)", drops: &drops)
                    }
                }
                try? await gracefulShutdown()
                group.cancelAll()
            }
        }
    }

    /// The unix datagram variant: a blocking receive loop on a thread of its own (NIO cannot name the unbound
    /// unix sockets uWSGI sends from, and an error there must never stop the server).
    private func runUnix(_ path: String) async throws {
        do {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        } catch {
            throw NodeConfigError.invalid(key: "hosting.subscribe_dir", problem: "cannot create \((path as NSString).deletingLastPathComponent): \(error.localizedDescription)")
        }
        let fd = crio_bind_unix_dgram(path)
        guard fd >= 0 else {
            throw NodeConfigError.invalid(key: "hosting.subscribe_dir", problem: "cannot bind the unix subscription socket \(path): \(String(cString: strerror(errno)))")
        }
        logger.notice("subscription server listening", metadata: ["bind": "\(path)", "algorithm": "\(store.algorithm.rawValue)",
                                                                   "signed": "\(store.verifier != nil)"])
        let stopped = UnixReceiverState()
        let thread = Thread { [self] in
            ThreadName.set("legion-sub-unix")
            var drops = RateLimitedLog()
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while !stopped.isStopped {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n > 0 {
                    process(Array(buffer[0..<n]), from: "unix:\(path)", drops: &drops)
                } else if n < 0, errno != EINTR, !stopped.isStopped {
                    logger.warning("unix subscription socket \(path): \(String(cString: strerror(errno)))")
                    usleep(100_000)
                }
            }
            close(fd)
        }
        thread.start()
        let store = self.store
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Self.expireLoop(store: store, logger: self.logger) }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        stopped.stop()
        shutdown(fd, Int32(SHUT_RDWR))   // wakes the blocking recv
        unlink(path)
    }

    private static func expireLoop(store: SubscriptionStore, logger: Logger) async throws {
        await store.sweepExpired(clock: { SystemClock.wallMillis() }) { gone in
            for node in gone {
                logger.info("subscription expired", metadata: ["key": "\(node.keyString)", "address": "\(node.addressString)"])
            }
        }
    }

    /// One datagram: apply, relay cluster subscriptions, learn SNI certificates, log.
    private func process(_ bytes: [UInt8], from sender: String, drops: inout RateLimitedLog) {
        let now = SystemClock.now()
        let outcome = store.handle(datagram: bytes, nowMs: now.wallMs)
        if let relay, outcome.accepted, let packet = try? SubscriptionPacket(decoding: bytes) {
            relay.relay(packet, nowMs: now.wallMs)
        }
        if let certificates {
            switch outcome {
            case .created(let node), .refreshed(let node): certificates.learn(from: node)
            default: break
            }
        }
        switch outcome {
        case .created(let node):
            logger.info("new subscription", metadata: ["key": "\(node.keyString)", "address": "\(node.addressString)",
                                                       "weight": "\(node.weight)", "signed": "\(node.signed)"])
        case .removed(let node):
            logger.info("unsubscribed", metadata: ["key": "\(node.keyString)", "address": "\(node.addressString)"])
        case .refreshed:
            break
        case .rejected(let error):
            drops.record(error.reason, now: now.mono, logger: logger, message: "subscription from \(sender): \(error)")
        }
    }
}

/// Stop flag shared between the unix receiver thread and the service.
private final class UnixReceiverState: Sendable {
    private let flag = Mutex(false)
    var isStopped: Bool { flag.withLock { $0 } }
    func stop() { flag.withLock { $0 = true } }
}
