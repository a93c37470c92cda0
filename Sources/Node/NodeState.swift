import Legion
import Synchronization

/// What a node publishes about itself for the API, the CLI and the VIP's `/.legion/lord`.
/// Written by the protocol loop, read from any thread.
public final class NodeState: Sendable {
    public struct Snapshot: Sendable {
        public var nodeName: String
        public var legionName: String
        public var pid: Int32
        public var startedAtMs: UInt64
        public var legion: LegionStatus?
        public var vip: String?
        public var vipPhase: String = "released"
        public var packetsIn = 0
        public var packetsOut = 0
        public var drops: [String: Int] = [:]
        public var lordChanges = 0
        public var maxClockSkewMs: Int64 = 0
        public var endpoints: [String: String] = [:]
        public var store: StoreStatus?
        public var hosting: HostingStatus?

        public init(nodeName: String, legionName: String, pid: Int32, startedAtMs: UInt64, vip: String?, endpoints: [String: String]) {
            self.nodeName = nodeName
            self.legionName = legionName
            self.pid = pid
            self.startedAtMs = startedAtMs
            self.vip = vip
            self.endpoints = endpoints
        }
    }

    /// What the node knows of the replicated store.
    public struct StoreStatus: Sendable {
        public var id: UInt64
        public var address: String
        public var role: String = "unknown"
        public var leader: String?
        public var isLeader = false
        /// The last change-log sequence number this node applied to its local snapshot.
        public var appliedSeq: Int64 = -1
        public var schemaVersion = 0
        public var reachable = false
        public var lastSyncMs: UInt64 = 0
        public var lastError: String?
        public var snapshotPath: String
        public var containers = 0
        public var domains = 0

        public init(id: UInt64, address: String, snapshotPath: String) {
            self.id = id
            self.address = address
            self.snapshotPath = snapshotPath
        }
    }

    /// What the node hosts: the store's containers placed here and their sub-Emperors.
    public struct HostingStatus: Sendable {
        public var containersDir: String
        /// Containers placed on this node by the last desired state applied.
        public var containers = 0
        /// Their sub-Emperors running now.
        public var subEmperors = 0
        /// The desired-state version (change-log seq) last applied.
        public var appliedVersion: Int64 = -1
        public var lastApplyMs: UInt64 = 0
        /// Storage use of each container whose home is its own image (uid → bytes used, bytes in all).
        public var storage: [Int64: (used: Int64, total: Int64)] = [:]
        /// Containers whose sub-Emperor runs now (by uid).
        public var running: [Int64] = []

        public init(containersDir: String) { self.containersDir = containersDir }
    }

    private let mutex: Mutex<Snapshot>

    public init(_ initial: Snapshot) { mutex = Mutex(initial) }

    public var snapshot: Snapshot { mutex.withLock { $0 } }

    public func update(_ body: (inout Snapshot) -> Void) {
        mutex.withLock { body(&$0) }
    }

    /// JSON naming the Lord as this node knows it (`GET /.legion/lord`).
    public func lordJSON() -> String {
        let s = snapshot
        guard let legion = s.legion, let lord = legion.lord else {
            return JSONValue.object([("lord", .null), ("node", .string(s.nodeName))]).serialized
        }
        let isSelf = legion.isLord
        return JSONValue.object([
            ("name", .string(lord.name)), ("uuid", .string(lord.uuid.description)), ("valor", .uint(lord.valor)),
            ("since", isSelf ? .string(SystemClock.iso8601(wallMs: legion.lordSinceMs)) : .null),
            ("since_ms", isSelf ? .uint(legion.lordSinceMs) : .null),
            ("legion", .string(s.legionName)), ("answered_by", .string(s.nodeName)),
            ("lease_ms", legion.leaseRemainingMs.map { .uint($0) } ?? .null),
        ]).serialized
    }

    /// The node's full status document (`GET /status`, `legion cluster status`).
    public func statusJSON() -> JSONValue {
        let s = snapshot
        var legionPairs: [(String, JSONValue)] = []
        if let l = s.legion {
            legionPairs = [
                ("mode", .string(l.mode.rawValue)), ("uuid", .string(l.identity.uuid.description)),
                ("valor", .uint(l.identity.valor)), ("lord", .bool(l.isLord)),
                ("lord_name", l.lord.map { .string($0.name) } ?? .null),
                ("lord_since_ms", l.isLord ? .uint(l.lordSinceMs) : .null),
                ("vote", .string(l.vote.description)), ("votes", .int(Int64(l.votes))), ("quorum", .int(Int64(l.quorum))),
                ("lease_ms", l.leaseRemainingMs.map { .uint($0) } ?? .null),
                ("members", .array(l.members.map { m in
                    .object([
                        ("name", .string(m.info.name)), ("valor", .uint(m.info.valor)), ("uuid", .string(m.info.uuid.description)),
                        ("pid", .uint(m.info.pid)), ("last_seen_ms_ago", .uint(m.lastSeenMsAgo)), ("claims_lord", .bool(m.claimsLord)),
                        ("vote", .string(m.vote.description)),
                    ])
                })),
            ]
        }
        return .object([
            ("name", .string(s.nodeName)), ("legion_name", .string(s.legionName)), ("pid", .int(Int64(s.pid))),
            ("started_ms", .uint(s.startedAtMs)), ("lord", .bool(s.legion?.isLord ?? false)),
            ("valor", .uint(s.legion?.identity.valor ?? 0)),
            ("vip", s.vip.map { .string($0) } ?? .null), ("vip_phase", .string(s.vipPhase)),
            ("legion", .object(legionPairs)),
            ("counters", .object([
                ("packets_in", .int(Int64(s.packetsIn))), ("packets_out", .int(Int64(s.packetsOut))),
                ("lord_changes", .int(Int64(s.lordChanges))), ("max_clock_skew_ms", .int(s.maxClockSkewMs)),
                ("drops", .object(s.drops.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
            ])),
            ("endpoints", .object(s.endpoints.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })),
            ("store", s.store.map { st in
                .object([
                    ("id", .uint(st.id)), ("address", .string(st.address)), ("role", .string(st.role)),
                    ("leader", st.leader.map { .string($0) } ?? .null), ("is_leader", .bool(st.isLeader)),
                    ("applied_seq", .int(st.appliedSeq)), ("schema_version", .int(Int64(st.schemaVersion))),
                    ("reachable", .bool(st.reachable)), ("last_sync_ms", .uint(st.lastSyncMs)),
                    ("last_error", st.lastError.map { .string($0) } ?? .null), ("snapshot", .string(st.snapshotPath)),
                    ("containers", .int(Int64(st.containers))), ("domains", .int(Int64(st.domains))),
                ])
            } ?? .null),
            ("hosting", s.hosting.map { h in
                .object([
                    ("containers_dir", .string(h.containersDir)), ("containers", .int(Int64(h.containers))),
                    ("sub_emperors", .int(Int64(h.subEmperors))), ("applied_version", .int(h.appliedVersion)),
                    ("last_apply_ms", .uint(h.lastApplyMs)), ("running", .array(h.running.map { .int($0) })),
                    ("storage", .object(h.storage.keys.sorted().map { uid in
                        ("\(uid)", .object([("used_bytes", .int(h.storage[uid]?.used ?? 0)), ("total_bytes", .int(h.storage[uid]?.total ?? 0))]))
                    })),
                ])
            } ?? .null),
        ])
    }
}
