import Foundation
import Synchronization
import Legion
import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The thin shell around the Legion state machine: a UDP socket, a ticker, the failover IP,
/// hooks and the audit log. One `Service` in the node's `ServiceGroup`.
///
/// All protocol state lives in one loop that consumes, in order, datagrams, ticks and the
/// shutdown request; effects that may be slow (hooks, IP changes) run elsewhere, so announces
/// keep flowing whatever a hook does.
public final class LegionService: Service {
    enum Input: Sendable {
        case datagram([UInt8])
        case relay([UInt8])
        case tick
        case shutdown
    }

    public let config: NodeConfig
    public let state: NodeState
    let logger: Logger
    let vip: FailoverIPController
    let hooks: HookRunner
    let audit: AuditLog
    let uuid: LegionUUID
    let relay: ClusterRelay?

    /// `vipListener`: what listens on the VIP while Lord; by default a server answering
    /// `GET /.legion/lord` only (a node with a router passes its VIP router instead).
    public init(config: NodeConfig, state: NodeState, logger: Logger, relay: ClusterRelay? = nil,
                vipListener: VIPListenerFactory? = nil) throws {
        self.relay = relay
        self.config = config
        self.state = state
        self.logger = logger
        uuid = LegionUUID.random()
        try FileManager.default.createDirectory(atPath: config.dataDir, withIntermediateDirectories: true)
        audit = AuditLog(path: config.dataDir + "/audit.jsonl", logger: logger)
        hooks = HookRunner(logger: logger)
        let driver: FailoverIPDriver
        var httpHost: String? = config.vip.address.isEmpty ? nil : config.vip.address
        switch config.vip.driver {
        case .none:
            driver = NoFailoverIP()
            httpHost = nil
        case .loopback:
            driver = LoopbackFailoverIP()
        case .iproute2:
            driver = IPRoute2FailoverIP(address: config.vip.address, prefixLength: config.vip.prefixLength,
                                        interface: config.vip.interface, logger: logger)
        case .command:
            driver = CommandFailoverIP(acquire: config.vip.acquireCommand, release: config.vip.releaseCommand,
                                       environment: ["LEGION_VIP": config.vip.address, "LEGION_NODE": config.name])
        }
        let state = self.state
        let defaultListener: VIPListenerFactory = { host, port in
            try await LordHTTPServer.start(host: host, port: port, body: { state.lordJSON() })
        }
        vip = FailoverIPController(driver: driver, httpHost: httpHost, httpPort: config.vip.httpPort, logger: logger,
                                   listener: vipListener ?? defaultListener)
    }

    var identity: LegionIdentity {
        LegionIdentity(legion: config.legionName, name: config.name, valor: config.valor, uuid: uuid,
                       pid: UInt64(ProcessInfo.processInfo.processIdentifier), scroll: config.scroll.map { Array($0.utf8) })
    }

    func makeMachine() -> LegionMachine {
        switch config.mode {
        case .native: return .native(NativeLegion(identity: identity, quorum: config.quorum, timing: config.nativeTiming))
        case .compat: return .compat(CompatLegion(identity: identity, quorum: config.quorum, timing: config.compatTiming))
        }
    }

    func hookEnvironment(_ event: String, extra: [String: String] = [:]) -> [String: String] {
        var env = [
            "LEGION_EVENT": event, "LEGION_NAME": config.legionName, "LEGION_NODE": config.name,
            "LEGION_VALOR": String(config.valor), "LEGION_UUID": uuid.description, "LEGION_MODE": config.mode.rawValue,
            "LEGION_VIP": config.vip.address.isEmpty ? "" : config.vip.endpoint, "LEGION_DATA_DIR": config.dataDir,
        ]
        for (k, v) in extra { env[k] = v }
        return env
    }

    func runHooks(_ event: NodeConfig.HookEvent, extra: [String: String] = [:]) {
        hooks.enqueue(event: event.rawValue, commands: config.hooks[event] ?? [], environment: hookEnvironment(event.rawValue, extra: extra))
    }

