import Legion

/// Runs one `SimScenario` with a fake clock and a fake network and checks invariants after every
/// event. Deterministic: the same scenario gives the same result, event for event.
public struct LegionSimulator {
    public struct Result: Sendable {
        public var scenario: SimScenario
        /// Native safety: two nodes held a valid lease at the same real instant.
        public var leaseOverlaps = 0
        /// Two nodes held the failover IP at once, with the lease fence (a keeper releasing the IP
        /// at the lease deadline even if the node is frozen or dead).
        public var vipOverlaps = 0
        /// The same without a fence: a frozen Lord keeps its IP until it runs again.
        public var unfencedVipOverlaps = 0
        public var firstViolation: String?
        /// Time from heal until some node became (or already was) Lord; nil if none by the end.
        public var lordAfterHealMs: UInt64?
        /// At the end: exactly one Lord and every running node names it.
        public var agreedAtEnd = false
        public var lordAtEnd: String?
        /// Crash of a Lord → next Lord elsewhere, ms of real time (one sample per crash).
        public var failoverMs: [UInt64] = []
        public var lordChanges = 0
        public var events = 0
        public var packets = 0
        public var codecRejections = 0
        public var trace: [String] = []

        public var safe: Bool { leaseOverlaps == 0 && vipOverlaps == 0 }
    }

    struct Node {
        var name: String
        var valor: UInt64
        var rate: Double
        var monoOffset: UInt64
        var wallOffsetMs: Int64
        var running = true
        var incarnation = 0
        var machine: LegionMachine
        var pausedUntil: UInt64 = 0
        var inbox: [LegionAnnounce] = []
        var tickGeneration: UInt64 = 0
        var vipHeld = false
        var fenceUntil: UInt64 = .max
        var crashedAt: UInt64?
    }

    enum Event {
        case deliver(to: Int, incarnation: Int, announce: LegionAnnounce, wire: [UInt8]?)
        case tick(Int, generation: UInt64)
        case wake(Int)
        case crash(Int, restartAfter: UInt64?)
        case restart(Int)
        case pause(Int, UInt64)
        case crashLord(restartAfter: UInt64?)
        case pauseLord(UInt64)
        case heal
    }

    struct LinkRule {
        enum Kind { case split(UInt64), inbound(Int), outbound(Int), loss(Double), delay(UInt64) }
        var kind: Kind
        var from: UInt64
        var until: UInt64
    }

    public let scenario: SimScenario
    private var rng: SimRandom
    private var nodes: [Node] = []
    private var queue = EventQueue<Event>()
    private var now: UInt64 = 0
    private var rules: [LinkRule] = []
    private var healed = false
    private var result: Result
    private let codec: LegionCodec?
    private let traceEnabled: Bool
    private var lordCrashAt: UInt64?
    private var lordCrashName: String?
    private var lastLord: String?
    private var lastVoteTraced: [Int: String] = [:]

    public init(scenario: SimScenario, trace: Bool = false) {
        self.scenario = scenario
        rng = SimRandom(seed: scenario.seed ^ 0xa5a5_5a5a_0f0f_f0f0)
        result = Result(scenario: scenario)
        traceEnabled = trace
        if scenario.throughCodec, let secret = try? LegionSecret(parsing: "aes-256-cbc:simulated-secret") {
            codec = try? LegionCodec(mode: scenario.mode, secret: secret)
        } else {
            codec = nil
        }
        for i in 0..<scenario.nodeCount {
            let offset = UInt64.random(in: 1_000_000_000...9_000_000_000, using: &rng)
            let node = Node(name: "n\(i)", valor: scenario.valors[i], rate: scenario.clockRates[i], monoOffset: offset,
                            wallOffsetMs: scenario.wallOffsetsMs[i], machine: .compat(CompatLegion(identity: LegionIdentity(legion: "x", name: "", valor: 0, uuid: .none, pid: 0), quorum: 1)))
            nodes.append(node)
            nodes[i].machine = makeMachine(i)
        }
    }

