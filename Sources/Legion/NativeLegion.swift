/// legion's own mode: uWSGI's packet layout, with lease-fenced lordship (DESIGN.md, "lease fencing").
///
/// Rules, each enforced below and checked by the simulator:
/// * **Votes are promises.** A node votes by announcing `lord_uuid = X, ack = s` where `s` is the
///   latest sequence number it received from X. Having sent that, it votes for nobody else until
///   `electionTimeout` has passed since it received `s` (measured on its own clock), unless X
///   explicitly releases it (an announce from X, newer than `s`, that votes for someone else and
///   claims no lease).
/// * **Leases.** X is Lord only while a quorum (X included) votes for it; its lease runs from the
///   time X *sent* the acknowledged announce (the quorum-th latest such time) for `leaseDuration`,
///   which is shorter than the election timeout by the allowed clock-rate drift and a margin. X
///   resigns `leaseGuard` before the lease ends, so the failover IP is released before anyone else
///   can be elected.
/// * **Candidacies are fenced.** X counts only acks of announces sent since it last started or
///   stopped voting for itself, so a late vote can never revive a promise the voter considered
///   released, nor count an ack given to X before X was a candidate.
/// * **Restart amnesia.** A new process (new uuid) casts no vote during its first
///   `electionTimeout`, since its previous incarnation may still be bound by a promise.
/// * **Viability.** Every announce says how many members the sender hears (`heard`). A node is a
///   candidate only while it votes for itself *and* hears a quorum; members vote for the best
///   viable candidate, so a node that can send but not receive (one-way partition) is passed over
///   instead of blocking the election as it does in uWSGI.
/// * **Stickiness.** Members vote for a live, lease-claiming Lord before a better candidate; with
///   `preempt` a better member takes over only after it has backed the current Lord for
///   `preemptDelay` (so a flapping node cannot cause repeated failovers).
public struct NativeLegion: Sendable {
    public struct Timing: Sendable, Equatable {
        public var heartbeatMs: UInt64 = 50
        public var electionTimeoutMs: UInt64 = 250
        /// Bound on clock-rate difference between any node's clock and real time (0.02 = 2 %).
        public var maxDrift: Double = 0.02
        public var leaseGuardMs: UInt64 = 25
        public var preempt = true
        public var preemptDelayMs: UInt64 = 2000
        public var skewWarningMs: UInt64 = 500
        public var skewToleranceMs: UInt64 = 30_000

        public init() {}

        /// The lease length on the Lord's clock: shorter than the election timeout as seen by the
        /// slowest follower clock, with a 5 % margin for scheduling.
        public var leaseDurationNs: UInt64 {
            let e = Double(electionTimeoutMs) * 1_000_000
            return UInt64(e * (1 - maxDrift) / (1 + maxDrift) * 0.95)
        }

        public func validate() throws(LegionConfigError) {
            guard heartbeatMs >= 5 else {
                throw .invalid(key: "legion.timing.heartbeat_ms", problem: "must be at least 5 ms")
            }
            guard electionTimeoutMs >= 3 * heartbeatMs else {
                throw .invalid(key: "legion.timing.election_timeout_ms", problem: "must be at least 3 × heartbeat_ms (\(3 * heartbeatMs) ms) so a lost heartbeat does not cause a failover")
            }
            guard maxDrift >= 0, maxDrift < 0.2 else {
                throw .invalid(key: "legion.timing.max_drift", problem: "must be in [0, 0.2), a fraction such as 0.02")
            }
            guard leaseGuardMs * 1_000_000 + heartbeatMs * 1_000_000 < leaseDurationNs else {
                throw .invalid(key: "legion.timing.lease_guard_ms", problem: "lease_guard_ms + heartbeat_ms must be shorter than the lease (\(leaseDurationNs / 1_000_000) ms); raise election_timeout_ms")
            }
        }
    }

    struct Member: Sendable {
        var info: LegionMemberInfo
        var lastHeard: UInt64
        var lastHeardMs: UInt64
        var lastSeq: UInt64
        var vote: LegionUUID
        var ack: UInt64?
        var claimsLease: Bool
        var heard: UInt64
        var skewWarnedAt: UInt64?
    }