    public func run() async throws {
        let codec = try LegionCodec(mode: config.mode, secret: config.secret)
        var peers: [SocketAddress] = []
        for node in config.nodes {
            do {
                peers.append(try SocketAddress.makeAddressResolvingHost(node.host, port: node.port))
            } catch {
                throw NodeConfigError.invalid(key: "legion.nodes", problem: "cannot resolve \(node): \(error)")
            }
        }
        let bind = config.bind
        let channel: NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>
        do {
            channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelOption(.socketOption(.so_rcvbuf), value: 1 << 20)  // absorb bursts of junk without losing announces
                .bind(host: bind.host, port: bind.port) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>(wrappingChannelSynchronously: ch)
                    }
                }
        } catch {
            throw NodeConfigError.invalid(key: "legion.bind", problem: "cannot bind UDP \(bind): \(error) — is another node using this port?")
        }
        logger.notice("legion node started", metadata: [
            "legion": "\(config.legionName)", "mode": "\(config.mode.rawValue)", "bind": "\(bind)", "valor": "\(config.valor)",
            "quorum": "\(config.quorum)", "peers": "\(config.nodes.map(\.description).joined(separator: ","))", "uuid": "\(uuid)",
        ])
        audit.record("started", wallMs: SystemClock.wallMillis(), fields: [
            ("node", .string(config.name)), ("uuid", .string(uuid.description)), ("valor", .uint(config.valor)),
            ("mode", .string(config.mode.rawValue)), ("quorum", .int(Int64(config.quorum))),
        ])
        runHooks(.setup)
        let hookTask = Task { await hooks.run() }
        let vipTask = Task { await vip.run() }

        try await channel.executeThenClose { inbound, outbound in
            let (inputs, feed) = AsyncStream<Input>.makeStream(bufferingPolicy: .bufferingNewest(8192))
            // Ticks come when the state machine's next deadline is due (its nextWakeup: announce, lease, promise,
            // member timeouts — what the simulator schedules by), not on a fixed period: an idle node sleeps.
            let schedule = TickSchedule()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await envelope in inbound {
                        feed.yield(.datagram(Array(buffer: envelope.data)))
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        if await schedule.waitUntilDue() { feed.yield(.tick) }
                    }
                }
                if let relay = self.relay {
                    group.addTask {
                        for await payload in relay.outbox { feed.yield(.relay(payload)) }
                    }
                }
                var loop = ProtocolLoop(service: self, machine: makeMachine(), codec: codec, peers: peers, outbound: outbound)
                await withGracefulShutdownHandler {
                    for await input in inputs {
                        if case .shutdown = input { break }
                        await loop.handle(input)
                        schedule.next(at: loop.machine.nextWakeup(after: SystemClock.now()))
                    }
                } onGracefulShutdown: {
                    feed.yield(.shutdown)
                }
                await loop.shutdown()
                group.cancelAll()
            }
        }
        await vip.stop()
        vipTask.cancel()
        runHooks(.death)
        hooks.finish()
        _ = await hookTask.value
        audit.record("stopped", wallMs: SystemClock.wallMillis(), fields: [("node", .string(config.name))])
        logger.notice("legion node stopped cleanly")
    }
}

/// When the protocol loop next needs a tick: set after every input from the machine's `nextWakeup`; the ticker
/// sleeps until then (woken early if a later input moves the deadline earlier), at most `maxSleep` (a safety net).
final class TickSchedule: Sendable {
    static let maxSleepNanos: UInt64 = 1_000_000_000
    /// Monotonic nanoseconds; `.max` while a tick is on its way (the loop sets the next deadline when it handled it).
    private let deadline = Mutex<UInt64>(0)
    private let wake = WakeSignal()

    func next(at nanos: UInt64) {
        let earlier = deadline.withLock { current -> Bool in
            defer { current = nanos }
            return nanos < current
        }
        if earlier { wake.notify() }
    }

    /// Sleeps until the deadline; true when a tick is due now (then no other tick is due until the loop says).
    func waitUntilDue() async -> Bool {
        let now = SystemClock.monotonicNanos()
        // One read decides: due now (claimed: the next tick waits for the loop's new deadline), or how long to sleep.
        let due = deadline.withLock { d -> UInt64? in
            guard d <= now else { return d }
            d = .max
            return nil
        }
        guard let due else { return true }
        let wait = due == .max ? Self.maxSleepNanos : min(due - now, Self.maxSleepNanos)
        await wake.wait(timeout: .nanoseconds(Int64(wait)))
        if due == .max {
            // The loop has not answered the last tick for a second (it is busy or the machine is stuck): tick again.
            deadline.withLock { if $0 == .max { $0 = 0 } }
        }
        return false
    }
}

