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

    public init(settings: NodeConfig.StoreSettings, nodeName: String, dataDir: String, state: NodeState, logger: Logger,
                feed: DesiredStateFeed = DesiredStateFeed()) {
        self.settings = settings
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
        try? await cancelWhenGracefulShutdown {
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

    func followChanges() async {
        let client = StoreClient(options: { var o = clientOptions(); o.budget = .seconds(2); o.noLeaderGrace = .seconds(1); return o }(), logger: logger)
        defer { Task { await client.close() } }
        var applied = state.snapshot.store?.appliedSeq ?? -1
        var healthy = true
        while await sleep(ms: settings.pollMs) {
            do {
                let rows = try await client.query("SELECT coalesce(max(seq), 0) FROM change_log")
                let seq = rows.scalar?.int ?? 0
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

    /// Asks this node's own dqlite who leads.
    func localLeader() async -> (id: UInt64, address: String)? {
        guard let conn = try? await DqliteConnection.connect(to: settings.bind.description, group: MultiThreadedEventLoopGroup.singleton,
                                                             timeout: .milliseconds(300))
        else { return nil }
        defer { conn.close() }
        return (try? await conn.leader(timeout: .milliseconds(500))) ?? nil
    }

    static func probe(_ address: String) async -> Bool {
        guard let conn = try? await DqliteConnection.connect(to: address, group: MultiThreadedEventLoopGroup.singleton, timeout: .milliseconds(300))
        else { return false }
        defer { conn.close() }
        // Any answer counts (spares answer LEADER with "unknown").
        do {
            _ = try await conn.leader(timeout: .milliseconds(500))
            return true
        } catch {
            return false
        }
    }

    func balanceRoles() async {
        let client = StoreClient(options: clientOptions(), logger: logger)
        var lastSeen: [UInt64: ContinuousClock.Instant] = [:]
        while await sleep(ms: 1000) {
            let leader = await localLeader()
            let isLeader = leader?.id == settings.id
            state.update {
                $0.store?.isLeader = isLeader
                if let leader { $0.store?.leader = leader.address }
            }
            guard isLeader else {
                lastSeen.removeAll()
                if let members = try? await client.members(), let me = members.first(where: { $0.id == settings.id }) {
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
                await withTaskGroup(of: (UInt64, Bool).self) { tasks in
                    for member in members where member.id != settings.id {
                        tasks.addTask { (member.id, await Self.probe(member.address)) }
                    }
                    for await (id, ok) in tasks where ok { reachable.insert(id) }
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
        guard let leader = await localLeader(), leader.id == settings.id else { return }
        var options = clientOptions()
        options.budget = .seconds(1)
        let client = StoreClient(options: options, logger: logger)
        defer { Task { await client.close() } }
        guard let members = try? await client.members() else { return }
        for member in members where member.role == .voter && member.id != settings.id {
            if await Self.probe(member.address), (try? await client.transfer(to: member.id)) != nil {
                logger.info("store: leadership handed over", metadata: ["to": "\(member.id)"])
                return
            }
        }
    }
}