    public let identity: LegionIdentity
    public let quorum: Int
    public let timing: Timing

    private let E: UInt64
    private let H: UInt64
    private let D: UInt64
    private let G: UInt64
    private let legionBytes: [UInt8]
    private let nameBytes: [UInt8]

    private var members: [Member] = []  // kept sorted by uuid for deterministic iteration
    private var tombstones: [(uuid: LegionUUID, seq: UInt64, until: UInt64)] = []
    private var seq: UInt64 = 0
    private var sentAt: [(seq: UInt64, at: UInt64)] = []
    private var minAckSeq: UInt64 = 0
    private var vote: LegionUUID = .none
    private var wasCandidate = false
    private var promiseTo: LegionUUID = .none
    private var promiseUntil: UInt64 = 0
    private var leaseUntil: UInt64?
    private var lordSinceMs: UInt64 = 0
    private var startedAt: UInt64?
    private var lastAnnounce: UInt64?
    private var betterSince: UInt64?
    private var joined = false
    private var hadQuorum = false
    private var lastVotes = 0
    private var now = LegionTime(mono: 0, wallMs: 0)
    private var stopped = false

    public init(identity: LegionIdentity, quorum: Int, timing: Timing = Timing()) {
        self.identity = identity
        self.quorum = max(quorum, 1)
        self.timing = timing
        E = timing.electionTimeoutMs * 1_000_000
        H = timing.heartbeatMs * 1_000_000
        D = timing.leaseDurationNs
        G = timing.leaseGuardMs * 1_000_000
        legionBytes = Array(identity.legion.utf8)
        nameBytes = Array(identity.name.utf8)
    }

    // MARK: inputs

    public mutating func tick(at time: LegionTime) -> [LegionDirective] {
        guard !stopped else { return [] }
        now = time
        if startedAt == nil { startedAt = time.mono }
        var out: [LegionDirective] = []
        step(into: &out)
        if let last = lastAnnounce, time.mono < last + H {
            return out
        }
        out.append(.send(makeAnnounce()))
        return out
    }

    public mutating func receive(_ packet: LegionAnnounce, at time: LegionTime) -> [LegionDirective] {
        guard !stopped else { return [] }
        now = time
        if startedAt == nil { startedAt = time.mono }
        guard packet.legion == legionBytes else { return [.dropped(.wrongLegion)] }
        if packet.uuid == identity.uuid { return [] }  // our own packet (multicast loop)
        guard let packetSeq = packet.seq else { return [.dropped(.missingSequence)] }
        guard packet.valor <= 65_535 else { return [.dropped(.valorOutOfRange(packet.valor))] }
        var out: [LegionDirective] = []
        let senderWallMs = packet.unixMs ?? packet.unix * 1000
        let skew = Int64(bitPattern: senderWallMs &- time.wallMs)
        if skew.magnitude > timing.skewToleranceMs {
            return [.dropped(.stale(skewSeconds: skew / 1000))]
        }
        if let tomb = tombstones.first(where: { $0.uuid == packet.uuid }), packetSeq <= tomb.seq {
            return [.dropped(.replayed(seq: packetSeq, last: tomb.seq))]
        }
        let index = memberIndex(packet.uuid)
        if let index, packetSeq <= members[index].lastSeq {
            return [.dropped(.replayed(seq: packetSeq, last: members[index].lastSeq))]
        }
        if packet.dead {
            if let index {
                let gone = members.remove(at: index)
                remember(gone.info.uuid, seq: packetSeq)
                out.append(.memberLeft(gone.info, .announcedDeath))
            } else {
                remember(packet.uuid, seq: packetSeq)
            }
            step(into: &out)
            return out
        }
        let at: Int
        if let index {
            at = index
        } else {
            let info = LegionMemberInfo(name: packet.nameString, valor: packet.valor, uuid: packet.uuid, pid: packet.pid)
            let member = Member(info: info, lastHeard: time.mono, lastHeardMs: time.wallMs, lastSeq: packetSeq,
                                vote: .none, ack: nil, claimsLease: false, heard: 0, skewWarnedAt: nil)
            let insertAt = members.firstIndex { packet.uuid < $0.info.uuid } ?? members.count
            members.insert(member, at: insertAt)
            at = insertAt
            out.append(.memberJoined(info))
        }
        members[at].lastHeard = time.mono
        members[at].lastHeardMs = time.wallMs
        members[at].lastSeq = packetSeq
        members[at].vote = packet.lordUUID
        members[at].ack = packet.ack
        members[at].claimsLease = (packet.leaseMs ?? 0) > 0
        members[at].heard = packet.heard ?? 0
        if skew.magnitude > timing.skewWarningMs {
            let lastWarned = members[at].skewWarnedAt
            if lastWarned.map({ time.mono > $0 + 60_000_000_000 }) ?? true {
                members[at].skewWarnedAt = time.mono
                out.append(.clockSkew(member: packet.nameString, skewMs: skew))
            }
        }
        step(into: &out)
        // Answer the node we vote for at once: its lease counts from when it sent the announce we
        // acknowledge, so a prompt ack keeps the lease fresh. This also re-phases our heartbeat
        // to the Lord's, so the traffic stays at one announce per node per heartbeat.
        if packet.uuid == vote, !out.contains(where: { if case .send = $0 { return true } else { return false } }) {
            out.append(.send(makeAnnounce()))
        }
        return out
    }

