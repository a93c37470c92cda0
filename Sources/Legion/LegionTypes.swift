/// A reading of a node's clocks, supplied by the shell (real clocks) or by the simulator (fake ones).
/// The state machines never read a clock themselves.
public struct LegionTime: Sendable, Equatable {
    /// Monotonic nanoseconds: only differences matter. Timing (heartbeats, expiry, leases) uses this.
    public var mono: UInt64
    /// Wall clock, milliseconds since the Unix epoch: goes on the wire (`unix`, `unix_ms`).
    public var wallMs: UInt64

    public init(mono: UInt64, wallMs: UInt64) {
        self.mono = mono
        self.wallMs = wallMs
    }

    public var unixSeconds: UInt64 { wallMs / 1000 }
}

/// Who this node is in its legion.
public struct LegionIdentity: Sendable, Equatable {
    public var legion: String
    public var name: String
    public var valor: UInt64
    public var uuid: LegionUUID
    public var pid: UInt64
    public var scroll: [UInt8]?

    public init(legion: String, name: String, valor: UInt64, uuid: LegionUUID, pid: UInt64, scroll: [UInt8]? = nil) {
        self.legion = legion
        self.name = name
        self.valor = valor
        self.uuid = uuid
        self.pid = pid
        self.scroll = scroll
    }
}

/// A remote member as the state machine knows it.
public struct LegionMemberInfo: Sendable, Equatable {
    public var name: String
    public var valor: UInt64
    public var uuid: LegionUUID
    public var pid: UInt64

    public init(name: String, valor: UInt64, uuid: LegionUUID, pid: UInt64) {
        self.name = name
        self.valor = valor
        self.uuid = uuid
        self.pid = pid
    }
}

public enum LegionLeaveReason: String, Sendable {
    /// Silent for longer than the tolerance / failure-detection timeout.
    case expired
    /// Announced its own death (`dead` key).
    case announcedDeath = "announced_death"
}

public enum LegionResignReason: String, Sendable {
    /// Native: the lease was about to run out without renewal from a quorum.
    case leaseExpiring = "lease_expiring"
    /// A better candidate has (or, preempting, is about to have) consensus.
    case superseded
    /// Compat: consensus still agrees but shrank below the quorum.
    case quorumLost = "quorum_lost"
    /// Native: a higher-valor member has been alive for the preempt delay; handing over.
    case preempted
    /// The node is shutting down.
    case shutdown
}

/// What the state machine asks its shell to do. The shell performs I/O in the given order.
public enum LegionDirective: Sendable, Equatable {
    /// Send this announce to every configured node.
    case send(LegionAnnounce)
    /// This node is now Lord: acquire the failover IP, run the `lord` hooks.
    /// `leaseUntil` is a monotonic deadline (nil in compat mode, which has no lease).
    case becomeLord(votes: Int, leaseUntil: UInt64?)
    /// Native: the lease now lasts until this monotonic deadline.
    case renewLease(until: UInt64)
    /// This node stops being Lord: release the failover IP, run the `unlord` hooks.
    case resignLord(LegionResignReason)
    case memberJoined(LegionMemberInfo)
    case memberLeft(LegionMemberInfo, LegionLeaveReason)
    case quorumGained(votes: Int)
    case quorumLost(votes: Int, needed: Int)
    /// First time this process saw quorum: run the `join` hooks (once per process lifetime).
    case joined
    /// A member's wall clock differs from ours by more than the warning threshold.
    case clockSkew(member: String, skewMs: Int64)
    /// The announce was dropped after decoding (wrong legion, stale, replayed, own packet).
    case dropped(LegionPacketError)
}

/// A point-in-time view for status pages, the CLI and tests.
public struct LegionStatus: Sendable, Equatable {
    public struct Member: Sendable, Equatable {
        public var info: LegionMemberInfo
        public var vote: LegionUUID
        public var lastSeenMsAgo: UInt64
        public var claimsLord: Bool
    }

    public var mode: LegionCodec.Mode
    public var identity: LegionIdentity
    public var isLord: Bool
    /// Wall-clock ms at which this node became Lord (0 if not Lord).
    public var lordSinceMs: UInt64
    /// The Lord this node currently recognises (may be itself), nil when none.
    public var lord: LegionMemberInfo?
    public var vote: LegionUUID
    public var votes: Int
    public var quorum: Int
    public var members: [Member]
    /// Remaining lease in ms (native Lord only).
    public var leaseRemainingMs: UInt64?
}
