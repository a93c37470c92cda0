import ArgumentParser
import Foundation
import Node
import Supervisor
#if canImport(Glibc)
import Glibc
#endif

struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Run a local multi-process cluster from a folder of node configs (default: cluster-configs/local-3).",
        subcommands: [Up.self, Status.self, Down.self, Roll.self]
    )

    struct Options: ParsableArguments {
        @Option(help: "Folder of node TOML files (default: cluster-configs/local-3, found from here or beside the binary).")
        var configDir: String?

        @Option(help: "Put each node's data (logs, pid, audit log) in RUN_DIR/NAME instead of its data_dir.")
        var runDir: String?
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start every node that is not running, in the background; return once a Lord holds the VIP.")

        @OptionGroup var options: Options

        @Option(help: "Seconds to wait for a Lord on the VIP.")
        var timeout: Double = 20

        func run() throws {
            let cluster = try LocalCluster(options: options)
            var started: [String] = []
            for node in cluster.nodes {
                if let pid = node.runningPid {
                    print("\(node.config.name): already running (pid \(pid))")
                    continue
                }
                let pid = try cluster.start(node)
                started.append(node.config.name)
                print("\(node.config.name): started (pid \(pid), valor \(node.config.valor), log \(node.dataDir)/node.log)")
            }
            guard let vip = cluster.vip else {
                print("no VIP configured; \(started.count) node(s) started")
                return
            }
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if let lord = cluster.lordOnVIP() {
                    // Ready for what comes next (admin writes, killing the Lord): the store has its full set of
                    // voters and every node has applied the schema. Before that, killing a node can stall the store.
                    if let waiting = cluster.storeNotReady() {
                        if Date() >= deadline.addingTimeInterval(-0.1) {
                            throw UserFacingError("the store is not ready within \(Int(timeout)) s (\(waiting)); see the node logs")
                        }
                        usleep(100_000)
                        continue
                    }
                    print("Lord: \(lord) — answering on http://\(vip)/.legion/lord")
                    print("")
                    print("Watch the Lord:   watch -n 0.2 curl -s http://\(vip)/.legion/lord")
                    print("Cluster status:   \(cluster.selfCommand) cluster status")
                    if let lordNode = cluster.nodes.first(where: { $0.config.name == lord }), let pid = lordNode.runningPid {
                        print("Kill the Lord:    kill -9 \(pid)    (another node takes the VIP within a second)")
                    }
                    print("Restart missing:  \(cluster.selfCommand) cluster up")
                    print("Stop everything:  \(cluster.selfCommand) cluster down")
                    return
                }
                usleep(50_000)
            }
            throw UserFacingError("no Lord answered on http://\(vip)/.legion/lord within \(Int(timeout)) s; see the node logs: \(cluster.nodes.map { $0.dataDir + "/node.log" }.joined(separator: " "))")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show each node, who is Lord and where the VIP answers.")

        @OptionGroup var options: Options

        @Flag(help: "Print JSON: {\"lord\", \"vip\", \"nodes\": [{\"name\", \"pid\", \"lord\", \"valor\", \"running\", \"endpoints\"}]}.")
        var json = false

        func run() throws {
            let cluster = try LocalCluster(options: options)
            let document = cluster.statusDocument()
            if json {
                print(document.serialized)
                return
            }
            let lordOnVIP = cluster.lordOnVIP()
            print("legion \(cluster.nodes.first?.config.legionName ?? "-") — VIP \(cluster.vip ?? "none"): \(lordOnVIP.map { "Lord \($0)" } ?? "no Lord answering")")
            for row in cluster.rows() {
                let state = row.running ? (row.lord ? "LORD" : "member") : "stopped"
                print("  \(row.name.padding(toLength: 10, withPad: " ", startingAt: 0)) \(state.padding(toLength: 8, withPad: " ", startingAt: 0)) valor \(row.valor)  pid \(row.pid.map(String.init) ?? "-")  \(row.detail)")
            }
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop every node (SIGTERM, then SIGKILL after 5 s) and leave nothing running.")

        @OptionGroup var options: Options

        func run() throws {
            let cluster = try LocalCluster(options: options)
            var pids: [(String, Int32)] = []
            for node in cluster.nodes {
                if let pid = node.runningPid {
                    kill(pid, SIGTERM)
                    pids.append((node.config.name, pid))
                }
            }
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline, pids.contains(where: { LocalCluster.isAlive($0.1) }) { usleep(20_000) }
            for (name, pid) in pids {
                if LocalCluster.isAlive(pid) {
                    kill(pid, SIGKILL)
                    print("\(name): killed (pid \(pid) ignored SIGTERM for 5 s)")
                } else {
                    print("\(name): stopped (pid \(pid))")
                }
            }
            for node in cluster.nodes { try? FileManager.default.removeItem(atPath: node.dataDir + "/node.pid") }
            if pids.isEmpty { print("nothing was running") }
        }
    }
    struct Roll: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Restart every node one by one (SIGTERM, start, wait until it is healthy), the Lord last.",
            discussion: """
                What a rolling upgrade does: each node is stopped gracefully (a Lord resigns and hands the failover IP
                over, the routers drain, the node's cluster-domain entries leave every router) and started again, and
                the next node waits until this one is healthy: its API answers, it sees every other member, a Lord
                holds the VIP, its store member is reachable and has caught up with the leader, and its router has
                its subscriptions back. Members first (lowest valor first), the Lord last, so lordship moves once.
                On servers the same order applies with `systemctl restart legion` (SIGTERM, then start).
                """)

        @OptionGroup var options: Options

        @Option(help: "Seconds each node may take to stop (then SIGKILL) and to become healthy again.")
        var timeout: Double = 60

        @Option(help: "Seconds to wait after a node is healthy before the next one.")
        var settle: Double = 1

        func run() throws {
            let cluster = try LocalCluster(options: options)
            let running = cluster.nodes.filter { $0.runningPid != nil }
            guard running.count == cluster.nodes.count else {
                throw UserFacingError("not every node runs (\(cluster.nodes.filter { $0.runningPid == nil }.map(\.config.name).joined(separator: ", ")) stopped); start them with `legion cluster up` first")
            }
            let lordName = cluster.rows().first(where: { $0.lord })?.name
            let order = cluster.nodes.sorted { a, b in
                let (la, lb) = (a.config.name == lordName, b.config.name == lordName)
                return la != lb ? !la : a.config.valor < b.config.valor
            }
            let started = Date()
            for node in order {
                guard let pid = node.runningPid else { continue }
                let backends = cluster.routerBackends(node)
                print("\(node.config.name): stopping (pid \(pid)\(node.config.name == lordName ? ", Lord" : ""))")
                let t0 = Date()
                kill(pid, SIGTERM)
                let stopBy = Date().addingTimeInterval(timeout)
                while Date() < stopBy, LocalCluster.isAlive(pid) { usleep(20_000) }
                if LocalCluster.isAlive(pid) {
                    kill(pid, SIGKILL)
                    print("\(node.config.name): did not stop within \(Int(timeout)) s: killed")
                }
                let newPid = try cluster.start(node)
                print("\(node.config.name): started (pid \(newPid)) after \(String(format: "%.1f", Date().timeIntervalSince(t0))) s; waiting until healthy")
                let healthyBy = Date().addingTimeInterval(timeout)
                var waiting: String? = "starting"
                while Date() < healthyBy {
                    waiting = cluster.notHealthy(node, expectedBackends: backends)
                    if waiting == nil { break }
                    usleep(100_000)
                }
                if let waiting { throw UserFacingError("\(node.config.name) is not healthy within \(Int(timeout)) s (\(waiting)); the roll stops here, see \(node.dataDir)/node.log") }
                print("\(node.config.name): healthy after \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
                usleep(useconds_t(settle * 1_000_000))
            }
            print("rolled \(order.count) nodes in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; Lord now: \(cluster.lordOnVIP() ?? "none")")
        }
    }
}