    /// Graceful stop: resign (the shell releases the VIP), then announce death, which releases
    /// every voter at once so the next Lord is elected within a round trip.
    public mutating func shutdown(at time: LegionTime) -> [LegionDirective] {
        now = time
        var out: [LegionDirective] = []
        if leaseUntil != nil {
            leaseUntil = nil
            lordSinceMs = 0
            out.append(.resignLord(.shutdown))
        }
        setVote(.none)
        var death = makeAnnounce()
        death.dead = true
        out.append(.send(death))
        stopped = true
        return out
    }

    /// The next monotonic instant at which `tick` may have work: the next heartbeat, lease guard,
    /// promise expiry or member expiry.
    public func nextWakeup(after time: LegionTime) -> UInt64 {
        var next = (lastAnnounce ?? time.mono) + H
        if let lease = leaseUntil, lease > G { next = min(next, lease - G) }
        if promiseUntil > time.mono { next = min(next, promiseUntil) }
        for member in members { next = min(next, member.lastHeard + E + 1) }
        if let started = startedAt { let quietEnd = started + E; if quietEnd > time.mono { next = min(next, quietEnd) } }
        return max(next, time.mono + 1_000_000)
    }

    // MARK: the decision step

    private func memberIndex(_ uuid: LegionUUID) -> Int? {
        members.firstIndex { $0.info.uuid == uuid }
    }

    private func alive(_ m: Member) -> Bool { now.mono <= m.lastHeard + E }

    private mutating func remember(_ uuid: LegionUUID, seq: UInt64) {
        tombstones.removeAll { $0.uuid == uuid }
        tombstones.append((uuid, seq, now.mono + timing.skewToleranceMs * 2_000_000))
    }

    private func better(_ a: (UInt64, LegionUUID), than b: (UInt64, LegionUUID)) -> Bool {
        a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
    }

