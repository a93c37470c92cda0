/// The router's subscription table: a pure value driven by the caller's clock (milliseconds).
///
/// uWSGI 2.0 semantics (spec §3.5–3.7, §3.9, §4.3) — exact-key slots, nodes kept in join order,
/// refresh without changing modifiers, weight 0 stored as 1, expiry after `toleranceMs` of
/// silence, uWSGI's weighted round robin — with its holes closed (spec §3.8):
/// * signed packets must carry a `unix` strictly newer than the last one accepted for that
///   (key, address), remembered even after the node is gone, so captured packets cannot be
///   replayed and a signed subscribe whose header byte was flipped (same `unix`) is no unsubscribe;
/// * signed packets, unsubscribes included, must be fresh (`signatureWindowSeconds` either way);
/// * keys longer than 255 bytes are refused by the decoder (uWSGI crashes on them);
/// * the table is bounded (keys, nodes per key).
public struct SubscriptionTable: Sendable {
    public struct Policy: Sendable, Equatable {
        /// A node silent for longer than this is removed (uWSGI: 17 s; clients resend every 10 s).
        public var toleranceMs: UInt64 = 17_000
        /// Refuse unsigned packets (uWSGI: `--subscriptions-sign-check`).
        public var requireSignature = false
        /// How far a signed packet's `unix` may lie from our clock, either way.
        public var signatureWindowSeconds: UInt64 = 60
        public var maxKeys = 65_536
        public var maxNodesPerKey = 256
        /// Try parent domains (`.example.com`) like uWSGI's `--subscription-dotsplit`.
        public var dotsplit = true
        /// When the *last* node of a key unsubscribes, keep it this long as a fallback (used only while no
        /// other node serves the key) instead of dropping the key. A vassal reloading with
        /// `unsubscribe-on-graceful-reload` keeps its socket (requests wait in its backlog) and subscribes again:
        /// alone, it stalls briefly instead of answering 404; with siblings, they take its requests. A vassal
        /// that really stopped refuses connections and is ejected as any dead node. 0: uWSGI's immediate removal.
        public var drainLastMs: UInt64 = 0
        public init() {}
    }

    /// The result of checking a packet's signature, done by the caller (see `SubscriptionSigning`).
    public enum Verification: Sendable, Equatable {
        case unsigned
        case valid
        case invalid
        case noKey
        /// Relayed by a legion member over the authenticated side channel (already verified at
        /// its origin): accepted without signature or freshness checks.
        case trusted
    }

    public struct NodeID: Hashable, Sendable {
        public var key: [UInt8]
        public var address: [UInt8]
    }

    public struct Node: Sendable, Equatable {
        public var key: [UInt8]
        public var address: [UInt8]
        public var modifier1: UInt8
        public var modifier2: UInt8
        public var cores: UInt64
        public var load: UInt64
        public var weight: UInt64
        public var sniKey: [UInt8]?
        public var sniCrt: [UInt8]?
        public var sniCA: [UInt8]?
        public var notify: [UInt8]?
        public var backup: UInt64
        public var signed: Bool
        public var createdMs: UInt64
        public var lastCheckMs: UInt64
        public var requests: UInt64 = 0
        public var references: Int = 0
        public var failures: UInt64 = 0
        /// Set when this last node of its key unsubscribed: a fallback until then (see `Policy.drainLastMs`).
        public var drainingUntilMs: UInt64?
        var wrrCredit: UInt64 = 0

        public var id: NodeID { NodeID(key: key, address: address) }
        public var keyString: String { String(decoding: key, as: UTF8.self) }
        public var addressString: String { String(decoding: address, as: UTF8.self) }
    }

    public enum Outcome: Sendable, Equatable {
        case created(Node)
        case refreshed(Node)
        case removed(Node)
        case rejected(SubscriptionError)

        public var accepted: Bool {
            if case .rejected = self { return false }
            return true
        }
    }

    public enum Algorithm: String, Sendable, CaseIterable {
        /// uWSGI's weighted round robin (`wrr`), sequence-compatible.
        case weightedRoundRobin = "wrr"
        /// Fewest in-flight requests, ties broken round-robin.
        case leastConnections = "lc"
    }