/// The single owner of the state machine inside `LegionService.run()`.
struct ProtocolLoop {
    let service: LegionService
    var machine: LegionMachine
    let codec: LegionCodec
    let peers: [SocketAddress]
    let outbound: NIOAsyncChannelOutboundWriter<AddressedEnvelope<ByteBuffer>>
    var drops = RateLimitedLog()
    var lastPublishedLord: Bool = false
    /// Failover measurements (`NodeMetrics`): when another Lord was last heard, when this node noticed there was
    /// none, and the current lease deadline (monotonic ns) while Lord.
    var otherLordHeardWallMs: UInt64?
    var lordLostWallMs: UInt64?
    var leaseUntilMono: UInt64?

    init(service: LegionService, machine: LegionMachine, codec: LegionCodec, peers: [SocketAddress],
         outbound: NIOAsyncChannelOutboundWriter<AddressedEnvelope<ByteBuffer>>) {
        self.service = service
        self.machine = machine
        self.codec = codec
        self.peers = peers
        self.outbound = outbound
    }

    var logger: Logger { service.logger }
    var config: NodeConfig { service.config }

    mutating func handle(_ input: LegionService.Input) async {
        let now = SystemClock.now()
        switch input {
        case .tick:
            await apply(machine.tick(at: now), now: now)
        case .datagram(let bytes) where bytes.first == LegionCodec.relayModifier:
            service.state.update { $0.packetsIn += 1 }
            guard let relay = service.relay else {
                drop(.notLegion(modifier1: LegionCodec.relayModifier), now: now)
                return
            }
            do {
                relay.received(try codec.openRelay(bytes), nowMs: now.wallMs)
            } catch {
                drop(error, now: now)
            }
        case .relay(let payload):
            do {
                await sendRaw(try codec.sealRelay(payload))
            } catch {
                logger.error("cannot seal a cluster relay", metadata: ["error": "\(error)"])
            }
        case .datagram(let bytes):
            service.state.update { $0.packetsIn += 1 }
            do {
                let announce = try codec.decode(bytes)
                await apply(machine.receive(announce, at: now), now: now)
            } catch {
                drop(error, now: now)
            }
        case .shutdown:
            break
        }
        publish()
    }

    mutating func drop(_ error: LegionPacketError, now: LegionTime) {
        let reason = error.reason
        service.state.update { $0.drops[reason, default: 0] += 1 }
        drops.record(reason, now: now.mono, logger: logger, message: error.description)
    }

    mutating func shutdown() async {
        let now = SystemClock.now()
        await apply(machine.shutdown(at: now), now: now)
        publish()
    }

    mutating func publish() {
        let status = machine.status
        if let lord = status.lord, !status.isLord {
            let agoMs = status.members.first(where: { $0.info.name == lord.name })?.lastSeenMsAgo ?? 0
            let wall = SystemClock.wallMillis()
            otherLordHeardWallMs = wall >= agoMs ? wall - agoMs : wall
            lordLostWallMs = nil
        } else if status.lord == nil, otherLordHeardWallMs != nil, lordLostWallMs == nil {
            lordLostWallMs = SystemClock.wallMillis()
        }
        if !status.isLord { leaseUntilMono = nil }
        let phase = service.vip.phase.rawValue
        service.state.update {
            $0.legion = status
            $0.vipPhase = phase
        }
    }

