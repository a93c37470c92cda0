import Foundation
import Legion
import Subscriptions
import TOMLKit

/// A node's configuration file (TOML). See `cluster-configs/` for commented examples.
public struct NodeConfig: Sendable {
    public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public var description: String { "\(host):\(port)" }

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// Parses `HOST:PORT` (IPv4 address or host name, port 1-65535).
        public init(parsing text: String, key: String) throws(NodeConfigError) {
            guard let colon = text.lastIndex(of: ":") else {
                throw .invalid(key: key, problem: "'\(text)' is not HOST:PORT (e.g. \"127.0.0.1:17101\")")
            }
            let host = String(text[..<colon])
            guard !host.isEmpty else { throw .invalid(key: key, problem: "'\(text)' has no host; write e.g. \"127.0.0.1:17101\"") }
            guard let port = Int(text[text.index(after: colon)...]), (1...65_535).contains(port) else {
                throw .invalid(key: key, problem: "'\(text)' has no valid port (1-65535)")
            }
            self.init(host: host, port: port)
        }
    }

    public enum HookEvent: String, Sendable, CaseIterable {
        case lord, unlord, setup, death, join
        case nodeJoined = "node_joined"
        case nodeLeft = "node_left"
    }

    public enum VIPDriverKind: String, Sendable, CaseIterable {
        case none, loopback, iproute2, command
    }

    public struct VIP: Sendable {
        public var driver: VIPDriverKind = .none
        /// The floating address, e.g. `127.0.0.100` (loopback) or `10.77.0.100/24` (iproute2).
        public var address: String = ""
        public var prefixLength: Int = 32
        public var interface: String = ""
        public var httpPort: Int = 80
        public var acquireCommand: String = ""
        public var releaseCommand: String = ""
        public var endpoint: String { "\(address):\(httpPort)" }
    }

    public var path: String
    public var name: String
    public var dataDir: String
    public var legionName: String
    public var mode: LegionCodec.Mode
    public var bind: Endpoint
    public var nodes: [Endpoint]
    public var valor: UInt64
    public var quorum: Int
    public var secret: LegionSecret
    public var scroll: String?
    public var nativeTiming: NativeLegion.Timing
    public var compatTiming: CompatLegion.Timing
    public var hooks: [HookEvent: [String]]
    public var vip: VIP
    public var api: Endpoint?
    public var router: RouterSettings?
    public var store: StoreSettings?
    /// `[emperor]`: tuning of the node's Emperor and optional operator vassal directories.
    public var emperor: EmperorSection?
    /// `[hosting]`: customer containers from the store (homes, sub-Emperors, shortcuts).
    public var hosting: HostingSettings?
    /// `[legion] realtime_priority`: SCHED_RR priority of the protocol thread where permitted (0: off).
    public var realtimePriority = 10
    /// `[legion] lock_memory`: mlockall with realtime scheduling (no page fault waits for swap).
    public var lockMemory = true
    /// `[metrics]`: the node-local metric collector and its retention.
    public var metrics = MetricsSettings()
    /// `[alarms]`: alarm delivery to containers' channels.
    public var alarms = AlarmDeliverySettings()
    /// `[api] resolver`: the DNS resolver (`host[:port]`) that checks customers' domain TXT records
    /// (default: the first nameserver of /etc/resolv.conf).
    public var apiResolver: String? = nil
    /// `[api] domain`: served by every router as a cluster domain whose backends are the nodes' APIs.
    public var apiDomain: String? = nil

    /// `[store]`: this node's member of the replicated control-plane database (dqlite).
    public struct StoreSettings: Sendable {
        /// dqlite node id; id 1 bootstraps the cluster on its first start, every other id joins.
        public var id: UInt64
        /// IPv4:port dqlite listens on (Raft peers and clients).
        public var bind: Endpoint
        /// Other members' addresses, used to find the leader and to join.
        public var peers: [Endpoint]
        public var database: String = "legion"
        /// dqlite's round-trip estimate: Raft heartbeat 1.5× (75 ms), election timeout 15× (750-1500 ms; a new store
        /// leader ~1.3 s after a crash). Heartbeats are most of an idle node's CPU: 20 halves the failover and
        /// costs ~0.3 % of a core more per node.
        public var latencyMs: Int = 50
        public var snapshotThreshold: Int = 512
        public var snapshotTrailing: Int = 1024
        /// How often the node whose member leads the store checks the change log (ms) and tells the others: the
        /// catch-all for writers that do not announce their writes (the CLI given `--store` instead of the cluster's
        /// configs). Nodes, and the CLI reading the configs, announce their writes at once.
        public var pollMs: Int = 500
        /// How often the other nodes check it themselves when no change was announced (ms): the safety net for a
        /// lost announcement or a leadership change.
        public var idlePollMs: Int = 5000
        /// A voter unreachable this long is replaced by a running standby (ms).
        public var voterGraceMs: Int = 5000
        /// The addresses a client tries: this node's and its peers'.
        public var addresses: [String] { [bind.description] + peers.map(\.description) }
    }

    public static func load(path: String) throws(NodeConfigError) -> NodeConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw .unreadable(path: path, reason: "\(error.localizedDescription) (check the path given to --config)")
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws(NodeConfigError) -> NodeConfig {
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw .syntax(path: path, line: error.source.begin.line, column: error.source.begin.column, message: error.description)
        } catch {
            throw .syntax(path: path, line: 0, column: 0, message: "\(error)")
        }
        let baseDir = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var top = ConfigTable(path: "", table: root)

        guard var node = try top.subtable("node") else { throw .missing(key: "node", hint: "add a [node] table with name and data_dir") }
        let name = try node.requiredString("name", hint: "a unique node name, e.g. \"node1\"")
        let dataDirRaw = try node.requiredString("data_dir", hint: "a directory for the node's logs and state, e.g. \"/var/lib/legion\"")
        let dataDir = dataDirRaw.hasPrefix("/") ? dataDirRaw : URL(fileURLWithPath: baseDir).appendingPathComponent(dataDirRaw).standardizedFileURL.path
        try node.rejectUnknownKeys()

        guard var legion = try top.subtable("legion") else {
            throw .missing(key: "legion", hint: "add a [legion] table with name, bind, nodes, valor and secret")
        }
        let legionName = try legion.requiredString("name", hint: "the legion name all members share")
        let modeText = try legion.string("mode") ?? "native"
        guard let mode = LegionCodec.Mode(rawValue: modeText) else {
            throw .invalid(key: "legion.mode", problem: "'\(modeText)' is not a mode; use \"native\" (all-legion clusters) or \"compat\" (mixed with uWSGI nodes)")
        }
        let bind = try Endpoint(parsing: try legion.requiredString("bind", hint: "the UDP address to listen on, e.g. \"127.0.0.1:17101\""), key: "legion.bind")
        var nodes: [Endpoint] = []
        for (i, text) in (try legion.stringArray("nodes") ?? []).enumerated() {
            nodes.append(try Endpoint(parsing: text, key: "legion.nodes[\(i)]"))
        }
        if nodes.contains(bind) {
            throw .invalid(key: "legion.nodes", problem: "lists this node's own bind address \(bind); list only the other members")
        }
        guard let valor = try legion.int("valor", range: 0...65_535) else {
            throw .missing(key: "legion.valor", hint: "the node's priority, 1-65535 (highest becomes Lord; 0 = arbiter that votes but never leads)")
        }
        let clusterSize = nodes.count + 1
        let majority = clusterSize / 2 + 1
        let quorum = try legion.int("quorum", range: 1...1024) ?? majority
        if mode == .native, quorum < majority {
            throw .invalid(key: "legion.quorum", problem: "\(quorum) is below a majority of the \(clusterSize) configured nodes (\(majority)); native mode refuses split-brain quorums — raise it or list fewer nodes")
        }
        if quorum > clusterSize {
            throw .invalid(key: "legion.quorum", problem: "\(quorum) is more than the \(clusterSize) configured nodes; no Lord could ever be elected")
        }
        let secretText = try legion.requiredString("secret", hint: "written as uWSGI writes it, CIPHER:SECRET[ IV], e.g. \"aes-256-cbc:change-me\"")
        let secret: LegionSecret
        do { secret = try LegionSecret(parsing: secretText) } catch { throw .invalid(key: "legion.secret", problem: error.description.replacingOccurrences(of: "legion.secret: ", with: "")) }
        let scroll = try legion.string("scroll")
        let realtimePriority = try legion.int("realtime_priority", range: 0...99) ?? 10
        let lockMemory = try legion.bool("lock_memory") ?? true

        var native = NativeLegion.Timing()
        var compat = CompatLegion.Timing()
        if var timing = try legion.subtable("timing") {
            if let v = try timing.int("heartbeat_ms", range: 5...10_000) { native.heartbeatMs = UInt64(v) }
            if let v = try timing.int("election_timeout_ms", range: 15...120_000) { native.electionTimeoutMs = UInt64(v) }
            if let v = try timing.double("max_drift", range: 0...0.19) { native.maxDrift = v }
            if let v = try timing.int("lease_guard_ms", range: 1...60_000) { native.leaseGuardMs = UInt64(v) }
            if let v = try timing.bool("preempt") { native.preempt = v }
            if let v = try timing.int("preempt_delay_ms", range: 0...3_600_000) { native.preemptDelayMs = UInt64(v) }
            if let v = try timing.int("skew_warning_ms", range: 1...3_600_000) { native.skewWarningMs = UInt64(v) }
            if let v = try timing.int("skew_tolerance_ms", range: 100...3_600_000) { native.skewToleranceMs = UInt64(v) }
            if let v = try timing.int("freq_s", range: 1...3600) { compat.freqSeconds = UInt64(v) }
            if let v = try timing.int("tolerance_s", range: 1...3600) { compat.toleranceSeconds = UInt64(v) }
            if let v = try timing.int("skew_tolerance_s", range: 1...3600) { compat.skewToleranceSeconds = UInt64(v) }
            try timing.rejectUnknownKeys()
        }
        do { try native.validate() } catch { throw .invalid(key: "legion.timing", problem: error.description) }

        var hooks: [HookEvent: [String]] = [:]
        if var table = try legion.subtable("hooks") {
            for event in HookEvent.allCases {
                guard let raw = table.table[event.rawValue] else { continue }
                if raw.string != nil {
                    hooks[event] = [try table.requiredString(event.rawValue, hint: "a shell command")]
                } else {
                    hooks[event] = try table.stringArray(event.rawValue)
                }
            }
            try table.rejectUnknownKeys()
        }
        try legion.rejectUnknownKeys()

        let vip = try top.subtable("vip").map { table throws(NodeConfigError) in try VIP.parse(table) } ?? VIP()
        let apiSection = try top.subtable("api").map { table throws(NodeConfigError) in try Endpoint.parseAPI(table) }
        let api = apiSection?.bind
        let router = try top.subtable("router").map { table throws(NodeConfigError) in try RouterSettings.parse(table, baseDir: baseDir) }
        let store = try top.subtable("store").map { table throws(NodeConfigError) in try StoreSettings.parse(table) }
        let emperor = try top.subtable("emperor").map { table throws(NodeConfigError) in try EmperorSection.parse(table, baseDir: baseDir) }
        let hosting = try top.subtable("hosting").map { table throws(NodeConfigError) in try HostingSettings.parse(table, dataDir: dataDir, baseDir: baseDir) }
        let metrics = try top.subtable("metrics").map { table throws(NodeConfigError) in try MetricsSettings.parse(table) } ?? MetricsSettings()
        let alarms = try top.subtable("alarms").map { table throws(NodeConfigError) in try AlarmDeliverySettings.parse(table) } ?? AlarmDeliverySettings()
        try top.rejectUnknownKeys()

        var config = NodeConfig(path: path, name: name, dataDir: dataDir, legionName: legionName, mode: mode, bind: bind,
                          nodes: nodes, valor: UInt64(valor), quorum: quorum, secret: secret, scroll: scroll,
                          nativeTiming: native, compatTiming: compat, hooks: hooks, vip: vip, api: api, router: router, store: store,
                          emperor: emperor, hosting: hosting)
        config.apiResolver = apiSection?.resolver
        config.metrics = metrics
        config.realtimePriority = realtimePriority
        config.lockMemory = lockMemory
        config.alarms = alarms
        config.apiDomain = apiSection?.domain
        if config.apiDomain != nil, config.router?.clusterSubscription == nil || config.router?.internalRouter == nil {
            throw NodeConfigError.invalid(key: "api.domain", problem: "needs router.cluster_subscription and router.internal (the API is served as a cluster domain)")
        }
        if config.apiDomain != nil, let api = config.api, api.host.hasPrefix("127."), !config.bind.host.hasPrefix("127.") {
            throw NodeConfigError.invalid(key: "api.domain", problem: "other nodes' routers forward to this node's API, so api.bind must be an address they reach, not \(api.host)")
        }
        return config
    }
}