    private mutating func makeMachine(_ i: Int) -> LegionMachine {
        let identity = LegionIdentity(legion: "sim", name: nodes[i].name, valor: nodes[i].valor,
                                      uuid: LegionUUID.random(using: &rng), pid: UInt64(1000 + i * 10 + nodes[i].incarnation))
        switch scenario.mode {
        case .native: return .native(NativeLegion(identity: identity, quorum: scenario.quorum, timing: scenario.nativeTiming))
        case .compat: return .compat(CompatLegion(identity: identity, quorum: scenario.quorum, timing: scenario.compatTiming))
        }
    }

    // MARK: clocks

    private func localTime(_ i: Int, at real: UInt64) -> LegionTime {
        let mono = UInt64(Double(real) * nodes[i].rate) + nodes[i].monoOffset
        let wall = Int64(1_800_000_000_000) + Int64(mono / 1_000_000) + nodes[i].wallOffsetMs
        return LegionTime(mono: mono, wallMs: UInt64(wall))
    }

    private func realTime(_ i: Int, forLocal mono: UInt64) -> UInt64 {
        let offset = nodes[i].monoOffset
        guard mono > offset else { return 0 }
        return UInt64((Double(mono - offset) / nodes[i].rate).rounded(.up))
    }

    // MARK: run

    public mutating func run() -> Result {
        for i in nodes.indices {
            queue.push(.tick(i, generation: 0), at: UInt64.random(in: 0...300_000_000, using: &rng))
        }
        for fault in scenario.faults { schedule(fault) }
        queue.push(.heal, at: scenario.healAt)
        while let (time, event) = queue.pop(), time <= scenario.endAt {
            now = time
            result.events += 1
            handle(event)
            checkInvariants()
        }
        now = scenario.endAt
        finish()
        return result
    }

    private mutating func schedule(_ fault: SimScenario.Fault) {
        switch fault {
        case .crash(let node, let at, let restart): queue.push(.crash(node, restartAfter: restart), at: at)
        case .pause(let node, let at, let duration): queue.push(.pause(node, duration), at: at)
        case .split(let mask, let at, let duration): rules.append(LinkRule(kind: .split(mask), from: at, until: at + duration))
        case .inboundCut(let node, let at, let duration): rules.append(LinkRule(kind: .inbound(node), from: at, until: at + duration))
        case .outboundCut(let node, let at, let duration): rules.append(LinkRule(kind: .outbound(node), from: at, until: at + duration))
        case .lossBurst(let rate, let at, let duration): rules.append(LinkRule(kind: .loss(rate), from: at, until: at + duration))
        case .delaySpike(let extra, let at, let duration): rules.append(LinkRule(kind: .delay(extra), from: at, until: at + duration))
        case .crashLord(let at, let restart): queue.push(.crashLord(restartAfter: restart), at: at)
        case .pauseLord(let at, let duration): queue.push(.pauseLord(duration), at: at)
        }
    }

