import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Store

/// Runs this node's member of the replicated store: starts the embedded dqlite node, joins the cluster, applies
/// schema migrations, follows the change log into a local snapshot (static stability) and — on the dqlite
/// leader only — keeps the voter/standby roles balanced. On shutdown a leader hands leadership over first.
public final class StoreService: Service, Sendable {
    let settings: NodeConfig.StoreSettings
    let nodeName: String
    let dataDir: String
    let state: NodeState
    let logger: Logger
    /// Gets each new desired state (and the snapshot loaded at start).
    let feed: DesiredStateFeed
    /// Change-log positions announced to and by the other members (nil: every node polls on its own).
    let hints: StoreChangeHints?

    public init(settings: NodeConfig.StoreSettings, nodeName: String, dataDir: String, state: NodeState, logger: Logger,
                feed: DesiredStateFeed = DesiredStateFeed(), hints: StoreChangeHints? = nil) {
        self.settings = settings
        self.hints = hints
        self.nodeName = nodeName
        self.dataDir = dataDir
        self.state = state
        self.logger = logger
        self.feed = feed
    }

    public var snapshotPath: String { dataDir + "/desired-state.json" }

    func clientOptions() -> StoreClient.Options {
        var options = StoreClient.Options(nodes: settings.addresses)
        options.database = settings.database
        if let hints { options.afterWrite = { hints.wroteHere() } }
        return options
    }

