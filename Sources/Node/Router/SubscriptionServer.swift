import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Subscriptions

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

    public init(bind: NodeConfig.Endpoint, store: SubscriptionStore, logger: Logger, relay: ClusterRelay? = nil,
                certificates: CertificateStore? = nil) {
        self.certificates = certificates
        self.bind = bind
        self.store = store
        self.logger = logger
        self.relay = relay
    }

    public func run() async throws {
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
        let logger = self.logger
        let relay = self.relay
        let certificates = self.certificates
        try await channel.executeThenClose { inbound, _ in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    while true {
                        try await Task.sleep(for: .seconds(1))
                        for node in store.expire(nowMs: SystemClock.wallMillis()) {
                            logger.info("subscription expired", metadata: ["key": "\(node.keyString)", "address": "\(node.addressString)"])
                        }
                    }
                }
                group.addTask {
                    var drops = RateLimitedLog()
                    for try await envelope in inbound {
                        let now = SystemClock.now()
                        let bytes = Array(buffer: envelope.data)
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
                            drops.record(error.reason, now: now.mono, logger: logger,
                                         message: "subscription from \(envelope.remoteAddress): \(error)")
                        }
                    }
                }
                try? await gracefulShutdown()
                group.cancelAll()
            }
        }
    }
}