func isIPv4(_ text: String) -> Bool {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts.allSatisfy { p in !p.isEmpty && p.count <= 3 && p.allSatisfy(\.isNumber) && (Int(p) ?? 256) <= 255 }
}

extension NodeConfig {
    /// `--data-dir`: moves the data directory and every default path under it (hosting's homes and archive).
    public mutating func setDataDir(_ dir: String) {
        let old = dataDir
        dataDir = dir
        if var h = hosting {
            if h.containersDir == old + "/containers" { h.containersDir = dir + "/containers" }
            if h.archiveDir == old + "/containers-archive" { h.archiveDir = dir + "/containers-archive" }
            if h.bundlesDir == old + "/bundles" { h.bundlesDir = dir + "/bundles" }
            if h.rootfsDir == old + "/rootfs" { h.rootfsDir = dir + "/rootfs" }
            if h.imagesDir == old + "/images" { h.imagesDir = dir + "/images" }
            if h.subscribeDir == old + "/subscribe" { h.subscribeDir = dir + "/subscribe" }
            if h.sshKeysDir == old + "/ssh-keys" { h.sshKeysDir = dir + "/ssh-keys" }
            if h.distrosDir == old + "/distros" { h.distrosDir = dir + "/distros" }
            hosting = h
        }
    }
}
