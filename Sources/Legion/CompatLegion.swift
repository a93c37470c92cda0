/// uWSGI 2.0's Legion, reproduced as a pure state machine (spec §2.5–2.9).
///
/// Same membership identity (valor, name, uuid), the same checksum, the same unanimous vote rule and
/// the same transitions, so a mixed legion of real uWSGI nodes and ours agrees on one Lord. Time is
/// whole Unix seconds from the wall clock, as `uwsgi_now()`.
///
/// Deliberate differences, none visible to uWSGI peers:
/// * announces go out on a fixed-rate timer aligned to wall-clock multiples of `freq` (never faster),
///   which avoids uWSGI's announce-starvation quirk;
/// * a member announcing its death also produces `memberLeft` (uWSGI skips the `node-left` hooks);
/// * announces with valor > 65535 are dropped instead of corrupting the member table.
public struct CompatLegion: Sendable {
    public struct Timing: Sendable, Equatable {
        public var freqSeconds: UInt64 = 3
        public var toleranceSeconds: UInt64 = 15
        public var skewToleranceSeconds: UInt64 = 60
        /// uWSGI rate-limits its "no quorum" warning and the demotion inside it to once per 60 s.
        public var noQuorumWarningSeconds: UInt64 = 60
        public init() {}
    }

    struct Member: Sendable {
        var info: LegionMemberInfo
        var nameBytes: [UInt8]
        var scroll: [UInt8]?
        var checksum: UInt64
        var lordValor: UInt64
        var lordUUID: LegionUUID
        var lastSeen: UInt64
        var lastSeenMs: UInt64
        var claimsLord: Bool
    }

    public let identity: LegionIdentity
    public let quorum: Int
    public let timing: Timing

    private var members: [Member] = []
    private var lordValor: UInt64 = 0
    private var lordUUID: LegionUUID = .none
    private var checksum: UInt64 = 0
    private var iAmLordSince: UInt64 = 0
    private var joined = false
    private var changed = false
    private var lastWarning: UInt64 = 0
    private var electionEnabled = false
    private var lastAnnounceSlot: UInt64?
    private var lastVotes = 0
    private var hadQuorum = false
    private var nowMs: UInt64 = 0

    public init(identity: LegionIdentity, quorum: Int, timing: Timing = Timing()) {
        self.identity = identity
        self.quorum = quorum
        self.timing = timing
    }

    // MARK: inputs

    /// Periodic input. Announces when a new `freq`-aligned slot begins, expires silent members and
    /// runs the election step (not on the very first call, like uWSGI's first loop iteration).
    public mutating func tick(at time: LegionTime) -> [LegionDirective] {
        nowMs = time.wallMs
        let now = time.unixSeconds
        var out: [LegionDirective] = []
        let slot = now / max(timing.freqSeconds, 1)
        if lastAnnounceSlot != slot {
            lastAnnounceSlot = slot
            out.append(.send(announce(at: time)))
        }
        expire(now: now, into: &out)
        if electionEnabled {
            electionStep(at: time, into: &out)
        } else {
            electionEnabled = true
        }
        return out
    }

    public mutating func receive(_ packet: LegionAnnounce, at time: LegionTime) -> [LegionDirective] {
        nowMs = time.wallMs
        let now = time.unixSeconds
        var out: [LegionDirective] = []
        guard packet.legion == Array(identity.legion.utf8) else { return [.dropped(.wrongLegion)] }
        if packet.name == Array(identity.name.utf8), packet.pid == identity.pid,
           packet.valor == identity.valor, packet.uuid == identity.uuid {
            return []  // our own packet (multicast loop)
        }
        if packet.unix + timing.skewToleranceSeconds < now {
            return [.dropped(.stale(skewSeconds: Int64(packet.unix) - Int64(now)))]
        }
        guard packet.valor <= 65_535 else { return [.dropped(.valorOutOfRange(packet.valor))] }
        let index = members.firstIndex { $0.info.valor == packet.valor && $0.nameBytes == packet.name && $0.info.uuid == packet.uuid }
        if packet.dead {
            if let index {
                let gone = members.remove(at: index)
                out.append(.memberLeft(gone.info, .announcedDeath))
            }
            if electionEnabled { electionStep(at: time, into: &out) }
            return out
        }
        let at: Int
        if let index {
            at = index
        } else {
            let info = LegionMemberInfo(name: packet.nameString, valor: packet.valor, uuid: packet.uuid, pid: packet.pid)
            members.append(Member(info: info, nameBytes: packet.name, scroll: packet.scroll, checksum: 0,
                                  lordValor: 0, lordUUID: .none, lastSeen: now, lastSeenMs: time.wallMs, claimsLord: false))
            at = members.count - 1
            out.append(.memberJoined(info))
        }
        members[at].lastSeen = now
        members[at].lastSeenMs = time.wallMs
        members[at].lordValor = packet.lordValor
        members[at].lordUUID = packet.lordUUID
        members[at].checksum = packet.checksum
        members[at].claimsLord = packet.lord != 0
        if electionEnabled { electionStep(at: time, into: &out) }
        return out
    }

    /// Graceful stop: resign if Lord, then the death announce.
    public mutating func shutdown(at time: LegionTime) -> [LegionDirective] {
        nowMs = time.wallMs
        var out: [LegionDirective] = []
        if iAmLordSince != 0 {
            iAmLordSince = 0
            out.append(.resignLord(.shutdown))
        }
        var death = announce(at: time)
        death.dead = true
        out.append(.send(death))
        return out
    }

