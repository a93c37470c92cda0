import Foundation
import Synchronization
import Legion
import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The thin shell around the Legion state machine: a UDP socket, the protocol thread, the failover IP,
/// hooks and the audit log. One `Service` in the node's `ServiceGroup`.
///
/// All protocol state lives in one loop on its own OS thread (`LegionThread`: realtime priority where
/// permitted, memory locked) that consumes, in order, datagrams, deadlines and relay payloads, and sleeps in
/// poll(2) until the machine's next deadline or a packet. Effects that may block (log lines, the audit log,
/// hooks, IP changes) are handed to tasks elsewhere, so announces and lease renewals keep flowing whatever a
/// hook, the disk or the rest of the process does.
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
    /// The store's change-log position, relayed between members (nil: no store on this node).
    let storeHints: StoreChangeHints?

    /// `vipListener`: what listens on the VIP while Lord; by default a server answering
    /// `GET /.legion/lord` only (a node with a router passes its VIP router instead).
    public init(config: NodeConfig, state: NodeState, logger: Logger, relay: ClusterRelay? = nil,
                storeHints: StoreChangeHints? = nil, vipListener: VIPListenerFactory? = nil) throws {
        self.relay = relay
        self.storeHints = storeHints
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
        let codec = try LegionCodec(mode: config.mode, secret: config.secret, aead: OpenSSLAEAD.make)
        let socket: LegionSocket
        do {
            socket = try LegionSocket(bind: config.bind, peers: config.nodes)
        } catch {
            throw NodeConfigError.invalid(key: "legion.bind", problem: "\(error)")
        }
        logger.notice("legion node started", metadata: [
            "legion": "\(config.legionName)", "mode": "\(config.mode.rawValue)", "bind": "\(config.bind)", "valor": "\(config.valor)",
            "quorum": "\(config.quorum)", "peers": "\(config.nodes.map(\.description).joined(separator: ","))", "uuid": "\(uuid)",
        ])
        audit.record("started", wallMs: SystemClock.wallMillis(), fields: [
            ("node", .string(config.name)), ("uuid", .string(uuid.description)), ("valor", .uint(config.valor)),
            ("mode", .string(config.mode.rawValue)), ("quorum", .int(Int64(config.quorum))),
        ])
        runHooks(.setup)
        let hookTask = Task { await hooks.run() }
        let vipTask = Task { await vip.run() }
        let (effects, effectSink) = AsyncStream<@Sendable () -> Void>.makeStream()
        let effectTask = Task { for await effect in effects { effect() } }

        let thread = LegionThread(socket: socket, realtimePriority: config.realtimePriority, lockMemory: config.lockMemory)
        let loop = ProtocolLoop(service: self, machine: makeMachine(), codec: codec, socket: socket, effects: effectSink)
        let relayTask = relay.map { relay in
            Task { for await payload in relay.outbox { thread.relay(payload) } }
        }
        let hintTask = storeHints.map { hints in
            Task { for await payload in hints.outbox { thread.relay(payload) } }
        }
        // Graceful shutdown, or cancellation (another service of the node failed: the group is cancelled), stops the thread.
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                let outcome = await thread.run(loop)
                if let note = outcome.realtimeNote { logger.info("\(note)") }
            } onGracefulShutdown: {
                thread.requestShutdown()
            }
        } onCancel: {
            thread.requestShutdown()
        }
        relayTask?.cancel()
        hintTask?.cancel()
        socket.close()
        effectSink.finish()
        _ = await effectTask.value
        await vip.stop()
        vipTask.cancel()
        runHooks(.death)
        hooks.finish()
        _ = await hookTask.value
        audit.record("stopped", wallMs: SystemClock.wallMillis(), fields: [("node", .string(config.name))])
        logger.notice("legion node stopped cleanly")
    }
}

/// The single owner of the state machine, run on the protocol thread (`LegionThread`): synchronous, no blocking
/// I/O — sends are non-blocking datagrams, everything that may block goes to `effects`.
struct ProtocolLoop: @unchecked Sendable {
    // @unchecked: moved to the protocol thread once and used only there.
    let service: LegionService
    var machine: LegionMachine
    let codec: LegionCodec
    let socket: LegionSocket
    let effects: AsyncStream<@Sendable () -> Void>.Continuation
    var drops = RateLimitedLog()
    /// Datagrams received and sent since the last `publish` (which adds them to the node's state).
    var packetsIn = 0
    var packetsOut = 0
    /// Failover measurements (`NodeMetrics`): when another Lord was last heard, when this node noticed there was
    /// none, and the current lease deadline (monotonic ns) while Lord.
    var otherLordHeardWallMs: UInt64?
    var lordLostWallMs: UInt64?
    var leaseUntilMono: UInt64?
    /// Made once: a metrics timer made per event costs a name check and a registry lookup on the protocol thread.
    let failoverGap = Metrics.Timer(label: NodeMetrics.failoverGap)
    let lordElection = Metrics.Timer(label: NodeMetrics.lordElection)
    let leaseMargin = Metrics.Timer(label: NodeMetrics.leaseMargin)

