import Logging
import Subscriptions
import Synchronization

/// The node's live subscription table, shared by the subscription server (writes) and the
/// router's event loops (reads). One lock, held only for pure table operations.
public final class SubscriptionStore: Sendable {
    public struct Stats: Sendable {
        public var accepted = 0
        public var rejected: [String: Int] = [:]
        /// Requests and response bytes per subscribed key ("-": requests no key took, e.g. 404s).
        public var hits: [String: Int] = [:]
        public var bytes: [String: Int] = [:]
        /// Connections the fast path handed to the general router.
        public var handOffs = 0
    }

    public let algorithm: SubscriptionTable.Algorithm
    public let verifier: SubscriptionVerifier?
    private let table: Mutex<SubscriptionTable>
    private let ejected = Mutex<[String: UInt64]>([:])
    /// How many entries `ejected` holds, read without its lock on every pick (usually 0).
    private let ejectedCount = Atomic<Int>(0)
    private let stats = Mutex(Stats())
    /// How long a backend that refused a connection is skipped.
    public let ejectMs: UInt64

    public init(policy: SubscriptionTable.Policy, algorithm: SubscriptionTable.Algorithm, verifier: SubscriptionVerifier?, ejectMs: UInt64 = 3000) {
        table = Mutex(SubscriptionTable(policy: policy))
        self.algorithm = algorithm
        self.verifier = verifier
        self.ejectMs = ejectMs
    }

    /// Decodes, verifies and applies one datagram.
    public func handle(datagram: [UInt8], nowMs: UInt64) -> SubscriptionTable.Outcome {
        let outcome: SubscriptionTable.Outcome
        do {
            let packet = try SubscriptionPacket(decoding: datagram)
            let verification = verifier?.verify(packet) ?? (packet.isSigned ? .noKey : .unsigned)
            outcome = table.withLock { $0.apply(packet, verification: verification, nowMs: nowMs) }
        } catch {
            outcome = .rejected(error)
        }
        stats.withLock { s in
            if case .rejected(let e) = outcome { s.rejected[e.reason, default: 0] += 1 } else { s.accepted += 1 }
        }
        return outcome
    }

    /// Applies a packet relayed by a legion member (authenticated by the legion secret).
    public func applyTrusted(_ packet: SubscriptionPacket, nowMs: UInt64) -> SubscriptionTable.Outcome {
        table.withLock { $0.apply(packet, verification: .trusted, nowMs: nowMs) }
    }

    public func removeAll(address: [UInt8]) -> [SubscriptionTable.Node] {
        table.withLock { $0.removeAll(address: address) }
    }

    public func expire(nowMs: UInt64) -> [SubscriptionTable.Node] {
        ejected.withLock {
            $0 = $0.filter { $0.value > nowMs }
            ejectedCount.store($0.count, ordering: .relaxed)
        }
        return table.withLock { $0.expire(nowMs: nowMs) }
    }

    public func hasKey(for host: [UInt8]) -> Bool { table.withLock { $0.matchKey(for: host) != nil } }

    /// True when `key` itself (no wildcard matching) has a node.
    public func hasExactKey(_ key: [UInt8]) -> Bool {
        table.withLock { $0.nodes(forKey: String(decoding: key, as: UTF8.self)).contains { $0.drainingUntilMs == nil } }
    }

    public func pick(host: [UInt8], nowMs: UInt64, excluding: Set<[UInt8]>) -> SubscriptionTable.Node? {
        let skip = ejectedCount.load(ordering: .relaxed) == 0 ? [] : ejected.withLock { e -> Set<[UInt8]> in
            e.isEmpty ? [] : Set(e.filter { $0.value > nowMs }.keys.map { Array($0.utf8) })
        }
        let exclude = skip.isEmpty ? excluding : excluding.union(skip)
        return table.withLock { $0.pick(host: host, algorithm: algorithm, nowMs: nowMs, excluding: exclude) }
    }

    /// Gives back a pick that was not used (see `SubscriptionTable.unpick`).
    public func unpick(_ node: SubscriptionTable.Node) {
        table.withLock { $0.unpick(key: node.key, address: node.address) }
    }

    public func release(_ node: SubscriptionTable.Node) {
        table.withLock { $0.release(key: node.key, address: node.address) }
    }

    /// A backend refused or timed out: skip it for `ejectMs` (its next subscribe does not revive it early).
    public func eject(_ node: SubscriptionTable.Node, nowMs: UInt64) {
        ejected.withLock {
            $0[node.addressString] = nowMs + ejectMs
            ejectedCount.store($0.count, ordering: .relaxed)
        }
    }

    /// Counts a finished request under the key that served it (`nil`: no key, counted under "-").
    public func count(key: String?, bytes: Int) {
        let name = key ?? "-"
        stats.withLock { s in
            if s.hits.count < 10_000 || s.hits[name] != nil {
                s.hits[name, default: 0] += 1
                s.bytes[name, default: 0] += bytes
            }
        }
    }

    /// Adds counts gathered elsewhere (the fast path's loops batch theirs).
    public func count(batch: [String: (hits: Int, bytes: Int)]) {
        guard !batch.isEmpty else { return }
        stats.withLock { s in
            for (name, c) in batch where s.hits.count < 10_000 || s.hits[name] != nil {
                s.hits[name, default: 0] += c.hits
                s.bytes[name, default: 0] += c.bytes
            }
        }
    }

    public func countHandOff() {
        stats.withLock { $0.handOffs += 1 }
    }

    public var snapshot: (nodes: [SubscriptionTable.Node], stats: Stats) {
        (table.withLock { $0.allNodes }, stats.withLock { $0 })
    }
}