    public let policy: Policy
    private var slots: [[UInt8]: [Node]] = [:]
    private var lastUnix: [NodeID: (unix: UInt64, untilMs: UInt64)] = [:]
    private var rotation: [[UInt8]: Int] = [:]

    public init(policy: Policy = Policy()) { self.policy = policy }

    public var keyCount: Int { slots.count }
    public var nodeCount: Int { slots.values.reduce(0) { $0 + $1.count } }

    public func nodes(forKey key: String) -> [Node] { slots[Array(key.utf8)] ?? [] }

    /// Every node, keys sorted, nodes in join order.
    public var allNodes: [Node] {
        slots.keys.sorted { $0.lexicographicallyPrecedes($1) }.flatMap { slots[$0] ?? [] }
    }

    // MARK: subscribe / unsubscribe

    public mutating func apply(_ packet: SubscriptionPacket, verification: Verification, nowMs: UInt64) -> Outcome {
        let id = NodeID(key: packet.key, address: packet.address)
        switch verification {
        case .invalid: return .rejected(.badSignature)
        case .noKey where policy.requireSignature: return .rejected(.noPublicKey(packet.keyString))
        case .unsigned where policy.requireSignature: return .rejected(.unsigned)
        default: break
        }
        let signed = verification == .valid
        if signed {
            guard let unix = packet.unix else { return .rejected(.malformed("signed packet without unix")) }
            let now = nowMs / 1000
            if unix + policy.signatureWindowSeconds < now { return .rejected(.stale(unix: unix, now: now)) }
            if unix > now + policy.signatureWindowSeconds { return .rejected(.future(unix: unix, now: now)) }
            if let last = lastUnix[id], unix <= last.unix { return .rejected(.replayed(unix: unix, last: last.unix)) }
        }
        let outcome: Outcome
        switch packet.command {
        case .subscribe: outcome = subscribe(packet, signed: signed, nowMs: nowMs)
        case .unsubscribe: outcome = unsubscribe(id, nowMs: nowMs)
        }
        if signed, let unix = packet.unix, outcome.accepted {
            // Remember beyond the node's life, for as long as the packet could still be fresh.
            lastUnix[id] = (unix, nowMs + 2 * policy.signatureWindowSeconds * 1000)
        }
        return outcome
    }

    private mutating func subscribe(_ p: SubscriptionPacket, signed: Bool, nowMs: UInt64) -> Outcome {
        var nodes = slots[p.key] ?? []
        if let i = nodes.firstIndex(where: { $0.address == p.address }) {
            // Refresh: liveness, load and weight; modifiers and notify stay as created (uWSGI).
            nodes[i].lastCheckMs = nowMs
            nodes[i].drainingUntilMs = nil
            nodes[i].cores = p.cores
            nodes[i].load = p.load
            nodes[i].weight = max(p.weight, 1)
            nodes[i].signed = nodes[i].signed || signed
            if p.sniKey != nil { nodes[i].sniKey = p.sniKey }
            if p.sniCrt != nil { nodes[i].sniCrt = p.sniCrt }
            if p.sniCA != nil { nodes[i].sniCA = p.sniCA }
            slots[p.key] = nodes
            return .refreshed(nodes[i])
        }
        if nodes.isEmpty, slots.count >= policy.maxKeys { return .rejected(.tableFull("\(policy.maxKeys) keys")) }
        guard nodes.count < policy.maxNodesPerKey else { return .rejected(.tableFull("\(policy.maxNodesPerKey) nodes for one key")) }
        let node = Node(key: p.key, address: p.address, modifier1: p.modifier1, modifier2: p.modifier2, cores: p.cores,
                        load: p.load, weight: max(p.weight, 1), sniKey: p.sniKey, sniCrt: p.sniCrt, sniCA: p.sniCA,
                        notify: p.notify, backup: p.backup ?? 0, signed: signed, createdMs: nowMs, lastCheckMs: nowMs)
        nodes.append(node)
        slots[p.key] = nodes
        return .created(node)
    }