    init(service: LegionService, machine: LegionMachine, codec: LegionCodec, socket: LegionSocket,
         effects: AsyncStream<@Sendable () -> Void>.Continuation) {
        self.service = service
        self.machine = machine
        self.codec = codec
        self.socket = socket
        self.effects = effects
    }

    var logger: Logger { service.logger }
    var config: NodeConfig { service.config }

    /// Runs `effect` off the protocol thread (log lines, the audit log: they may block on a full pipe or a slow disk).
    func later(_ effect: @escaping @Sendable () -> Void) {
        effects.yield(effect)
    }

    /// One input, its directives applied; `publish()` then shows the outcome (once for all the inputs of a wakeup).
    mutating func handle(_ input: LegionService.Input) {
        let now = SystemClock.now()
        switch input {
        case .tick:
            apply(machine.tick(at: now), now: now)
        case .datagram(let bytes) where bytes.first == LegionCodec.relayModifier:
            packetsIn += 1
            guard service.relay != nil || service.storeHints != nil else {
                drop(.notLegion(modifier1: LegionCodec.relayModifier), now: now)
                return
            }
            do {
                let payload = try codec.openRelay(bytes)
                if StoreChangeHints.isHint(payload) {
                    service.storeHints?.received(payload)
                } else {
                    service.relay?.received(payload, nowMs: now.wallMs)
                }
            } catch {
                drop(error, now: now)
            }
        case .relay(let payload):
            do {
                sendRaw(try codec.sealRelay(payload))
            } catch {
                let logger = self.logger
                later { logger.error("cannot seal a cluster relay", metadata: ["error": "\(error)"]) }
            }
        case .datagram(let bytes):
            packetsIn += 1
            do {
                let announce = try codec.decode(bytes)
                apply(machine.receive(announce, at: now), now: now)
            } catch {
                drop(error, now: now)
            }
        case .shutdown:
            break
        }
    }

    mutating func drop(_ error: LegionPacketError, now: LegionTime) {
        let reason = error.reason
        service.state.update { $0.drops[reason, default: 0] += 1 }
        let (logger, effects) = (self.logger, self.effects)
        drops.record(reason, now: now.mono) { hidden, total in
            let message = error.description
            effects.yield {
                logger.warning("dropped datagram: \(message)", metadata: [
                    "reason": "\(reason)", "total": "\(total)", "suppressed_since_last": "\(hidden)",
                ])
            }
        }
    }

    mutating func shutdown() {
        let now = SystemClock.now()
        apply(machine.shutdown(at: now), now: now)
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
        let (received, sent) = (packetsIn, packetsOut)
        (packetsIn, packetsOut) = (0, 0)
        // One state update per wakeup: the packet counters gathered since the last one go with the status.
        service.state.update {
            $0.legion = status
            $0.vipPhase = phase
            $0.packetsIn += received
            $0.packetsOut += sent
        }
    }

    /// An audit line and, optionally, a log line, written off the protocol thread.
    func record(_ event: String, at wallMs: UInt64, _ fields: [(String, JSONValue)], log: (Logger.Level, String, Logger.Metadata)? = nil) {
        let (audit, logger) = (service.audit, self.logger)
        later {
            if let (level, message, metadata) = log { logger.log(level: level, "\(message)", metadata: metadata) }
            audit.record(event, wallMs: wallMs, fields: fields)
        }
    }