/// A folder of node configs run as local processes.
struct LocalCluster {
    struct Node {
        var config: NodeConfig
        var dataDir: String
        var runningPid: Int32? {
            guard let text = try? String(contentsOfFile: dataDir + "/node.pid", encoding: .utf8),
                  let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), LocalCluster.isAlive(pid) else { return nil }
            // Guard against a recycled pid: it must be a legion process.
            let cmdline = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
            return cmdline.contains("legion") ? pid : nil
        }
    }

    struct Row {
        var name: String
        var running: Bool
        var lord: Bool
        var valor: UInt64
        var pid: Int32?
        var detail: String
        var endpoints: [(String, JSONValue)]
    }

    let nodes: [Node]
    let executable: String
    let runDir: String?

    init(options: ClusterCommand.Options) throws {
        executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let dir = try LocalCluster.findConfigDir(options.configDir, executable: executable)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".toml") }.sorted()
        guard !files.isEmpty else { throw UserFacingError("no *.toml node configs in \(dir)") }
        var nodes: [Node] = []
        for file in files {
            do {
                let config = try NodeConfig.load(path: dir + "/" + file)
                let dataDir = options.runDir.map { URL(fileURLWithPath: $0).appendingPathComponent(config.name).path } ?? config.dataDir
                nodes.append(Node(config: config, dataDir: dataDir))
            } catch {
                throw UserFacingError("\(dir)/\(file): \(error)")
            }
        }
        self.nodes = nodes
        runDir = options.runDir
    }

    static func findConfigDir(_ given: String?, executable: String) throws -> String {
        if let given {
            guard FileManager.default.fileExists(atPath: given) else { throw UserFacingError("config dir \(given) does not exist") }
            return given
        }
        let relative = "cluster-configs/local-3"
        if FileManager.default.fileExists(atPath: relative) { return relative }
        var url = URL(fileURLWithPath: executable).deletingLastPathComponent()
        for _ in 0..<5 {
            let candidate = url.appendingPathComponent(relative).path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            url = url.deletingLastPathComponent()
        }
        throw UserFacingError("cannot find \(relative); run from the repository root or pass --config-dir")
    }

    static func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        // A zombie is not alive for our purposes.
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        if let close = stat.lastIndex(of: ")") {
            let rest = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces)
            if rest.hasPrefix("Z") { return false }
        }
        return true
    }

    /// How the user invoked us (e.g. `.build/debug/legion`), for the hints we print.
    var selfCommand: String {
        let invoked = CommandLine.arguments[0]
        if invoked.contains("/") { return invoked }
        return invoked.isEmpty ? executable : invoked
    }

    var vip: String? { nodes.first { $0.config.vip.driver != .none }?.config.vip.endpoint }

    func start(_ node: Node) throws -> Int32 {
        try FileManager.default.createDirectory(atPath: node.dataDir, withIntermediateDirectories: true)
        let logPath = node.dataDir + "/node.log"
        if !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
        let log = ProcessSupervisor.openLog(logPath)
        guard log >= 0 else { throw UserFacingError("cannot write \(logPath): \(String(cString: strerror(errno)))") }
        defer { close(log) }
        var arguments = ["node", "--config", node.config.path]
        if runDir != nil { arguments += ["--data-dir", node.dataDir] }
        var spec = SpawnSpec(executable: executable, arguments: arguments)
        spec.stdout = log
        spec.stderr = log
        // A session of its own: closing this terminal (or this command exiting) does not stop the node.
        spec.newSession = true
        spec.parentDeathSignal = nil
        let child: ChildProcess
        do { child = try ProcessSupervisor.shared.spawn(spec) } catch { throw UserFacingError("cannot start \(node.config.name): \(error)") }
        // Wait for the node's own pid file (it writes it once its config is valid).
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            if let pid = node.runningPid { return pid }
            if let reason = child.exitReason {
                throw UserFacingError("\(node.config.name) exited at start (\(reason)); see \(logPath)")
            }
            usleep(20_000)
        }
        return child.pid
    }

    /// nil when every running node's store member is reachable with the schema applied and the store has its
    /// voters (3, or all members when fewer); else what is still missing.
    func storeNotReady() -> String? {
        let members = nodes.filter { $0.config.store != nil }
        guard !members.isEmpty else { return nil }
        var voters = 0
        for node in members {
            guard let api = node.config.api,
                  let response = HTTPProbe.get(host: api.host, port: api.port, path: "/status", timeoutMs: 300), response.status == 200,
                  let object = try? JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any],
                  let store = object["store"] as? [String: Any]
            else { return "\(node.config.name) does not answer on its API yet" }
            guard store["reachable"] as? Bool == true, (store["schema_version"] as? Int ?? 0) > 0 else {
                return "\(node.config.name) has not reached the store yet"
            }
            if store["role"] as? String == "voter" { voters += 1 }
        }
        let wanted = min(3, members.count)
        return voters >= wanted ? nil : "\(voters) of \(wanted) voters"
    }

    /// The subscribed backends in the node's router table (`legion_router_backends` summed), nil when unknown.
    func routerBackends(_ node: Node) -> Int? {
        guard let api = node.config.api, let response = HTTPProbe.get(host: api.host, port: api.port, path: "/metrics", timeoutMs: 500),
              response.status == 200 else { return nil }
        var total = 0
        for line in response.body.split(separator: "\n") where line.hasPrefix("legion_router_backends{") {
            total += Int(Double(line.split(separator: " ").last ?? "") ?? 0)
        }
        return total
    }

    /// nil when `node` is back in service; else what it still waits for.
    func notHealthy(_ node: Node, expectedBackends: Int?) -> String? {
        guard let api = node.config.api else { return node.runningPid == nil ? "not running" : nil }
        guard let response = HTTPProbe.get(host: api.host, port: api.port, path: "/status", timeoutMs: 500), response.status == 200,
              let object = try? JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any] else { return "its API does not answer yet" }
        let legion = object["legion"] as? [String: Any] ?? [:]
        let members = (legion["members"] as? [Any])?.count ?? 0
        if members < nodes.count - 1 { return "it sees \(members) of \(nodes.count - 1) other members" }
        if legion["lord_name"] as? String == nil { return "no Lord known yet" }
        if vip != nil, lordOnVIP() == nil { return "no Lord answers on the VIP" }
        if node.config.store != nil {
            guard let store = object["store"] as? [String: Any], store["reachable"] as? Bool == true else { return "its store member is not reachable yet" }
            let applied = store["applied_seq"] as? Int ?? 0
            let newest = nodes.compactMap { other -> Int? in
                guard other.config.name != node.config.name, let a = other.config.api,
                      let r = HTTPProbe.get(host: a.host, port: a.port, path: "/status", timeoutMs: 300),
                      let o = try? JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any],
                      let st = o["store"] as? [String: Any] else { return nil }
                return st["applied_seq"] as? Int
            }.max() ?? 0
            if applied < newest { return "its store has applied \(applied) of \(newest) changes" }
        }
        if let expectedBackends, let now = routerBackends(node), now < expectedBackends {
            return "its router has \(now) of \(expectedBackends) subscribed backends back"
        }
        return nil
    }

    func lordOnVIP() -> String? {
        guard let vipNode = nodes.first(where: { $0.config.vip.driver != .none }) else { return nil }
        guard let response = HTTPProbe.get(host: vipNode.config.vip.address, port: vipNode.config.vip.httpPort, path: "/.legion/lord", timeoutMs: 300),
              response.status == 200 else { return nil }
        return LocalCluster.jsonString(response.body, key: "name")
    }

    /// Extracts a top-level string field from a small JSON object (our own output).
    static func jsonString(_ body: String, key: String) -> String? {
        guard let data = body.data(using: .utf8),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return object[key] as? String
    }

    func rows() -> [Row] {
        nodes.map { node in
            let pid = node.runningPid
            var lord = false
            var valor = node.config.valor
            var detail = ""
            if pid != nil, let api = node.config.api,
               let response = HTTPProbe.get(host: api.host, port: api.port, path: "/status", timeoutMs: 300), response.status == 200,
               let data = response.body.data(using: .utf8), let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
                lord = object["lord"] as? Bool ?? false
                valor = (object["valor"] as? NSNumber)?.uint64Value ?? valor
                if let legion = object["legion"] as? [String: Any] {
                    let members = (legion["members"] as? [Any])?.count ?? 0
                    detail = "sees \(members) member(s), Lord \(legion["lord_name"] as? String ?? "none")"
                    if let lease = legion["lease_ms"] as? NSNumber { detail += ", lease \(lease) ms" }
                }
            } else if pid != nil {
                detail = node.config.api == nil ? "(no [api] configured)" : "(api not answering)"
            }
            var endpoints: [(String, JSONValue)] = [("legion", .string("udp://\(node.config.bind)"))]
            if let api = node.config.api { endpoints.append(("api", .string("http://\(api)"))) }
            if node.config.vip.driver != .none { endpoints.append(("vip", .string("http://\(node.config.vip.endpoint)"))) }
            endpoints.append(("log", .string(node.dataDir + "/node.log")))
            endpoints.append(("audit", .string(node.dataDir + "/audit.jsonl")))
            return Row(name: node.config.name, running: pid != nil, lord: lord, valor: valor, pid: pid, detail: detail, endpoints: endpoints)
        }
    }

    func statusDocument() -> JSONValue {
        let rows = rows()
        let lords = rows.filter { $0.running && $0.lord }
        return .object([
            ("lord", lords.count == 1 ? .string(lords[0].name) : (lords.isEmpty ? .null : .string(lords.map(\.name).joined(separator: ",")))),
            ("vip", vip.map { .string($0) } ?? .null),
            ("vip_lord", lordOnVIP().map { .string($0) } ?? .null),
            ("nodes", .array(rows.map { row in
                .object([
                    ("name", .string(row.name)), ("pid", row.pid.map { .int(Int64($0)) } ?? .null), ("running", .bool(row.running)),
                    ("lord", .bool(row.lord)), ("valor", .uint(row.valor)), ("endpoints", .object(row.endpoints)),
                ])
            })),
        ])
    }
}
