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
    /// When the expiry sweep runs next (wall ms); `.max` while it plans. A change that brings an expiry before it
    /// (a new node, a drain, an ejection) wakes the sweeper: an idle table is not swept on a schedule.
    private let sweepAtMs = Atomic<UInt64>(0)
    private let sweepWake = WakeSignal()
    private let sweeperClaimed = Atomic<Bool>(false)
    private let toleranceMs: UInt64
    /// The longest the sweeper sleeps (the replay-window entries of signed subscriptions are cleaned then too).
    static let longestSweepWaitMs: UInt64 = 60_000

    public init(policy: SubscriptionTable.Policy, algorithm: SubscriptionTable.Algorithm, verifier: SubscriptionVerifier?, ejectMs: UInt64 = 3000) {
        table = Mutex(SubscriptionTable(policy: policy))
        toleranceMs = policy.toleranceMs
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
            noteExpiry(of: outcome)
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
        let outcome = table.withLock { $0.apply(packet, verification: .trusted, nowMs: nowMs) }
        noteExpiry(of: outcome)
        return outcome
    }

    /// A new node or a drain may expire before the sweep planned: wake the sweeper (a refresh never does).
    private func noteExpiry(of outcome: SubscriptionTable.Outcome) {
        switch outcome {
        case .created(let node): expires(atMs: node.lastCheckMs &+ toleranceMs &+ 1)
        case .removed(let node): if let until = node.drainingUntilMs { expires(atMs: until &+ 1) }
        case .refreshed, .rejected: break
        }
    }

    private func expires(atMs due: UInt64) {
        if due < sweepAtMs.load(ordering: .sequentiallyConsistent) { sweepWake.notify() }
    }

    /// Removes what expired at `nowMs` and sleeps until the next expiry (or a change that brings one earlier), at
    /// most `longestSweepWaitMs`; logs through `expired`. One sweeper per store (a second caller returns at once:
    /// the UDP and the unix subscription servers share a store). Returns when the task is cancelled.
    public func sweepExpired(clock nowMs: () -> UInt64, expired: ([SubscriptionTable.Node]) -> Void) async {
        guard !sweeperClaimed.exchange(true, ordering: .sequentiallyConsistent) else { return }
        defer { sweeperClaimed.store(false, ordering: .sequentiallyConsistent) }
        while !Task.isCancelled {
            let now = nowMs()
            let gone = expire(nowMs: now)
            if !gone.isEmpty { expired(gone) }
            let wait = planSweep(nowMs: now)
            await sweepWake.wait(timeout: .milliseconds(Int64(wait)))
        }
    }

    /// The wait (ms) until the next sweep, published as `sweepAtMs`. `.max` is published first, so a change made
    /// while the table is read wakes the sweeper instead of being missed.
    func planSweep(nowMs: UInt64) -> UInt64 {
        sweepAtMs.store(.max, ordering: .sequentiallyConsistent)
        var next = nowMs &+ Self.longestSweepWaitMs
        if let due = table.withLock({ $0.nextExpiryMs }) { next = min(next, due) }
        if let until = ejected.withLock({ $0.values.min() }) { next = min(next, until &+ 1) }
        next = max(next, nowMs &+ 1)
        sweepAtMs.store(next, ordering: .sequentiallyConsistent)
        return next - nowMs
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
        expires(atMs: nowMs + ejectMs + 1)
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