    mutating func apply(_ directives: [LegionDirective], now: LegionTime) {
        for directive in directives {
            switch directive {
            case .send(let announce):
                send(announce)
            case .becomeLord(let votes, let leaseUntil):
                service.vip.want(held: true, fenceUntil: leaseUntil)
                if let heard = otherLordHeardWallMs, now.wallMs >= heard {
                    failoverGap.recordMilliseconds(now.wallMs - heard)
                }
                if let lost = lordLostWallMs, now.wallMs >= lost {
                    lordElection.recordMilliseconds(now.wallMs - lost)
                }
                (otherLordHeardWallMs, lordLostWallMs, leaseUntilMono) = (nil, nil, leaseUntil)
                service.state.update { $0.lordChanges += 1 }
                let lease = leaseUntil.map { $0 > now.mono ? ($0 - now.mono) / 1_000_000 : 0 }
                record("lord", at: now.wallMs, [
                    ("node", .string(config.name)), ("uuid", .string(service.uuid.description)), ("valor", .uint(config.valor)),
                    ("reason", .string("quorum_elected")), ("votes", .int(Int64(votes))), ("quorum", .int(Int64(config.quorum))),
                    ("lease_ms", lease.map { .uint($0) } ?? .null), ("mode", .string(config.mode.rawValue)),
                ], log: (.notice, "became Lord", ["votes": "\(votes)", "quorum": "\(config.quorum)", "lease_ms": "\(lease.map(String.init) ?? "-")"]))
                service.runHooks(.lord)
            case .renewLease(let until):
                service.vip.renew(fenceUntil: until)
                if let previous = leaseUntilMono {
                    leaseMargin.recordNanoseconds(Int64(previous > now.mono ? previous - now.mono : 0))
                }
                leaseUntilMono = until
            case .resignLord(let reason):
                service.vip.want(held: false, fenceUntil: nil)
                record("unlord", at: now.wallMs, [
                    ("node", .string(config.name)), ("uuid", .string(service.uuid.description)),
                    ("reason", .string(reason.rawValue)), ("quorum", .int(Int64(config.quorum))),
                ], log: (.notice, "no longer Lord", ["reason": "\(reason.rawValue)"]))
                service.runHooks(.unlord, extra: ["LEGION_REASON": reason.rawValue])
            case .memberJoined(let member):
                service.relay?.memberJoined(member.name)
                record("member_joined", at: now.wallMs, memberFields(member),
                       log: (.info, "member joined", ["member": "\(member.name)", "valor": "\(member.valor)", "uuid": "\(member.uuid)"]))
                service.runHooks(.nodeJoined, extra: memberEnv(member))
            case .memberLeft(let member, let reason):
                service.relay?.memberLeft(member.name)
                record("member_left", at: now.wallMs, memberFields(member) + [("reason", .string(reason.rawValue))],
                       log: (.info, "member left", ["member": "\(member.name)", "reason": "\(reason.rawValue)"]))
                service.runHooks(.nodeLeft, extra: memberEnv(member).merging(["LEGION_REASON": reason.rawValue]) { $1 })
            case .quorumGained(let votes):
                record("quorum_gained", at: now.wallMs, [
                    ("node", .string(config.name)), ("votes", .int(Int64(votes))), ("quorum", .int(Int64(config.quorum))),
                ], log: (.notice, "quorum gained", ["votes": "\(votes)", "quorum": "\(config.quorum)"]))
            case .quorumLost(let votes, let needed):
                record("quorum_lost", at: now.wallMs, [
                    ("node", .string(config.name)), ("votes", .int(Int64(votes))), ("quorum", .int(Int64(needed))),
                ], log: (.warning, "no quorum", ["votes": "\(votes)", "needed": "\(needed)"]))
            case .joined:
                service.runHooks(.join)
            case .clockSkew(let member, let skewMs):
                service.state.update { $0.maxClockSkewMs = max($0.maxClockSkewMs, skewMs.magnitude > Int64.max.magnitude ? Int64.max : Int64(skewMs.magnitude)) }
                record("clock_skew", at: now.wallMs, [("node", .string(config.name)), ("member", .string(member)), ("skew_ms", .int(skewMs))],
                       log: (.warning, "clock skew with a member; check NTP on both nodes", ["member": "\(member)", "skew_ms": "\(skewMs)"]))
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

    mutating func send(_ announce: LegionAnnounce) {
        let bytes: [UInt8]
        do {
            bytes = try codec.encode(announce)
        } catch {
            let logger = self.logger
            later { logger.error("cannot encode an announce (scroll too large?)", metadata: ["error": "\(error)"]) }
            return
        }
        sendRaw(bytes)
    }

    /// One datagram to every peer; a failed send (buffer full, peer route down) is counted, never waited on.
    mutating func sendRaw(_ bytes: [UInt8]) {
        packetsOut += socket.sendToPeers(bytes)
    }
}