    /// The next monotonic instant at which `tick` has work to do (the next second boundary).
    public func nextWakeup(after time: LegionTime) -> UInt64 {
        let msToNextSecond = 1000 - (time.wallMs % 1000)
        return time.mono + msToNextSecond * 1_000_000
    }

    // MARK: the algorithm

    func announce(at time: LegionTime) -> LegionAnnounce {
        LegionAnnounce(legion: Array(identity.legion.utf8), valor: identity.valor, unix: time.unixSeconds,
                       lord: iAmLordSince, name: Array(identity.name.utf8), pid: identity.pid,
                       uuid: identity.uuid, checksum: checksum, lordValor: lordValor, lordUUID: lordUUID,
                       scroll: identity.scroll)
    }

    private mutating func expire(now: UInt64, into out: inout [LegionDirective]) {
        var kept: [Member] = []
        for member in members {
            if now > member.lastSeen, now - member.lastSeen > timing.toleranceSeconds {
                out.append(.memberLeft(member.info, .expired))
            } else {
                kept.append(member)
            }
        }
        members = kept
    }

    /// uWSGI's membership checksum: wrapping sum of valor + uuid bytes over self and members.
    public static func checksum(selfValor: UInt64, selfUUID: LegionUUID, members: [(UInt64, LegionUUID)]) -> UInt64 {
        var sum = selfValor &+ selfUUID.checksumContribution
        for (valor, uuid) in members { sum = sum &+ valor &+ uuid.checksumContribution }
        return sum
    }

    private mutating func electionStep(at time: LegionTime, into out: inout [LegionDirective]) {
        let now = time.unixSeconds
        // 1. my vote
        var best = (valor: identity.valor, uuid: identity.uuid)
        var bestIsMember = false
        for member in members where member.info.valor != 0 {
            if member.info.valor > best.valor || (member.info.valor == best.valor && member.info.uuid > best.uuid) {
                best = (member.info.valor, member.info.uuid)
                bestIsMember = true
            }
        }
        if (identity.valor > 0 && lordValor == 0) || best.valor != lordValor || best.uuid != lordUUID {
            changed = true
        }
        lordValor = best.valor
        lordUUID = best.uuid

        // 2. candidate
        let candidate: (valor: UInt64, uuid: LegionUUID)
        let iAmBest: Bool
        if bestIsMember {
            candidate = best
            iAmBest = false
        } else if identity.valor > 0 {
            candidate = (identity.valor, identity.uuid)
            iAmBest = true
        } else {
            candidate = (0, .none)
            iAmBest = false
        }

        // 3. checksum
        let sum = CompatLegion.checksum(selfValor: identity.valor, selfUUID: identity.uuid,
                                        members: members.map { ($0.info.valor, $0.info.uuid) })
        if sum != checksum {
            changed = true
            checksum = sum
        }

        // 4. unanimous votes
        var votes = 1
        for member in members {
            if member.checksum != checksum || member.lordValor != candidate.valor || member.lordUUID != candidate.uuid {
                votes = 0
                break
            }
            votes += 1
        }
        lastVotes = votes

        // 5. transitions
        if votes > 0, votes >= quorum {
            if !joined {
                joined = true
                out.append(.joined)
            }
            if !hadQuorum {
                hadQuorum = true
                out.append(.quorumGained(votes: votes))
            }
            if changed { changed = false }
            if iAmBest, iAmLordSince == 0 {
                iAmLordSince = now
                out.append(.becomeLord(votes: votes, leaseUntil: nil))
                out.append(.send(announce(at: time)))
            } else if !iAmBest, iAmLordSince != 0 {
                iAmLordSince = 0
                out.append(.resignLord(.superseded))
            }
        } else if votes > 0, votes < quorum, now >= lastWarning + timing.noQuorumWarningSeconds {
            if hadQuorum || lastWarning == 0 {
                hadQuorum = false
                out.append(.quorumLost(votes: votes, needed: quorum))
            }
            if iAmLordSince != 0 {
                iAmLordSince = 0
                out.append(.resignLord(.quorumLost))
            }
            lastWarning = now
        }
    }

    // MARK: status

    public var isLord: Bool { iAmLordSince != 0 }

    public var status: LegionStatus {
        let lordInfo: LegionMemberInfo?
        if iAmLordSince != 0 {
            lordInfo = LegionMemberInfo(name: identity.name, valor: identity.valor, uuid: identity.uuid, pid: identity.pid)
        } else if let m = members.first(where: { $0.claimsLord && $0.info.uuid == lordUUID }) {
            lordInfo = m.info
        } else {
            lordInfo = nil
        }
        return LegionStatus(
            mode: .compat, identity: identity, isLord: iAmLordSince != 0, lordSinceMs: iAmLordSince * 1000,
            lord: lordInfo, vote: lordUUID, votes: lastVotes, quorum: quorum,
            members: members.map {
                LegionStatus.Member(info: $0.info, vote: $0.lordUUID,
                                    lastSeenMsAgo: nowMs >= $0.lastSeenMs ? nowMs - $0.lastSeenMs : 0,
                                    claimsLord: $0.claimsLord)
            },
            leaseRemainingMs: nil)
    }
}