    private mutating func step(into out: inout [LegionDirective]) {
        let t = now.mono
        // Expire silent members, old tombstones and send times.
        var kept: [Member] = []
        for member in members {
            if alive(member) { kept.append(member) } else {
                remember(member.info.uuid, seq: member.lastSeq)
                out.append(.memberLeft(member.info, .expired))
            }
        }
        members = kept
        tombstones.removeAll { $0.until < t }
        sentAt.removeAll { $0.at + D < t }

        // Quorum of live membership (for hooks and status).
        let liveCount = members.count + 1
        if liveCount >= quorum, !hadQuorum {
            hadQuorum = true
            out.append(.quorumGained(votes: liveCount))
            if !joined {
                joined = true
                out.append(.joined)
            }
        } else if liveCount < quorum, hadQuorum {
            hadQuorum = false
            out.append(.quorumLost(votes: liveCount, needed: quorum))
        }

        // Lordship upkeep: renew from votes, resign before the lease ends, preempt.
        if let current = leaseUntil {
            let renewed = leaseFromVotes()
            if let renewed, renewed > current {
                leaseUntil = renewed
                out.append(.renewLease(until: renewed))
            }
            if let lease = leaseUntil, t + G >= lease {
                resign(.leaseExpiring, into: &out)
            } else if timing.preempt, let challenger = preemptingMember() {
                if betterSince == nil { betterSince = t }
                if let since = betterSince, t >= since + timing.preemptDelayMs * 1_000_000 {
                    resign(.preempted, into: &out)
                    setVote(challenger)
                    out.append(.send(makeAnnounce()))
                }
            } else {
                betterSince = nil
            }
        }

        // Choose the vote.
        if leaseUntil == nil {
            let choice = chooseVote()
            if choice != vote {
                setVote(choice)
                out.append(.send(makeAnnounce()))
            }
        }
        let candidacyBefore = wasCandidate
        noteCandidacy()
        if candidacyBefore != wasCandidate, leaseUntil == nil, !out.contains(where: { if case .send = $0 { return true } else { return false } }) {
            out.append(.send(makeAnnounce()))
        }

        // Become Lord when a quorum backs us.
        if leaseUntil == nil, vote == identity.uuid, identity.valor > 0, let lease = leaseFromVotes(), t + G < lease {
            leaseUntil = lease
            lordSinceMs = now.wallMs
            betterSince = nil
            out.append(.becomeLord(votes: lastVotes, leaseUntil: lease))
            out.append(.send(makeAnnounce()))
        }
    }

    private mutating func resign(_ reason: LegionResignReason, into out: inout [LegionDirective]) {
        leaseUntil = nil
        lordSinceMs = 0
        betterSince = nil
        out.append(.resignLord(reason))
    }

    /// A live member better than us that currently backs us (so it hears us both ways).
    private func preemptingMember() -> LegionUUID? {
        let me = (identity.valor, identity.uuid)
        return members.last { m in
            alive(m) && m.info.valor > 0 && m.vote == identity.uuid && better((m.info.valor, m.info.uuid), than: me)
        }?.info.uuid
    }

    private mutating func setVote(_ choice: LegionUUID) {
        vote = choice
        noteCandidacy()
    }

    /// A candidacy (voting for ourselves while hearing a quorum) starts or ends with our next
    /// announce: acks of anything sent before it never count, since they answered a non-candidate
    /// or a candidacy the voter has since seen end.
    private mutating func noteCandidacy() {
        let candidate = vote == identity.uuid && members.count + 1 >= quorum
        if candidate != wasCandidate {
            wasCandidate = candidate
            minAckSeq = seq + 1
        }
    }

    /// A member is a candidate while its latest announce votes for itself and it hears a quorum.
    private func isCandidate(_ m: Member) -> Bool {
        m.vote == m.info.uuid && m.heard + 1 >= UInt64(quorum)
    }

    private func viable(_ m: Member) -> Bool { m.heard + 1 >= UInt64(quorum) }

    private mutating func chooseVote() -> LegionUUID {
        let t = now.mono
        guard let started = startedAt, t >= started + E else { return .none }
        // Honour a promise to another member unless it lapsed or was released.
        if !promiseTo.isNone, promiseTo != identity.uuid, t < promiseUntil,
           let m = members.first(where: { $0.info.uuid == promiseTo }), isCandidate(m) || m.claimsLease {
            return vote == promiseTo ? promiseTo : .none
        }
        if !promiseTo.isNone, promiseTo != identity.uuid, t < promiseUntil,
           !members.contains(where: { $0.info.uuid == promiseTo }) {
            return vote == promiseTo ? promiseTo : .none
        }
        // Free: a live lease-claiming Lord first (stickiness)…
        let live = members.filter { alive($0) && $0.info.valor > 0 }
        var claimer: Member?
        for m in live where m.claimsLease {
            if let c = claimer, !better((m.info.valor, m.info.uuid), than: (c.info.valor, c.info.uuid)) { continue }
            claimer = m
        }
        if let claimer { return claimer.info.uuid }
        // …else the best viable node: ourselves, or a member once it stands as a candidate.
        var best: Member?
        for m in live where viable(m) {
            if let b = best, !better((m.info.valor, m.info.uuid), than: (b.info.valor, b.info.uuid)) { continue }
            best = m
        }
        let selfViable = identity.valor > 0 && members.count + 1 >= quorum
        if selfViable, best.map({ !better(($0.info.valor, $0.info.uuid), than: (identity.valor, identity.uuid)) }) ?? true {
            return identity.uuid
        }
        if let best, isCandidate(best) { return best.info.uuid }
        return .none
    }