    private mutating func handle(_ event: Event) {
        switch event {
        case .tick(let i, let generation):
            guard nodes[i].running, generation == nodes[i].tickGeneration, now >= nodes[i].pausedUntil else { return }
            let directives = nodes[i].machine.tick(at: localTime(i, at: now))
            apply(directives, from: i)
            scheduleTick(i)
        case .deliver(let i, let incarnation, let announce, let wire):
            guard nodes[i].running, nodes[i].incarnation == incarnation else { return }
            var packet = announce
            if let wire, let codec {
                do { packet = try codec.decode(wire) } catch {
                    result.codecRejections += 1
                    return
                }
            }
            if now < nodes[i].pausedUntil {
                nodes[i].inbox.append(packet)
                return
            }
            let directives = nodes[i].machine.receive(packet, at: localTime(i, at: now))
            apply(directives, from: i)
            scheduleTick(i)
        case .wake(let i):
            guard nodes[i].running, now >= nodes[i].pausedUntil else { return }
            trace("n\(i) wakes with \(nodes[i].inbox.count) queued packets")
            // Like the real shell: timers first (the lease check), then the queued datagrams.
            apply(nodes[i].machine.tick(at: localTime(i, at: now)), from: i)
            let inbox = nodes[i].inbox
            nodes[i].inbox = []
            for packet in inbox {
                apply(nodes[i].machine.receive(packet, at: localTime(i, at: now)), from: i)
            }
            scheduleTick(i)
        case .crash(let i, let restartAfter):
            crash(i, restartAfter: restartAfter)
        case .crashLord(let restartAfter):
            if let lord = currentLordIndex() {
                lordCrashAt = now
                lordCrashName = nodes[lord].name
                crash(lord, restartAfter: restartAfter)
            }
        case .restart(let i):
            guard !nodes[i].running else { return }
            nodes[i].incarnation += 1
            nodes[i].running = true
            nodes[i].inbox = []
            nodes[i].pausedUntil = 0
            nodes[i].machine = makeMachine(i)
            trace("n\(i) restarts (incarnation \(nodes[i].incarnation))")
            nodes[i].tickGeneration += 1
            queue.push(.tick(i, generation: nodes[i].tickGeneration), at: now + rng.ms(0...5))
        case .pause(let i, let duration):
            pause(i, duration)
        case .pauseLord(let duration):
            if let lord = currentLordIndex() { pause(lord, duration) }
        case .heal:
            healed = true
            rules.removeAll()
            for i in nodes.indices where !nodes[i].running {
                queue.push(.restart(i), at: now)
            }
            if currentLordIndex() != nil { result.lordAfterHealMs = 0 }
            trace("network healed; every node running")
        }
    }

    private mutating func crash(_ i: Int, restartAfter: UInt64?) {
        guard nodes[i].running else { return }
        nodes[i].running = false
        nodes[i].crashedAt = now
        nodes[i].inbox = []
        trace("n\(i) crashes" + (nodes[i].machine.isLord ? " (it was Lord)" : ""))
        if let restartAfter { queue.push(.restart(i), at: now + restartAfter) }
    }

    private mutating func pause(_ i: Int, _ duration: UInt64) {
        guard nodes[i].running, now >= nodes[i].pausedUntil else { return }
        nodes[i].pausedUntil = now + duration
        trace("n\(i) paused for \(duration / 1_000_000) ms")
        queue.push(.wake(i), at: now + duration)
    }

    private func currentLordIndex() -> Int? {
        nodes.indices.first { nodes[$0].running && nodes[$0].machine.holdsValidLordship(at: localTime($0, at: now).mono) }
    }

    private mutating func scheduleTick(_ i: Int) {
        let local = localTime(i, at: now)
        let wake = nodes[i].machine.nextWakeup(after: local)
        var at = realTime(i, forLocal: wake)
        if at <= now { at = now + 1_000_000 }
        at += rng.ms(0...scenario.schedulingJitterMs)
        nodes[i].tickGeneration += 1
        queue.push(.tick(i, generation: nodes[i].tickGeneration), at: at)
    }

    private mutating func apply(_ directives: [LegionDirective], from i: Int) {
        for directive in directives {
            switch directive {
            case .send(let announce):
                if traceEnabled {
                    let target = nodes.firstIndex { $0.running && $0.machine.status.identity.uuid == announce.lordUUID }
                    let voteText = announce.lordUUID.isNone ? "nobody" : target.map { "n\($0)" } ?? "gone"
                    if lastVoteTraced[i] != voteText {
                        lastVoteTraced[i] = voteText
                        trace("n\(i) votes \(voteText)")
                    }
                }
                broadcast(announce, from: i)
            case .becomeLord(let votes, let leaseUntil):
                nodes[i].vipHeld = true
                nodes[i].fenceUntil = leaseUntil ?? .max
                result.lordChanges += 1
                trace("n\(i) becomes Lord (votes \(votes))")
                if healed, result.lordAfterHealMs == nil { result.lordAfterHealMs = (now - scenario.healAt) / 1_000_000 }
                if let crashedAt = lordCrashAt, nodes[i].name != lordCrashName {
                    result.failoverMs.append((now - crashedAt) / 1_000_000)
                    lordCrashAt = nil
                }
                lastLord = nodes[i].name
            case .renewLease(let until):
                nodes[i].fenceUntil = until
            case .resignLord(let reason):
                nodes[i].vipHeld = false
                trace("n\(i) resigns (\(reason.rawValue))")
            default:
                break
            }
        }
    }