    private mutating func unsubscribe(_ id: NodeID, nowMs: UInt64? = nil) -> Outcome {
        guard var nodes = slots[id.key], let i = nodes.firstIndex(where: { $0.address == id.address }) else {
            return .rejected(.unknownNode)
        }
        if let nowMs, policy.drainLastMs > 0, nodes.allSatisfy({ $0.address == id.address || $0.drainingUntilMs != nil }) {
            // The last serving node: keep it as a fallback for a while (a graceful reload), see Policy.drainLastMs.
            if nodes[i].drainingUntilMs == nil { nodes[i].drainingUntilMs = nowMs + policy.drainLastMs }
            slots[id.key] = nodes
            return .removed(nodes[i])
        }
        let gone = nodes.remove(at: i)
        slots[id.key] = nodes.isEmpty ? nil : nodes
        if nodes.isEmpty { rotation[id.key] = nil }
        return .removed(gone)
    }

    /// Removes every node with this address (all keys), e.g. a dead member's internal router.
    @discardableResult
    public mutating func removeAll(address: [UInt8]) -> [Node] {
        var gone: [Node] = []
        for key in Array(slots.keys) {
            guard let nodes = slots[key] else { continue }
            gone += nodes.filter { $0.address == address }
            let keep = nodes.filter { $0.address != address }
            slots[key] = keep.isEmpty ? nil : keep
            if keep.isEmpty { rotation[key] = nil }
        }
        return gone
    }

    /// Removes nodes silent for longer than the tolerance; returns them.
    public mutating func expire(nowMs: UInt64) -> [Node] {
        var gone: [Node] = []
        for key in Array(slots.keys) {
            guard let nodes = slots[key] else { continue }
            func alive(_ n: Node) -> Bool { nowMs <= n.lastCheckMs + policy.toleranceMs && nowMs <= (n.drainingUntilMs ?? .max) }
            let (keep, drop) = (nodes.filter(alive), nodes.filter { !alive($0) })
            gone += drop
            slots[key] = keep.isEmpty ? nil : keep
            if keep.isEmpty { rotation[key] = nil }
        }
        lastUnix = lastUnix.filter { $0.value.untilMs >= nowMs }
        return gone
    }

    /// The earliest time (ms) at which `expire` would remove a node — past its tolerance, or past its drain —
    /// nil when the table is empty. Between now and then a sweep finds nothing; only a new node or a drain can
    /// bring it earlier (a refresh only moves a node's expiry later).
    public var nextExpiryMs: UInt64? {
        var next: UInt64?
        for nodes in slots.values {
            for n in nodes {
                let due = min(n.lastCheckMs &+ policy.toleranceMs, n.drainingUntilMs ?? .max) &+ 1
                next = min(next ?? due, due)
            }
        }
        return next
    }

    /// Removes one node (e.g. after connection failures); returns it if present.
    @discardableResult
    public mutating func remove(key: [UInt8], address: [UInt8]) -> Node? {
        if case .removed(let node) = unsubscribe(NodeID(key: key, address: address)) { return node }
        return nil
    }

    // MARK: routing

    /// The slot key that serves `host`: the exact key, then (with dotsplit) parent wildcards
    /// `.b.example.com`, `.example.com`, … — at most 5 lookups in all, as uWSGI.
    public func matchKey(for host: [UInt8]) -> [UInt8]? {
        if let key = match(host) { return key }
        // nginx's server_name behaviour: `example.com:8080` (a client that wrote the port, default or not) finds
        // `example.com` when no key has that port. Keys with a port (uWSGI's `example.com:8443`) still win.
        if let bare = Self.strippingPort(host) { return match(bare) }
        return nil
    }

    /// `host` without a trailing `:digits` port (`[v6]:port` too); nil when it has none.
    static func strippingPort(_ host: [UInt8]) -> [UInt8]? {
        guard let colon = host.lastIndex(of: 0x3a), colon > 0, colon < host.count - 1,
              host[(colon + 1)...].allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
        if host.first == 0x5b {  // '[v6]:port'
            return host[colon - 1] == 0x5d ? Array(host[..<colon]) : nil
        }
        return host[..<colon].contains(0x3a) ? nil : Array(host[..<colon])  // a bare IPv6 address has no port
    }

