import Logging
import Subscriptions
import Synchronization
import UwsgiWire

/// Cluster domains: subscriptions a vassal makes on this node's *cluster* subscription socket
/// are relayed, authenticated with the legion secret, to every legion member (and applied
/// here), with the address replaced by this node's internal router. So every node's router —
/// and hence whichever node becomes Lord — already knows every cluster backend, and balances
/// each cluster domain across the nodes hosting it. Entries of a member that leaves the legion
/// are dropped at once.
public final class ClusterRelay: Sendable {
    public let origin: String
    /// This node's internal router (`host:port`) as other nodes reach it.
    public let internalAddress: String
    let store: SubscriptionStore
    /// Subscriptions of this node's own vassals (re-sent when a member joins).
    let localStore: SubscriptionStore
    let logger: Logger
    private let outgoing: AsyncStream<[UInt8]>.Continuation
    public let outbox: AsyncStream<[UInt8]>
    /// Per origin member: the last relay sequence number, and every backend address it put in the table (its
    /// internal router, and the node services it announced under their own address) — all dropped when it leaves.
    private let state = Mutex<(seq: UInt64, lastSeq: [String: UInt64], addresses: [String: Set<[UInt8]>])>((0, [:], [:]))
    /// Node services announced under their own address (re-sent when a member joins).
    private let announced = Mutex<[String: SubscriptionPacket]>([:])

    public init(origin: String, internalAddress: String, store: SubscriptionStore, localStore: SubscriptionStore, logger: Logger) {
        self.localStore = localStore
        self.origin = origin
        self.internalAddress = internalAddress
        self.store = store
        self.logger = logger
        (outbox, outgoing) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(4096))
    }

    /// A local vassal (un)subscribed a cluster domain: relay it everywhere and apply it here.
    public func relay(_ packet: SubscriptionPacket, nowMs: UInt64) {
        // Other nodes know "this node serves KEY", not which vassal: an unsubscribe goes out only
        // when the last local vassal of the key is gone.
        if packet.command == .unsubscribe, localStore.hasExactKey(packet.key) { return }
        var rewritten = packet
        rewritten.address = Array(internalAddress.utf8)
        broadcast(rewritten, nowMs: nowMs)
    }

    /// A node service (not a vassal) announces itself under its own address, e.g. the node's API as
    /// `http://host:port` for `[api] domain`: applied here and on every member as is.
    public func announce(_ packet: SubscriptionPacket, nowMs: UInt64) {
        let id = packet.keyString + " " + packet.addressString
        announced.withLock { $0[id] = packet.command == .unsubscribe ? nil : packet }
        broadcast(packet, nowMs: nowMs)
    }

    private func broadcast(_ packet: SubscriptionPacket, nowMs: UInt64) {
        var rewritten = packet
        rewritten.signature = nil
        rewritten.unix = nil
        rewritten.notify = nil
        guard let datagram = try? rewritten.encode() else { return }
        let seq = state.withLock { s -> UInt64 in s.seq += 1; return s.seq }
        var vars = UwsgiVars()
        vars.append("origin", origin)
        vars.append("internal", internalAddress)
        vars.append("seq", number: seq)
        vars.append("unix_ms", number: nowMs)
        vars.append("sub", datagram)
        guard let payload = try? vars.encode() else { return }
        _ = store.applyTrusted(rewritten, nowMs: nowMs)
        outgoing.yield(payload)
    }

    /// A relay from a member, already authenticated and decrypted by the Legion transport.
    public func received(_ payload: [UInt8], nowMs: UInt64) {
        guard let vars = try? UwsgiVars(decoding: payload), let origin = vars.string("origin"), origin != self.origin,
              let seq = vars.number("seq"), let sent = vars.number("unix_ms"), let peerInternal = vars["internal"],
              let datagram = vars["sub"] else {
            logger.warning("dropped a malformed cluster relay")
            return
        }
        let skew = sent > nowMs ? sent - nowMs : nowMs - sent
        guard skew < 30_000 else {
            logger.warning("dropped a stale cluster relay; check NTP", metadata: ["origin": "\(origin)", "skew_ms": "\(skew)"])
            return
        }
        let fresh = state.withLock { s -> Bool in
            // A restarted member starts again at 1: accept a lower seq only if it is a new run.
            if let last = s.lastSeq[origin], seq <= last, seq > 64 { return false }
            s.lastSeq[origin] = seq
            s.addresses[origin, default: []].insert(peerInternal)
            return true
        }
        guard fresh, let packet = try? SubscriptionPacket(decoding: datagram) else { return }
        if packet.command != .unsubscribe {
            state.withLock { $0.addresses[origin, default: []].insert(packet.address) }
        }
        switch store.applyTrusted(packet, nowMs: nowMs) {
        case .created(let node):
            logger.info("cluster domain backend added", metadata: ["key": "\(node.keyString)", "via": "\(node.addressString)", "origin": "\(origin)"])
        case .removed(let node):
            logger.info("cluster domain backend removed", metadata: ["key": "\(node.keyString)", "via": "\(node.addressString)", "origin": "\(origin)"])
        default:
            break
        }
    }

    /// A member joined (or came back): send it every local cluster subscription now rather than
    /// at the vassals' next resubscription, so a new Lord has them at once.
    public func memberJoined(_ name: String) {
        let now = SystemClock.wallMillis()
        var seen = Set<[UInt8]>()
        for node in localStore.snapshot.nodes where seen.insert(node.key).inserted {
            var packet = SubscriptionPacket(command: .subscribe, key: node.keyString, address: internalAddress)
            packet.modifier1 = node.modifier1
            packet.modifier2 = node.modifier2
            packet.weight = node.weight
            relay(packet, nowMs: now)
        }
        for packet in announced.withLock({ Array($0.values) }) { broadcast(packet, nowMs: now) }
    }

    /// A legion member left (expired or announced death): its cluster backends go now, and the node services it
    /// announced (a stopping node leaves the legion before its services say goodbye, so their unsubscribes may
    /// never be sent).
    public func memberLeft(_ name: String) {
        guard let addresses = state.withLock({ $0.addresses.removeValue(forKey: name) }) else { return }
        var gone: [SubscriptionTable.Node] = []
        for address in addresses { gone += store.removeAll(address: address) }
        if !gone.isEmpty {
            logger.notice("member left; removed its cluster-domain backends", metadata: ["member": "\(name)", "count": "\(gone.count)"])
        }
    }
}