    /// The lease our current votes support: the quorum-th most recent send time among the
    /// announces acknowledged by our voters (ourselves counting as "now"), plus the lease duration.
    private mutating func leaseFromVotes() -> UInt64? {
        var bases: [(name: [UInt8], at: UInt64)] = [(nameBytes, now.mono)]
        for m in members where alive(m) && m.vote == identity.uuid {
            guard let ack = m.ack, ack >= minAckSeq, let sent = sentAt.first(where: { $0.seq == ack })?.at else { continue }
            let name = Array(m.info.name.utf8)
            if let i = bases.firstIndex(where: { $0.name == name }) {
                bases[i].at = max(bases[i].at, sent)
            } else {
                bases.append((name, sent))
            }
        }
        lastVotes = bases.count
        guard bases.count >= quorum else { return nil }
        let sorted = bases.map(\.at).sorted(by: >)
        return sorted[quorum - 1] + D
    }

    private mutating func makeAnnounce() -> LegionAnnounce {
        seq += 1
        let t = now.mono
        sentAt.append((seq, t))
        lastAnnounce = t
        var ack: UInt64?
        var lordValor: UInt64 = 0
        if !vote.isNone {
            if vote == identity.uuid {
                lordValor = identity.valor
            } else if let m = members.first(where: { $0.info.uuid == vote }) {
                lordValor = m.info.valor
                ack = m.lastSeq
                // Sending this ack is the promise: no other vote until E after we received it.
                if promiseTo != vote { promiseTo = vote; promiseUntil = 0 }
                promiseUntil = max(promiseUntil, m.lastHeard + E)
            }
        }
        let checksum = CompatLegion.checksum(selfValor: identity.valor, selfUUID: identity.uuid,
                                             members: members.map { ($0.info.valor, $0.info.uuid) })
        var leaseMs: UInt64?
        if let lease = leaseUntil, lease > t { leaseMs = max((lease - t) / 1_000_000, 1) }
        return LegionAnnounce(legion: legionBytes, valor: identity.valor, unix: now.unixSeconds,
                              lord: leaseUntil != nil ? lordSinceMs / 1000 : 0, name: nameBytes, pid: identity.pid,
                              uuid: identity.uuid, checksum: checksum, lordValor: lordValor, lordUUID: vote,
                              scroll: identity.scroll, dead: false, seq: seq, ack: ack, unixMs: now.wallMs,
                              leaseMs: leaseMs, heard: UInt64(members.count))
    }

    // MARK: status

    /// True while this node holds a lease that has not run out on its own clock.
    public func holdsValidLease(at mono: UInt64) -> Bool {
        guard let lease = leaseUntil else { return false }
        return mono < lease
    }

    public var isLord: Bool { leaseUntil != nil }
    public var currentLeaseUntil: UInt64? { leaseUntil }

    public var status: LegionStatus {
        let t = now.mono
        let lordInfo: LegionMemberInfo?
        if leaseUntil != nil {
            lordInfo = LegionMemberInfo(name: identity.name, valor: identity.valor, uuid: identity.uuid, pid: identity.pid)
        } else {
            lordInfo = members.first { alive($0) && $0.claimsLease }?.info
        }
        return LegionStatus(
            mode: .native, identity: identity, isLord: leaseUntil != nil, lordSinceMs: lordSinceMs, lord: lordInfo,
            vote: vote, votes: lastVotes, quorum: quorum,
            members: members.map {
                LegionStatus.Member(info: $0.info, vote: $0.vote,
                                    lastSeenMsAgo: now.wallMs >= $0.lastHeardMs ? now.wallMs - $0.lastHeardMs : 0,
                                    claimsLord: $0.claimsLease)
            },
            leaseRemainingMs: leaseUntil.map { $0 > t ? ($0 - t) / 1_000_000 : 0 })
    }
}