    mutating func apply(_ directives: [LegionDirective], now: LegionTime) async {
        for directive in directives {
            switch directive {
            case .send(let announce):
                await send(announce)
            case .becomeLord(let votes, let leaseUntil):
                service.vip.want(held: true, fenceUntil: leaseUntil)
                if let heard = otherLordHeardWallMs, now.wallMs >= heard {
                    Metrics.Timer(label: NodeMetrics.failoverGap).recordMilliseconds(now.wallMs - heard)
                }
                if let lost = lordLostWallMs, now.wallMs >= lost {
                    Metrics.Timer(label: NodeMetrics.lordElection).recordMilliseconds(now.wallMs - lost)
                }
                (otherLordHeardWallMs, lordLostWallMs, leaseUntilMono) = (nil, nil, leaseUntil)
                service.state.update { $0.lordChanges += 1 }
                let lease = leaseUntil.map { $0 > now.mono ? ($0 - now.mono) / 1_000_000 : 0 }
                logger.notice("became Lord", metadata: ["votes": "\(votes)", "quorum": "\(config.quorum)", "lease_ms": "\(lease.map(String.init) ?? "-")"])
                service.audit.record("lord", wallMs: now.wallMs, fields: [
                    ("node", .string(config.name)), ("uuid", .string(service.uuid.description)), ("valor", .uint(config.valor)),
                    ("reason", .string("quorum_elected")), ("votes", .int(Int64(votes))), ("quorum", .int(Int64(config.quorum))),
                    ("lease_ms", lease.map { .uint($0) } ?? .null), ("mode", .string(config.mode.rawValue)),
                ])
                service.runHooks(.lord)
            case .renewLease(let until):
                service.vip.renew(fenceUntil: until)
                if let previous = leaseUntilMono {
                    Metrics.Timer(label: NodeMetrics.leaseMargin).recordNanoseconds(Int64(previous > now.mono ? previous - now.mono : 0))
                }
                leaseUntilMono = until
            case .resignLord(let reason):
                service.vip.want(held: false, fenceUntil: nil)
                logger.notice("no longer Lord", metadata: ["reason": "\(reason.rawValue)"])
                service.audit.record("unlord", wallMs: now.wallMs, fields: [
                    ("node", .string(config.name)), ("uuid", .string(service.uuid.description)),
                    ("reason", .string(reason.rawValue)), ("quorum", .int(Int64(config.quorum))),
                ])
                service.runHooks(.unlord, extra: ["LEGION_REASON": reason.rawValue])
            case .memberJoined(let member):
                service.relay?.memberJoined(member.name)
                logger.info("member joined", metadata: ["member": "\(member.name)", "valor": "\(member.valor)", "uuid": "\(member.uuid)"])
                service.audit.record("member_joined", wallMs: now.wallMs, fields: memberFields(member))
                service.runHooks(.nodeJoined, extra: memberEnv(member))
            case .memberLeft(let member, let reason):
                service.relay?.memberLeft(member.name)
                logger.info("member left", metadata: ["member": "\(member.name)", "reason": "\(reason.rawValue)"])
                service.audit.record("member_left", wallMs: now.wallMs, fields: memberFields(member) + [("reason", .string(reason.rawValue))])
                service.runHooks(.nodeLeft, extra: memberEnv(member).merging(["LEGION_REASON": reason.rawValue]) { $1 })
            case .quorumGained(let votes):
                logger.notice("quorum gained", metadata: ["votes": "\(votes)", "quorum": "\(config.quorum)"])
                service.audit.record("quorum_gained", wallMs: now.wallMs, fields: [
                    ("node", .string(config.name)), ("votes", .int(Int64(votes))), ("quorum", .int(Int64(config.quorum))),
                ])
            case .quorumLost(let votes, let needed):
                logger.warning("no quorum", metadata: ["votes": "\(votes)", "needed": "\(needed)"])
                service.audit.record("quorum_lost", wallMs: now.wallMs, fields: [
                    ("node", .string(config.name)), ("votes", .int(Int64(votes))), ("quorum", .int(Int64(needed))),
                ])
            case .joined:
                service.runHooks(.join)
            case .clockSkew(let member, let skewMs):
                logger.warning("clock skew with a member; check NTP on both nodes", metadata: ["member": "\(member)", "skew_ms": "\(skewMs)"])
                service.state.update { $0.maxClockSkewMs = max($0.maxClockSkewMs, skewMs.magnitude > Int64.max.magnitude ? Int64.max : Int64(skewMs.magnitude)) }
                service.audit.record("clock_skew", wallMs: now.wallMs, fields: [("node", .string(config.name)), ("member", .string(member)), ("skew_ms", .int(skewMs))])
            case .dropped(let error):
                drop(error, now: now)
            }
        }
    }

    func memberFields(_ m: LegionMemberInfo) -> [(String, JSONValue)] {
        [("node", .string(config.name)), ("member", .string(m.name)), ("member_uuid", .string(m.uuid.description)), ("member_valor", .uint(m.valor))]
    }

    func memberEnv(_ m: LegionMemberInfo) -> [String: String] {
        ["LEGION_MEMBER": m.name, "LEGION_MEMBER_UUID": m.uuid.description, "LEGION_MEMBER_VALOR": String(m.valor)]
    }

    mutating func send(_ announce: LegionAnnounce) async {
        let bytes: [UInt8]
        do {
            bytes = try codec.encode(announce)
        } catch {
            logger.error("cannot encode an announce (scroll too large?)", metadata: ["error": "\(error)"])
            return
        }
        await sendRaw(bytes)
    }

    func sendRaw(_ bytes: [UInt8]) async {
        let buffer = ByteBuffer(bytes: bytes)
        for peer in peers {
            do {
                try await outbound.write(AddressedEnvelope(remoteAddress: peer, data: buffer))
            } catch {
                logger.debug("send failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
            }
        }
        service.state.update { $0.packetsOut += peers.count }
    }
}
