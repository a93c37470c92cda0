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

    /// `[store]`: this node's member of the replicated control-plane database (dqlite).
    public struct StoreSettings: Sendable {
        /// dqlite node id; id 1 bootstraps the cluster on its first start, every other id joins.
        public var id: UInt64
        /// IPv4:port dqlite listens on (Raft peers and clients).
        public var bind: Endpoint
        /// Other members' addresses, used to find the leader and to join.
        public var peers: [Endpoint]
        public var database: String = "legion"
        public var latencyMs: Int = 20
        public var snapshotThreshold: Int = 512
        public var snapshotTrailing: Int = 1024
        /// How often the node checks the change log (ms).
        public var pollMs: Int = 200
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

        var vip = VIP()
        if var table = try top.subtable("vip") {
            let driverText = try table.string("driver") ?? "none"
            guard let driver = VIPDriverKind(rawValue: driverText) else {
                throw .invalid(key: "vip.driver", problem: "'\(driverText)' is not a driver; use one of \(VIPDriverKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            vip.driver = driver
            if let address = try table.string("address") {
                let parts = address.split(separator: "/", maxSplits: 1)
                let ip = String(parts.first ?? "")
                guard isIPv4(ip) else { throw .invalid(key: "vip.address", problem: "'\(address)' is not an IPv4 address (optionally with /PREFIX)") }
                vip.address = ip
                if parts.count == 2 {
                    guard let p = Int(parts[1]), (1...32).contains(p) else { throw .invalid(key: "vip.address", problem: "prefix '/\(parts[1])' must be 1-32") }
                    vip.prefixLength = p
                }
            }
            vip.interface = try table.string("interface") ?? ""
            vip.httpPort = try table.int("http_port", range: 1...65_535) ?? 80
            vip.acquireCommand = try table.string("acquire") ?? ""
            vip.releaseCommand = try table.string("release") ?? ""
            try table.rejectUnknownKeys()
            switch driver {
            case .none: break
            case .loopback:
                guard vip.address.hasPrefix("127.") else {
                    throw .invalid(key: "vip.address", problem: "the loopback driver needs a 127.x.y.z address, got '\(vip.address)'")
                }
            case .iproute2:
                guard !vip.address.isEmpty else { throw .missing(key: "vip.address", hint: "the floating IP with prefix, e.g. \"10.77.0.100/24\"") }
                guard !vip.interface.isEmpty else { throw .missing(key: "vip.interface", hint: "the interface that carries the VIP, e.g. \"eth0\"") }
            case .command:
                guard !vip.acquireCommand.isEmpty, !vip.releaseCommand.isEmpty else {
                    throw .missing(key: "vip.acquire", hint: "the command driver needs both vip.acquire and vip.release shell commands")
                }
            }
        }

        var api: Endpoint?
        if var table = try top.subtable("api") {
            if let text = try table.string("bind") { api = try Endpoint(parsing: text, key: "api.bind") }
            try table.rejectUnknownKeys()
        }
        var router: RouterSettings?
        if var table = try top.subtable("router") {
            let http = try Endpoint(parsing: try table.requiredString("http", hint: "the HTTP listen address, e.g. \"0.0.0.0:80\""), key: "router.http")
            let sub = try Endpoint(parsing: try table.requiredString("subscription", hint: "the UDP subscription address vassals --subscribe-to, e.g. \"127.0.0.1:2626\""), key: "router.subscription")
            var settings = RouterSettings(http: http, subscription: sub)
            if let algo = try table.string("algorithm") {
                guard let a = SubscriptionTable.Algorithm(rawValue: algo) else {
                    throw .invalid(key: "router.algorithm", problem: "'\(algo)' is unknown; use \"wrr\" (uWSGI's weighted round robin) or \"lc\" (least connections)")
                }
                settings.algorithm = a
            }
            if let check = try table.string("sign_check") {
                let parts = check.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, let digest = SubscriptionDigest(rawValue: String(parts[0]).uppercased()) else {
                    throw .invalid(key: "router.sign_check", problem: "write DIGEST:KEY_DIR as uWSGI does, e.g. \"SHA1:/etc/legion/keys\" (SHA1 or SHA256)")
                }
                let dir = String(parts[1])
                settings.signCheck = (digest, dir.hasPrefix("/") ? dir : URL(fileURLWithPath: baseDir).appendingPathComponent(dir).path)
            }
            if let name = try table.string("server_name") { settings.serverName = name } else {
                settings.serverName = ProcessInfo.processInfo.hostName
            }
            if let t = try table.int("tolerance_s", range: 1...3600) { settings.toleranceMs = UInt64(t) * 1000 }
            if let n = try table.int("threads", range: 1...256) { settings.threads = n }
            if let fast = try table.bool("fast_path") { settings.fastPath = fast }
            func path(_ text: String) -> String { text.hasPrefix("/") ? text : URL(fileURLWithPath: baseDir).appendingPathComponent(text).path }
            if let text = try table.string("https") {
                settings.https = try Endpoint(parsing: text, key: "router.https")
                settings.httpsCertificate = path(try table.requiredString("https_certificate", hint: "the default certificate (PEM file) for clients without SNI"))
                settings.httpsKey = path(try table.requiredString("https_key", hint: "the default certificate's private key (PEM file)"))
            }
            if let dir = try table.string("certificates") { settings.certificatesDirectory = path(dir) }
            if let text = try table.string("internal") { settings.internalRouter = try Endpoint(parsing: text, key: "router.internal") }
            if let text = try table.string("cluster_subscription") {
                settings.clusterSubscription = try Endpoint(parsing: text, key: "router.cluster_subscription")
            }
            if let text = try table.string("advertise") {
                _ = try Endpoint(parsing: text, key: "router.advertise")
                settings.advertise = text
            }
            if (settings.internalRouter == nil) != (settings.clusterSubscription == nil) {
                throw .invalid(key: "router.cluster_subscription", problem: "cluster domains need both router.internal and router.cluster_subscription")
            }
            if let t = try table.int("connect_timeout_ms", range: 10...600_000) { settings.connectTimeoutMs = Int64(t) }
            if let t = try table.int("headers_timeout_ms", range: 100...600_000) { settings.headersTimeoutMs = Int64(t) }
            try table.rejectUnknownKeys()
            router = settings
        }
        var store: StoreSettings?
        if var table = try top.subtable("store") {
            guard let id = try table.int("id", range: 1...Int(Int32.max)) else {
                throw .missing(key: "store.id", hint: "the node's dqlite id: 1 on the node that bootstraps the store, a different number on each other node")
            }
            let bindText = try table.requiredString("bind", hint: "the IPv4:port dqlite listens on, e.g. \"127.0.0.1:17301\"")
            let bind = try Endpoint(parsing: bindText, key: "store.bind")
            guard isIPv4(bind.host) else {
                throw .invalid(key: "store.bind", problem: "\(bind.host) is not an IPv4 literal; dqlite 1.11 accepts IPv4 addresses only (no names, no IPv6)")
            }
            var peers: [Endpoint] = []
            for (i, text) in (try table.stringArray("peers") ?? []).enumerated() {
                let peer = try Endpoint(parsing: text, key: "store.peers[\(i)]")
                guard isIPv4(peer.host) else { throw .invalid(key: "store.peers[\(i)]", problem: "\(peer.host) is not an IPv4 literal (dqlite 1.11 accepts IPv4 only)") }
                peers.append(peer)
            }
            if peers.contains(bind) { throw .invalid(key: "store.peers", problem: "lists this node's own address \(bind); list only the other members") }
            if id != 1, peers.isEmpty {
                throw .missing(key: "store.peers", hint: "node \(id) joins an existing store: list at least one member's address (id 1 bootstraps)")
            }
            var settings = StoreSettings(id: UInt64(id), bind: bind, peers: peers)
            if let db = try table.string("database") {
                guard !db.isEmpty, db.utf8.count <= 64, db.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
                    throw .invalid(key: "store.database", problem: "'\(db)' must be 1-64 letters, digits, '_' or '-'")
                }
                settings.database = db
            }
            if let v = try table.int("latency_ms", range: 1...1000) { settings.latencyMs = v }
            if let v = try table.int("snapshot_threshold", range: 16...1_000_000) { settings.snapshotThreshold = v }
            if let v = try table.int("snapshot_trailing", range: 16...10_000_000) { settings.snapshotTrailing = v }
            if settings.snapshotTrailing < settings.snapshotThreshold {
                throw .invalid(key: "store.snapshot_trailing", problem: "\(settings.snapshotTrailing) is below snapshot_threshold \(settings.snapshotThreshold); dqlite needs trailing ≥ threshold")
            }
            if let v = try table.int("poll_ms", range: 20...10_000) { settings.pollMs = v }
            if let v = try table.int("voter_grace_ms", range: 500...600_000) { settings.voterGraceMs = v }
            try table.rejectUnknownKeys()
            store = settings
        }
        try top.rejectUnknownKeys()

        return NodeConfig(path: path, name: name, dataDir: dataDir, legionName: legionName, mode: mode, bind: bind,
                          nodes: nodes, valor: UInt64(valor), quorum: quorum, secret: secret, scroll: scroll,
                          nativeTiming: native, compatTiming: compat, hooks: hooks, vip: vip, api: api, router: router, store: store)
    }
}

func isIPv4(_ text: String) -> Bool {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts.allSatisfy { p in !p.isEmpty && p.count <= 3 && p.allSatisfy(\.isNumber) && (Int(p) ?? 256) <= 255 }
}