    private mutating func broadcast(_ announce: LegionAnnounce, from i: Int) {
        var wire: [UInt8]?
        if let codec { wire = try? codec.encode(announce) }
        for j in nodes.indices where j != i {
            result.packets += 1
            var lossRate = healed ? 0 : scenario.lossRate
            var extraDelay: UInt64 = 0
            var blocked = false
            if !healed {
                for rule in rules where rule.from <= now && now < rule.until {
                    switch rule.kind {
                    case .split(let mask):
                        if ((mask >> UInt64(i)) & 1) != ((mask >> UInt64(j)) & 1) { blocked = true }
                    case .inbound(let node): if node == j { blocked = true }
                    case .outbound(let node): if node == i { blocked = true }
                    case .loss(let rate): lossRate = max(lossRate, rate)
                    case .delay(let extra): extraDelay = max(extraDelay, extra)
                    }
                }
            }
            if blocked || rng.chance(lossRate) { continue }
            let copies = (!healed && rng.chance(scenario.duplicateRate)) ? 2 : 1
            for _ in 0..<copies {
                var delay = rng.ms(scenario.baseDelayMs) + 50_000
                if extraDelay > 0 { delay += rng.ms(0...extraDelay) }
                queue.push(.deliver(to: j, incarnation: nodes[j].incarnation, announce: announce, wire: wire), at: now + delay)
            }
        }
    }

    // MARK: invariants

    private mutating func checkInvariants() {
        var leaseHolders: [Int] = []
        var fencedVIP: [Int] = []
        var unfencedVIP: [Int] = []
        for i in nodes.indices {
            let local = localTime(i, at: now).mono
            if nodes[i].running, nodes[i].machine.holdsValidLordship(at: local) { leaseHolders.append(i) }
            if nodes[i].vipHeld, local < nodes[i].fenceUntil { fencedVIP.append(i) }
            if nodes[i].vipHeld, nodes[i].running { unfencedVIP.append(i) }
        }
        if leaseHolders.count > 1 {
            result.leaseOverlaps += 1
            note("two valid lordships at t=\(now / 1_000_000)ms: \(leaseHolders.map { "n\($0)" })")
        }
        if fencedVIP.count > 1 {
            result.vipOverlaps += 1
            note("two fenced VIP holders at t=\(now / 1_000_000)ms: \(fencedVIP.map { "n\($0)" })")
        }
        if unfencedVIP.count > 1 { result.unfencedVipOverlaps += 1 }
    }

    private mutating func note(_ violation: String) {
        if result.firstViolation == nil { result.firstViolation = violation }
        trace("VIOLATION " + violation)
    }

    private mutating func finish() {
        var lords: [Int] = []
        for i in nodes.indices where nodes[i].running && nodes[i].machine.holdsValidLordship(at: localTime(i, at: now).mono) {
            lords.append(i)
        }
        if lords.count == 1 {
            let lordName = nodes[lords[0]].name
            result.lordAtEnd = lordName
            let named = nodes.indices.filter { nodes[$0].running }.map { nodes[$0].machine.status.lord?.name }
            result.agreedAtEnd = named.allSatisfy { $0 == lordName }
        }
    }

    private mutating func trace(_ line: String) {
        guard traceEnabled else { return }
        result.trace.append("\(now / 1_000_000)ms \(line)")
    }
}