    public func run() async throws {
        var nodeSettings = DqliteNode.Settings(id: settings.id, address: settings.bind.description, dataDir: dataDir + "/store")
        nodeSettings.latencyMs = UInt32(settings.latencyMs)
        nodeSettings.snapshotThreshold = UInt32(settings.snapshotThreshold)
        nodeSettings.snapshotTrailing = UInt32(settings.snapshotTrailing)
        let node = try DqliteNode(nodeSettings)
        var status = NodeState.StoreStatus(id: settings.id, address: settings.bind.description, snapshotPath: snapshotPath)
        if let saved = DesiredState.load(from: snapshotPath) {
            status.appliedSeq = saved.version
            status.containers = saved.containers.count
            status.domains = saved.domains.count
            feed.publish(saved)
            logger.info("store: serving from the local snapshot until the store answers",
                        metadata: ["applied_seq": "\(saved.version)", "containers": "\(saved.containers.count)"])
        }
        let initial = status
        state.update { $0.store = initial }
        try await node.start()
        logger.info("store: dqlite node started", metadata: [
            "id": "\(settings.id)", "address": "\(settings.bind)", "latency_ms": "\(settings.latencyMs)",
            "snapshot": "\(settings.snapshotThreshold)/\(settings.snapshotTrailing)",
        ])
        let client = StoreClient(options: clientOptions(), logger: logger)
        // The loops end when their sleep is cancelled by the graceful shutdown.
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await self.joinAndMigrate(client) }
                tasks.addTask { await self.followChanges() }
                tasks.addTask { await self.balanceRoles() }
                tasks.addTask { await self.maintain() }
                await tasks.waitForAll()
            }
        }
        await handOverLeadership()
        await client.close()
        await node.stop()
        logger.info("store: dqlite node stopped")
    }

    private func sleep(ms: Int) async -> Bool {
        guard !Task.isShuttingDownGracefully else { return false }
        do { try await Task.sleep(for: .milliseconds(ms)) } catch { return false }
        return !Task.isShuttingDownGracefully && !Task.isCancelled
    }

    // MARK: Join + migrations

    func joinAndMigrate(_ client: StoreClient) async {
        var lastLog = ContinuousClock.now - .seconds(60)
        func report(_ what: String, _ error: Error) {
            if ContinuousClock.now - lastLog > .seconds(10) {
                logger.warning("store: \(what) waits: \(error)")
                lastLog = ContinuousClock.now
            }
        }
        if settings.id != 1 {
            while true {
                do {
                    let members = try await client.members()
                    if members.contains(where: { $0.id == settings.id }) { break }
                    try await client.add(id: settings.id, address: settings.bind.description)
                    logger.info("store: joined as a spare; the leader promotes running members", metadata: ["id": "\(settings.id)"])
                    break
                } catch {
                    report("joining the store", error)
                }
                guard await sleep(ms: 500) else { return }
            }
        }
        while true {
            do {
                let outcome = try await StoreMigrator.migrate(client, appliedBy: nodeName)
                if !outcome.applied.isEmpty {
                    logger.notice("store: schema migrated", metadata: ["applied": "\(outcome.applied)", "version": "\(outcome.version)"])
                }
                let version = outcome.version
                state.update { $0.store?.schemaVersion = version }
                return
            } catch StoreError.schemaTooNew(let store, let binary) {
                logger.error("store: \(StoreError.schemaTooNew(store: store, binary: binary))")
                return
            } catch {
                report("the schema migration", error)
            }
            guard await sleep(ms: 1000) else { return }
        }
    }

    // MARK: Change feed

    /// Follows the change log into the local snapshot. A node asks when it wrote to the store itself, when a member
    /// announces a newer position, every `poll_ms` if its member leads the store (the catch-all for writers that do
    /// not announce) and otherwise every `idle_poll_ms`; every node asks at once when it starts. A position a node
    /// finds that nobody announced yet, it announces (`StoreChangeHints`).
    func followChanges() async {
        let client = StoreClient(options: { var o = clientOptions(); o.budget = .seconds(2); o.noLeaderGrace = .seconds(1); return o }(), logger: logger)
        defer { Task { await client.close() } }
        var applied = state.snapshot.store?.appliedSeq ?? -1
        var announced: Int64 = -1
        var healthy = true
        var lastAsked = ContinuousClock.now - .seconds(3600)
        // After a failure (store unreachable, schema not there yet) every node asks again at the fast pace.
        var failed = false
        // The newest announced position already acted on: a position the store never reaches (a member's mistake, a
        // restored store) is asked about once, not in a loop.
        var heardAnswered: Int64 = -1
        var first = true
        while true {
            if let hints {
                // The leader's node, or a node that does not know its role yet, keeps the fast catch-all pace.
                let leads = state.snapshot.store.map { $0.isLeader || $0.role == "unknown" } ?? true
                let due = lastAsked + .milliseconds(failed || leads ? settings.pollMs : settings.idlePollMs)
                func news() -> Bool { hints.hasWritten || hints.latestHeard > max(applied, heardAnswered) }
                if !first, !news(), ContinuousClock.now < due {
                    await hints.wait(timeout: due - ContinuousClock.now)
                    guard !Task.isCancelled, !Task.isShuttingDownGracefully else { return }
                    if !news(), ContinuousClock.now < due { continue }
                }
                // Reads at most every 20 ms however many hints and notices come (a burst of writes, a flood).
                let paced = lastAsked + .milliseconds(20)
                if ContinuousClock.now < paced { try? await Task.sleep(until: paced) }
                heardAnswered = hints.latestHeard
                _ = hints.takeWrote()   // before the read: a write during it marks again, and is read next round
            } else if !first {
                guard await sleep(ms: settings.pollMs) else { return }
            }
            first = false
            lastAsked = ContinuousClock.now
            do {
                let rows = try await client.query("SELECT coalesce(max(seq), 0) FROM change_log")
                let seq = rows.scalar?.int ?? 0
                failed = false
                if let hints, seq != announced, seq > hints.latestHeard {
                    hints.announce(seq: seq)
                    announced = seq
                }
                if seq != applied {
                    let desired = try await DesiredState.fetch(client, server: nodeName, version: seq)
                    try desired.save(to: snapshotPath)
                    applied = seq
                    feed.publish(desired)
                    logger.debug("store: desired state updated", metadata: ["seq": "\(seq)", "containers": "\(desired.containers.count)"])
                    state.update {
                        $0.store?.appliedSeq = seq
                        $0.store?.containers = desired.containers.count
                        $0.store?.domains = desired.domains.count
                    }
                }
                let leader = await client.leaderAddress
                state.update {
                    $0.store?.reachable = true
                    $0.store?.leader = leader
                    $0.store?.lastSyncMs = SystemClock.wallMillis()
                    $0.store?.lastError = nil
                }
                if !healthy {
                    logger.notice("store: reachable again; following changes", metadata: ["seq": "\(seq)"])
                    healthy = true
                }
            } catch {
                failed = true
                let text = "\(error)"
                if text.contains("no such table") {
                    continue  // the first migration has not run yet
                }
                state.update {
                    $0.store?.reachable = false
                    $0.store?.lastError = text
                }
                if healthy {
                    logger.warning("store: unreachable; hosting and routing go on from the local snapshot", metadata: ["error": "\(text)"])
                    healthy = false
                }
            }
        }
    }

    // MARK: Roles (leader only)

    /// One answer to "who leads?" from a member, over a connection kept open between rounds (a new TCP connection
    /// per member and second cost more than the question). `alive`: the member answered (spares say "unknown").
    struct LeaderAnswer: Sendable {
        var alive: Bool
        var leader: (id: UInt64, address: String)?
        var connection: DqliteConnection?
    }

    static func askLeader(_ address: String, over existing: DqliteConnection?) async -> LeaderAnswer {
        var connection = existing
        if connection?.isActive != true {
            existing?.close()
            connection = try? await DqliteConnection.connect(to: address, group: MultiThreadedEventLoopGroup.singleton,
                                                             timeout: .milliseconds(300))
        }
        guard let connection else { return LeaderAnswer(alive: false) }
        do {
            return LeaderAnswer(alive: true, leader: try await connection.leader(timeout: .milliseconds(500)), connection: connection)
        } catch {
            connection.close()
            return LeaderAnswer(alive: false)
        }
    }

    func balanceRoles() async {
        let client = StoreClient(options: clientOptions(), logger: logger)
        var lastSeen: [UInt64: ContinuousClock.Instant] = [:]
        /// Open connections to members (this node's own included), by address.
        var links: [String: DqliteConnection] = [:]
        defer { for link in links.values { link.close() } }
        var round = 0
        let own = settings.bind.description
        // The first round at once: until it, no node knows whether it leads (and so polls the change log fast).
        while true {
            if round > 0 { guard await sleep(ms: 1000) else { break } }
            round += 1
            let local = await Self.askLeader(own, over: links[own])
            links[own] = local.connection
            let leader = local.leader
            let isLeader = leader?.id == settings.id
            state.update {
                $0.store?.isLeader = isLeader
                if let leader { $0.store?.leader = leader.address }
            }
            guard isLeader else {
                lastSeen.removeAll()
                for (address, link) in links where address != own {
                    link.close()
                    links[address] = nil
                }
                // This node's role (shown in its status) changes rarely: asked every 5 s, not every second.
                if round % 5 == 1, let members = try? await client.members(), let me = members.first(where: { $0.id == settings.id }) {
                    let role = me.role.description
                    state.update { $0.store?.role = role }
                }
                continue
            }
            do {
                let members = try await client.members()
                state.update { $0.store?.role = "voter" }
                let now = ContinuousClock.now
                var reachable: Set<UInt64> = [settings.id]
                let current = links
                let answers = await withTaskGroup(of: (UInt64, String, LeaderAnswer).self) { tasks in
                    for member in members where member.id != settings.id {
                        tasks.addTask { (member.id, member.address, await Self.askLeader(member.address, over: current[member.address])) }
                    }
                    var out: [(UInt64, String, LeaderAnswer)] = []
                    for await answer in tasks { out.append(answer) }
                    return out
                }
                for (id, address, answer) in answers {
                    links[address] = answer.connection
                    if answer.alive { reachable.insert(id) }
                }
                for (address, link) in links where address != own && !members.contains(where: { $0.address == address }) {
                    link.close()
                    links[address] = nil
                }
                for member in members {
                    if reachable.contains(member.id) || lastSeen[member.id] == nil { lastSeen[member.id] = now }
                }
                let grace = Duration.milliseconds(settings.voterGraceMs)
                let lost = Set(members.filter { now - (lastSeen[$0.id] ?? now) > grace }.map(\.id))
                if let change = StoreMembershipPlanner.next(members: members, reachable: reachable, lost: lost, leader: settings.id),
                   case .assign(let id, let role, let reason) = change {
                    logger.notice("store: role change", metadata: ["node": "\(id)", "role": "\(role)", "reason": "\(reason)"])
                    try await client.assign(id: id, role: role)
                }
            } catch {
                logger.warning("store: role balancing skipped this round: \(error)")
                await client.close()
            }
        }
        await client.close()
    }

    // MARK: Housekeeping (leader only)

    func maintain() async {
        let client = StoreClient(options: clientOptions(), logger: logger)
        while await sleep(ms: 60_000) {
            guard state.snapshot.store?.isLeader == true else { continue }
            let dayAgo = Int64(Date().timeIntervalSince1970 * 1000) - 86_400_000
            do {
                // Request ids are kept a day: a client retrying a write later than that gets a new id.
                try await client.exec("DELETE FROM store_requests WHERE at_ms < ?", [.integer(dayAgo)], retry: true)
                try await client.exec("DELETE FROM change_log WHERE seq < (SELECT max(seq) - 100000 FROM change_log)", retry: true)
            } catch {
                logger.debug("store: housekeeping skipped: \(error)")
            }
        }
        await client.close()
    }

    /// A leader that stops hands leadership to a running voter, so writes pause for a round trip instead of an
    /// election timeout.
    func handOverLeadership() async {
        let local = await Self.askLeader(settings.bind.description, over: nil)
        local.connection?.close()
        guard let leader = local.leader, leader.id == settings.id else { return }
        var options = clientOptions()
        options.budget = .seconds(1)
        let client = StoreClient(options: options, logger: logger)
        defer { Task { await client.close() } }
        guard let members = try? await client.members() else { return }
        for member in members where member.role == .voter && member.id != settings.id {
            let probe = await Self.askLeader(member.address, over: nil)
            probe.connection?.close()
            if probe.alive, (try? await client.transfer(to: member.id)) != nil {
                logger.info("store: leadership handed over", metadata: ["to": "\(member.id)"])
                return
            }
        }
    }
}