    private func match(_ host: [UInt8]) -> [UInt8]? {
        if slots[host] != nil { return host }
        guard policy.dotsplit else { return nil }
        var candidate = host
        for _ in 0..<4 {
            guard let dot = candidate.dropFirst().firstIndex(of: 0x2e) else { return nil }
            candidate = Array(candidate[dot...])
            if slots[candidate] != nil { return candidate }
        }
        return nil
    }

    /// Picks a backend for `host`, counting the request; `nil` when no live node serves it.
    public mutating func pick(host: [UInt8], algorithm: Algorithm, nowMs: UInt64, excluding: Set<[UInt8]> = []) -> Node? {
        guard let key = matchKey(for: host) else { return nil }
        let tolerance = policy.toleranceMs
        var turn = 0
        if algorithm == .leastConnections {
            turn = rotation[key, default: 0]
            rotation[key] = turn &+ 1
        }
        guard slots[key] != nil else { return nil }
        // Mutate the slot in place (no copy of the node list on the hot path).
        return SubscriptionTable.pick(in: &slots[key, default: []], algorithm: algorithm, nowMs: nowMs, tolerance: tolerance,
                                      excluding: excluding, turn: turn)
    }

    private static func pick(in nodes: inout [Node], algorithm: Algorithm, nowMs: UInt64, tolerance: UInt64,
                             excluding: Set<[UInt8]>, turn: Int) -> Node? {
        func usable(_ i: Int) -> Bool {
            nowMs <= nodes[i].lastCheckMs + tolerance && (excluding.isEmpty || !excluding.contains(nodes[i].address))
        }
        // Draining nodes (the last one unsubscribed, reloading) serve only while nothing else can, and not past their time.
        let onlyDraining = !nodes.indices.contains { usable($0) && nodes[$0].drainingUntilMs == nil }
        func live(_ i: Int) -> Bool {
            guard usable(i) else { return false }
            guard let until = nodes[i].drainingUntilMs else { return true }
            return onlyDraining && nowMs <= until
        }
        var chosen: Int?
        switch algorithm {
        case .weightedRoundRobin:
            var lastLive: Int?
            var minWeight = UInt64.max
            for i in nodes.indices where live(i) {
                if chosen == nil, nodes[i].wrrCredit > 0 { chosen = i }
                lastLive = i
                minWeight = min(minWeight, nodes[i].weight)
            }
            guard let last = lastLive else { return nil }
            if chosen == nil {
                for i in nodes.indices where live(i) { nodes[i].wrrCredit = nodes[i].weight / max(minWeight, 1) }
                chosen = last
            }
            if let c = chosen, nodes[c].wrrCredit > 0 { nodes[c].wrrCredit -= 1 }
        case .leastConnections:
            var fewest = Int.max
            for i in nodes.indices where live(i) { fewest = min(fewest, nodes[i].references) }
            guard fewest != Int.max else { return nil }
            let tied = nodes.indices.filter { live($0) && nodes[$0].references == fewest }
            chosen = tied[turn % tied.count]
        }
        guard let c = chosen else { return nil }
        nodes[c].requests += 1
        nodes[c].references += 1
        return nodes[c]
    }

    /// Undoes a `pick` that was not used (the fast path handing the request to the general router, which picks
    /// again): the node gets its round-robin turn back, so the hand-off does not skip it.
    public mutating func unpick(key: [UInt8], address: [UInt8]) {
        guard let i = slots[key]?.firstIndex(where: { $0.address == address }), var node = slots[key]?[i] else { return }
        if node.references > 0 { node.references -= 1 }
        if node.requests > 0 { node.requests -= 1 }
        node.wrrCredit += 1
        slots[key]?[i] = node
    }

    /// A request routed by `pick` finished (success or not).
    public mutating func release(key: [UInt8], address: [UInt8]) {
        guard let i = slots[key]?.firstIndex(where: { $0.address == address }) else { return }
        if let current = slots[key]?[i].references, current > 0 { slots[key]?[i].references = current - 1 }
    }
}
