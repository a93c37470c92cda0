import ArgumentParser
import Foundation
import Node
import Supervisor
import Store
#if canImport(Glibc)
import Glibc
#endif

/// `legion drill SCENARIO`: a failover drill in the network-namespace lab, measured the way users feel it.
struct DrillCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drill",
        abstract: "Run a failover drill in the namespace lab and report what clients saw (needs root).",
        discussion: """
        Brings up scripts/netlab with one namespace per node config and starts
        every node inside its namespace. Once a Lord answers on the VIP, a client
        in the client namespace asks the VIP every 10 ms, writes an idempotent row
        to the store every 50 ms and probes ARP, while the drill injects the fault:

          lord-kill          SIGKILL of the Lord (restarted after the fault)
          lord-pause         SIGSTOP of the Lord, then SIGCONT (uWSGI: two Lords)
          partition-lord     the Lord, with a minority, cut off from the others
          one-way            the Lord sends but receives nothing (uWSGI: no Lord)
          node-restart       SIGTERM of a non-Lord node, restarted after the fault
          store-leader-kill  SIGKILL of the node whose dqlite node leads the store
          lossy-network      20 % packet loss on every server
          rolling-restart    every node restarted in turn (SIGTERM, start, wait until
                             healthy; the Lord last), the client asking a cluster
                             domain served by a uWSGI vassal on every server

        Reported: client gap, failed requests, time to detect, to a new Lord,
        VIP move time, the most VIP holders at once (sampled in every namespace,
        ARP answers, audit logs) and acknowledged writes lost: a summary, --json,
        and --timeline FILE.html (a self-contained picture of the drill).

        """
    )

    static let scenarios = ["lord-kill", "lord-pause", "partition-lord", "one-way", "node-restart", "store-leader-kill", "lossy-network", "rolling-restart"]

    @Argument(help: "One of: \(scenarios.joined(separator: ", ")).")
    var scenario: String

    @Option(help: "Folder of node configs for the lab (default: cluster-configs/lab-3).")
    var configDir: String?

    @Option(help: "How long the fault lasts, seconds.")
    var faultSeconds: Double = 3

    @Option(help: "How long to keep observing after the fault is healed, seconds.")
    var observeSeconds: Double = 4

    @Flag(help: "Print the figures as JSON: {\"scenario\", \"gap_ms\", \"new_lord_ms\", \"failed_requests\", \"max_vip_holders\", \"lost_writes\", …}.")
    var json = false

    @Option(help: "Write a timeline picture (self-contained HTML with SVG) to this file.")
    var timeline: String?

    @Option(help: "Keep the nodes' data, logs and the probe's raw samples here (default: a temporary directory, removed).")
    var workDir: String?

    @Option(help: "Drill a peer instead of legion, same lab and measurements: keepalived (a VRRP pair with Debian's default timers; lord-kill and lord-pause only).")
    var peer: String?

    func validate() throws {
        guard Self.scenarios.contains(scenario) else {
            throw ValidationError("unknown scenario '\(scenario)'; use one of \(Self.scenarios.joined(separator: ", "))")
        }
        if let peer {
            guard peer == "keepalived" else { throw ValidationError("--peer supports keepalived") }
            guard ["lord-kill", "lord-pause"].contains(scenario) else { throw ValidationError("--peer keepalived runs lord-kill and lord-pause") }
        }
        guard faultSeconds > 0, faultSeconds <= 120, observeSeconds >= 1, observeSeconds <= 120 else {
            throw ValidationError("--fault-seconds must be in (0, 120] and --observe-seconds in [1, 120]")
        }
    }

    func run() throws {
        guard getuid() == 0 else {
            throw UserFacingError("legion drill needs root to build the namespace lab (or run it inside `scripts/netlab sandbox`)")
        }
        let lab = try DrillLab(configDir: configDir, workDir: workDir, peer: peer)
        defer { lab.teardown(keepWork: workDir != nil) }
        let report = try lab.run(scenario: scenario, faultSeconds: faultSeconds, observeSeconds: observeSeconds, log: { line in
            if !json { print(line) }
        })
        if let timeline {
            do {
                try report.timelineHTML.write(toFile: timeline, atomically: true, encoding: .utf8)
            } catch {
                throw UserFacingError("cannot write the timeline to \(timeline): \(error.localizedDescription)")
            }
        }
        if json {
            print(report.json.serialized)
        } else {
            print(report.summary)
            if let timeline { print("timeline: \(timeline)") }
        }
    }
}

/// The lab around one drill: namespaces, nodes, the client probe, samplers.
final class DrillLab {
    let configs: [(name: String, path: String, config: NodeConfig)]
    let netlab: String
    let work: String
    let binary: String
    let vip: String
    let vipPort: Int
    var nodes: [String: ChildProcess] = [:]
    var probe: ChildProcess?
    /// keepalived instead of legion (the side-by-side comparison); nil = legion.
    let peer: String?
    /// Helper processes of a peer (the web servers answering on the VIP).
    var extras: [ChildProcess] = []
    var webServers: Set<String> = []

    init(configDir: String?, workDir: String?, peer: String? = nil) throws {
        self.peer = peer
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        binary = executable
        let dir = try LocalCluster.findConfigDir(configDir ?? "cluster-configs/lab-3", executable: executable)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".toml") }.sorted()
        var configs: [(String, String, NodeConfig)] = []
        for file in files {
            do {
                let config = try NodeConfig.load(path: "\(dir)/\(file)")
                configs.append((config.name, "\(dir)/\(file)", config))
            } catch {
                throw UserFacingError("\(dir)/\(file): \(error)")
            }
        }
        if peer != nil { configs = Array(configs.prefix(2)) }  // a VRRP pair
        guard (2...9).contains(configs.count), configs.allSatisfy({ $0.0.hasPrefix("n") }) else {
            throw UserFacingError("\(dir) must hold 2-9 lab node configs named n1 … nN (see cluster-configs/lab-3)")
        }
        self.configs = configs
        guard let vipConfig = configs.first(where: { $0.2.vip.driver == .iproute2 })?.2.vip else {
            throw UserFacingError("no node in \(dir) has [vip] driver = \"iproute2\"; drills need the real VIP")
        }
        vip = vipConfig.address
        vipPort = vipConfig.httpPort
        let repo = URL(fileURLWithPath: dir).deletingLastPathComponent().deletingLastPathComponent().path
        netlab = "\(repo)/scripts/netlab"
        guard FileManager.default.isExecutableFile(atPath: netlab) else { throw UserFacingError("\(netlab) is missing") }
        if let workDir {
            work = workDir
        } else {
            work = NSTemporaryDirectory() + "legion-drill-\(getpid())"
        }
        try? FileManager.default.removeItem(atPath: work + "/probe.jsonl")
        try? FileManager.default.removeItem(atPath: work + "/acked.txt")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    // MARK: processes

    @discardableResult
    func sh(_ args: [String], timeout: Double = 20) -> (status: Int32, out: String) {
        guard let program = args.first else { return (127, "no command") }
        let result = ProcessSupervisor.shared.runBlocking(SpawnSpec(executable: program, arguments: Array(args.dropFirst())),
                                                          timeoutSeconds: timeout, captureOutput: true)
        if let error = result.error { return (127, error) }
        return (result.status, result.output)
    }

    /// Starts `args` with its output appended to `logPath`.
    func launch(_ args: [String], log logPath: String?) throws -> ChildProcess {
        var spec = SpawnSpec(executable: args[0], arguments: Array(args.dropFirst()))
        var fd: Int32 = -1
        if let logPath {
            fd = ProcessSupervisor.openLog(logPath)
            guard fd >= 0 else { throw UserFacingError("cannot write \(logPath)") }
        } else {
            fd = open("/dev/null", O_WRONLY | O_CLOEXEC)
        }
        defer { if fd >= 0 { close(fd) } }
        spec.stdout = fd
        spec.stderr = fd
        do { return try ProcessSupervisor.shared.spawn(spec) } catch { throw UserFacingError("\(error)") }
    }

    func startNode(_ name: String) throws {
        guard let entry = configs.first(where: { $0.name == name }) else { return }
        let dir = "\(work)/\(name)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if peer == "keepalived" {
            try startKeepalived(name, index: configs.firstIndex(where: { $0.name == name }) ?? 0, dir: dir)
            return
        }
        nodes[name] = try launch(["ip", "netns", "exec", "lg-\(name)", binary, "node", "--config", entry.path, "--data-dir", dir],
                                 log: dir + "/node.log")
    }

    /// keepalived with Debian's defaults (advert_int 1 s, preemption on), n1 MASTER, and a web server that
    /// answers on the VIP with its name (what the client probe asks for).
    func startKeepalived(_ name: String, index: Int, dir: String) throws {
        let conf = """
        global_defs {
          router_id \(name)
        }
        vrrp_instance legion_drill {
          state \(index == 0 ? "MASTER" : "BACKUP")
          interface eth0
          virtual_router_id 51
          priority \(index == 0 ? 150 : 100)
          advert_int 1
          virtual_ipaddress {
            \(vip)/24 dev eth0
          }
        }
        """
        try conf.write(toFile: dir + "/keepalived.conf", atomically: true, encoding: .utf8)
        if !webServers.contains(name) {
            let server = "import http.server,json\nclass H(http.server.BaseHTTPRequestHandler):\n def do_GET(s):\n  b=json.dumps({'answered_by':'\(name)'}).encode();s.send_response(200);s.send_header('Content-Length',str(len(b)));s.end_headers();s.wfile.write(b)\n def log_message(s,*a):pass\nhttp.server.ThreadingHTTPServer(('0.0.0.0',\(vipPort)),H).serve_forever()"
            extras.append(try launch(["ip", "netns", "exec", "lg-\(name)", "python3", "-c", server], log: nil))
            webServers.insert(name)
        }
        nodes[name] = try launch(["ip", "netns", "exec", "lg-\(name)", "keepalived", "--dont-fork", "--log-console", "--vrrp", "--use-file", dir + "/keepalived.conf",
                                  "--pid", dir + "/keepalived.pid", "--vrrp_pid", dir + "/vrrp.pid", "--checkers_pid", dir + "/checkers.pid"],
                                 log: dir + "/node.log")
    }

    /// The legion process's pid (`env` execs `ip`, which execs legion: the same pid). For keepalived, the VRRP
    /// child (the process that advertises and holds the VIP; its parent restarts it when it dies).
    func pid(_ name: String) -> Int32? {
        if peer != nil {
            let text = (try? String(contentsOfFile: "\(work)/\(name)/vrrp.pid", encoding: .utf8)) ?? ""
            return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return nodes[name].map { $0.pid }
    }

    func stopNode(_ name: String, signal sig: Int32) {
        guard let p = nodes[name] else { return }
        p.signal(SIGCONT)
        p.signal(sig)
        if p.waitBlocking(timeoutSeconds: 5) == nil {
            p.signal(SIGKILL)
            _ = p.waitBlocking(timeoutSeconds: 10)
        }
        nodes[name] = nil
    }

    var storeAddresses: String {
        peer != nil ? "" : configs.compactMap { $0.config.store?.bind.description }.joined(separator: ",")
    }

    func teardown(keepWork: Bool) {
        probe?.signal(SIGTERM)
        for e in extras { e.signal(SIGTERM) }
        for name in nodes.keys { stopNode(name, signal: SIGTERM) }
        sh([netlab, "down"])
        if !keepWork { try? FileManager.default.removeItem(atPath: work) }
    }

    // MARK: the drill

    func run(scenario: String, faultSeconds: Double, observeSeconds: Double, log: (String) -> Void) throws -> DrillReport {
        sh([netlab, "down"])
        let up = sh([netlab, "up", String(configs.count)])
        guard up.status == 0 else { throw UserFacingError("scripts/netlab up failed: \(up.out)") }
        log("lab: \(configs.count) servers running \(peer ?? "legion"), VIP \(vip):\(vipPort); work dir \(work)")
        for entry in configs { try startNode(entry.name) }
        let sampler = VIPSampler(nodes: configs.map(\.name), vip: vip)
        sampler.start()
        defer { sampler.stop() }

        // The client: VIP every 10 ms, a store write every 50 ms, ARP every second.
        let probeOut = "\(work)/probe.jsonl", acked = "\(work)/acked.txt", stopFile = "\(work)/stop-probe"
        try? FileManager.default.removeItem(atPath: stopFile)
        var probeArguments = ["ip", "netns", "exec", "lg-c", binary, "drill-probe", "--vip", "\(vip):\(vipPort)", "--store", storeAddresses,
                              "--out", probeOut, "--acked-file", acked, "--stop-file", stopFile]
        if scenario == "rolling-restart" {
            // A cluster domain served on every server, asked like a real client would (5 s of patience per request).
            try startVassals()
            probeArguments += ["--domain", Self.rollDomain, "--timeout-ms", "5000", "--interval-ms", "20"]
        }
        probe = try launch(probeArguments, log: "\(work)/probe.log")

        // Ready: a Lord answers on the VIP and writes are acknowledged.
        let readyDeadline = Date().addingTimeInterval(45)
        var lord: String?
        while Date() < readyDeadline {
            let samples = DrillProbeFile.read(probeOut)
            lord = samples.probes.last(where: \.ok)?.servedBy
            if scenario == "rolling-restart" {
                // Ready once every server's vassal has answered through the VIP; the Lord from the nodes' status.
                let servers = Set(samples.probes.suffix(300).compactMap(\.servedBy))
                lord = servers.count == configs.count ? configs.map(\.name).first { labStatus($0)?["lord"] as? Bool == true } : nil
            }
            let writes = (try? String(contentsOfFile: acked, encoding: .utf8))?.split(separator: "\n").count ?? 0
            if lord != nil, writes >= 3 || peer != nil { break }
            usleep(100_000)
        }
        guard let oldLord = lord else {
            throw UserFacingError("no Lord answered on \(vip):\(vipPort) within 45 s; node logs are in \(work)/n*/node.log")
        }
        log("ready: \(oldLord) is Lord; injecting \(scenario) in 2 s")
        Thread.sleep(forTimeInterval: 2)

        var target: String? = oldLord
        var stoppedMs: Int64?
        let others = configs.map(\.name).filter { $0 != oldLord }
        let faultStart = Self.nowMs()
        switch scenario {
        case "lord-kill":
            if let pid = pid(oldLord) { kill(pid, SIGKILL); stoppedMs = Self.nowMs() }
            if peer == nil {
                _ = nodes[oldLord]?.waitBlocking(timeoutSeconds: 10)
                nodes[oldLord] = nil
            }
            Thread.sleep(forTimeInterval: faultSeconds)
        case "lord-pause":
            if let pid = pid(oldLord) { kill(pid, SIGSTOP); stoppedMs = Self.nowMs() }
            Thread.sleep(forTimeInterval: faultSeconds)
        case "partition-lord":
            // The Lord keeps a minority: in a 5-node lab one other node stays with it.
            let minority = [oldLord] + others.prefix(max(0, (configs.count - 1) / 2 - 1))
            let majority = configs.map(\.name).filter { !minority.contains($0) }
            sh([netlab, "partition", minority.joined(separator: ","), majority.joined(separator: ",")])
            Thread.sleep(forTimeInterval: faultSeconds)
        case "one-way":
            sh([netlab, "one-way", oldLord])
            Thread.sleep(forTimeInterval: faultSeconds)
        case "node-restart":
            target = others.first
            if let t = target { stopNode(t, signal: SIGTERM) }
            Thread.sleep(forTimeInterval: faultSeconds)
        case "store-leader-kill":
            let status = sh(["ip", "netns", "exec", "lg-c", binary, "store", "status", "--json", "--store", storeAddresses])
            let leaderAddress = (try? JSONSerialization.jsonObject(with: Data(status.out.utf8)) as? [String: Any])
                .flatMap { ($0["leader"] as? [String: Any])?["address"] as? String }
            target = configs.first(where: { $0.config.store?.bind.description == leaderAddress })?.name
            if let t = target, let pid = pid(t) {
                kill(pid, SIGKILL)
                stoppedMs = Self.nowMs()
                _ = nodes[t]?.waitBlocking(timeoutSeconds: 10)
                nodes[t] = nil
            }
            Thread.sleep(forTimeInterval: faultSeconds)
        case "lossy-network":
            target = nil
            for name in configs.map(\.name) { sh([netlab, "loss", name, "20"]) }
            Thread.sleep(forTimeInterval: faultSeconds)
        case "rolling-restart":
            try roll(lord: oldLord, log: log)
        default:
            throw UserFacingError("unknown scenario \(scenario)")
        }
        // Heal.
        let faultEnd = Self.nowMs()
        switch scenario {
        case "lord-kill": if peer == nil { try startNode(oldLord) }  // keepalived's parent restarts its VRRP child itself
        case "lord-pause": if let pid = pid(oldLord) { kill(pid, SIGCONT) }
        case "partition-lord", "one-way", "lossy-network": sh([netlab, "heal"])
        case "node-restart", "store-leader-kill": if let t = target { try startNode(t) }
        default: break
        }
        log("fault healed after \(faultEnd - faultStart) ms; observing \(Int(observeSeconds)) s")
        Thread.sleep(forTimeInterval: observeSeconds)
        let end = Self.nowMs()
        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        if probe?.waitBlocking(timeoutSeconds: 15) == nil { probe?.signal(SIGTERM) }
        sampler.stop()

        // Every acknowledged write must be in the store exactly once.
        var observations = DrillObservations(scenario: scenario, nodes: configs.map(\.name), oldLord: oldLord, target: target,
                                             faultStartMs: faultStart, faultEndMs: faultEnd, endMs: end)
        observations.targetStoppedMs = stoppedMs
        let samples = DrillProbeFile.read(probeOut)
        observations.probes = samples.probes
        observations.probesAskDomain = scenario == "rolling-restart"
        observations.arp = samples.arp
        observations.holders = sampler.samples
        var verified = peer != nil
        observations.writesMeasured = peer == nil
        for _ in 0..<20 where !verified {
            let v = sh(["ip", "netns", "exec", "lg-c", binary, "store", "verify", "--store", storeAddresses, "--acked-file", acked,
                        "--table", "drill_writes"], timeout: 30)
            if let object = v.out.split(separator: "\n").last.flatMap({ try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }),
               let ack = object["acknowledged"] as? Int {
                observations.acknowledgedWrites = ack
                observations.lostWrites = object["lost"] as? Int ?? 0
                observations.duplicatedWrites = object["duplicated"] as? Int ?? 0
                verified = true
            } else {
                Thread.sleep(forTimeInterval: 0.5)
            }
        }
        if !verified { log("warning: the store could not be read to check the writes") }
        for entry in configs {
            observations.audit += DrillProbeFile.audit("\(work)/\(entry.name)/audit.jsonl")
        }
        return DrillReport(observations)
    }

    static func nowMs() -> Int64 { Int64(SystemClock.wallMillis()) }

    // MARK: rolling restart

    static let rollDomain = "roll.cluster.test"

    /// One uWSGI vassal per server, in its namespace, subscribed to its node's cluster subscription socket: the
    /// Lord balances the domain across the servers, each node's internal router serves its own vassal.
    func startVassals() throws {
        let app = "\(work)/roll_app.py"
        try """
            import os
            BODY = os.environ["DEMO_NAME"].encode()
            def application(env, start_response):
                start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
                return [BODY]
            """.write(toFile: app, atomically: true, encoding: .utf8)
        for entry in configs {
            guard let cluster = entry.config.router?.clusterSubscription else {
                throw UserFacingError("\(entry.name) has no [router] cluster_subscription; the rolling-restart drill serves a cluster domain")
            }
            var spec = SpawnSpec(executable: "/usr/bin/env", arguments: [
                "DEMO_NAME=\(entry.name)", "ip", "netns", "exec", "lg-\(entry.name)", "uwsgi", "--plugin", "python3", "--master",
                "--processes", "1", "--socket", "\(cluster.host):9090", "--wsgi-file", app, "--disable-logging", "--die-on-term",
                "--subscribe-freq", "2", "--subscribe-to", "\(cluster):\(Self.rollDomain)"])
            let fd = ProcessSupervisor.openLog("\(work)/\(entry.name)/vassal.log")
            defer { if fd >= 0 { close(fd) } }
            spec.stdout = fd
            spec.stderr = fd
            do { extras.append(try ProcessSupervisor.shared.spawn(spec)) } catch { throw UserFacingError("cannot start a uWSGI vassal: \(error)") }
        }
    }

    /// A node's `/status`, asked from the client namespace.
    func labStatus(_ name: String) -> [String: Any]? {
        guard let api = configs.first(where: { $0.name == name })?.config.api else { return nil }
        return get(api, "/status").flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func get(_ api: NodeConfig.Endpoint, _ path: String) -> String? {
        let r = sh(["ip", "netns", "exec", "lg-c", "curl", "-sf", "-m", "1", "http://\(api.host):\(api.port)\(path)"], timeout: 5)
        return r.status == 0 ? r.out : nil
    }

    func routerBackends(_ name: String) -> Int {
        guard let api = configs.first(where: { $0.name == name })?.config.api, let text = get(api, "/metrics") else { return 0 }
        return text.split(separator: "\n").filter { $0.hasPrefix("legion_router_backends{") }
            .reduce(0) { $0 + Int(Double($1.split(separator: " ").last ?? "") ?? 0) }
    }

    /// Every node in turn: SIGTERM, start again, wait until it sees every member, a Lord is known, its store member
    /// is reachable and its router has its subscriptions back; the Lord last (the roll `legion cluster roll` does).
    func roll(lord: String, log: (String) -> Void) throws {
        let order = configs.sorted { a, b in
            (a.name == lord) != (b.name == lord) ? b.name == lord : a.config.valor < b.config.valor
        }.map(\.name)
        for name in order {
            let backends = routerBackends(name)
            let t0 = Date()
            stopNode(name, signal: SIGTERM)
            try startNode(name)
            log("roll: \(name)\(name == lord ? " (Lord)" : "") stopped and started in \(Int(Date().timeIntervalSince(t0) * 1000)) ms; waiting until healthy")
            let deadline = Date().addingTimeInterval(60)
            var waiting: String? = "starting"
            while Date() < deadline {
                waiting = labNotHealthy(name, backends: backends)
                if waiting == nil { break }
                usleep(200_000)
            }
            if let waiting { throw UserFacingError("\(name) not healthy within 60 s after its restart (\(waiting)); see \(work)/\(name)/node.log") }
            log("roll: \(name) healthy after \(Int(Date().timeIntervalSince(t0) * 1000)) ms")
            Thread.sleep(forTimeInterval: 1)
        }
    }

    func labNotHealthy(_ name: String, backends: Int) -> String? {
        guard let status = labStatus(name) else { return "its API does not answer" }
        let legion = status["legion"] as? [String: Any] ?? [:]
        let members = (legion["members"] as? [Any])?.count ?? 0
        if members < configs.count - 1 { return "it sees \(members) of \(configs.count - 1) members" }
        if legion["lord_name"] as? String == nil { return "no Lord known" }
        if let store = status["store"] as? [String: Any], store["reachable"] as? Bool != true { return "its store member is not reachable" }
        let now = routerBackends(name)
        if now < backends { return "its router has \(now) of \(backends) backends" }
        return nil
    }
}

/// Samples, every 10 ms, which server namespaces carry the VIP (setns on a dedicated thread + getifaddrs).
final class VIPSampler: @unchecked Sendable {
    // @unchecked: `samples` and `running` are only touched under `lock`.
    private let lock = NSLock()
    private var _samples: [DrillObservations.HolderSample] = []
    private var running = false
    private var thread: Thread?
    let nodes: [String]
    let vip: String

    init(nodes: [String], vip: String) {
        self.nodes = nodes
        self.vip = vip
    }

    var samples: [DrillObservations.HolderSample] { lock.withLock { _samples } }

    func start() {
        lock.withLock { running = true }
        let t = Thread { [self] in loop() }
        t.start()
        thread = t
    }

    func stop() { lock.withLock { running = false } }

    /// glibc's setns(2), looked up at run time (Swift's Glibc module hides the _GNU_SOURCE declarations).
    static let setns: (@convention(c) (Int32, Int32) -> Int32)? = {
        guard let symbol = dlsym(nil /* RTLD_DEFAULT */, "setns") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32, Int32) -> Int32).self)
    }()

    private func loop() {
        var fds: [(String, Int32)] = []
        for node in nodes {
            let fd = open("/run/netns/lg-\(node)", O_RDONLY)
            if fd >= 0 { fds.append((node, fd)) }
        }
        defer { for (_, fd) in fds { close(fd) } }
        var target = in_addr()
        inet_pton(AF_INET, vip, &target)
        while lock.withLock({ running }) {
            var holders: [String] = []
            for (node, fd) in fds {
                guard let setns = Self.setns, setns(fd, 0x4000_0000 /* CLONE_NEWNET */) == 0 else { continue }
                var list: UnsafeMutablePointer<ifaddrs>?
                guard getifaddrs(&list) == 0 else { continue }
                var cursor = list
                while let entry = cursor {
                    if let addr = entry.pointee.ifa_addr, addr.pointee.sa_family == sa_family_t(AF_INET) {
                        let sin = UnsafeRawPointer(addr).assumingMemoryBound(to: sockaddr_in.self).pointee
                        if sin.sin_addr.s_addr == target.s_addr { holders.append(node); break }
                    }
                    cursor = entry.pointee.ifa_next
                }
                freeifaddrs(list)
            }
            let sample = DrillObservations.HolderSample(tMs: DrillLab.nowMs(), holders: holders)
            lock.withLock { _samples.append(sample) }
            usleep(10_000)
        }
    }
}

/// Reading the probe's JSON lines and the nodes' audit logs.
enum DrillProbeFile {
    static func lines(_ path: String) -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    static func read(_ path: String) -> (probes: [DrillObservations.Probe], arp: [DrillObservations.ARPRun]) {
        var probes: [DrillObservations.Probe] = []
        var arp: [DrillObservations.ARPRun] = []
        for line in lines(path) {
            guard let t = (line["t"] as? NSNumber)?.int64Value else { continue }
            if let macs = line["arp_macs"] as? Int {
                arp.append(.init(tMs: t, macs: macs))
            } else if let ok = line["ok"] as? Bool {
                probes.append(.init(tMs: t, ok: ok, servedBy: line["by"] as? String, error: line["error"] as? String))
            }
        }
        return (probes, arp)
    }

    static func audit(_ path: String) -> [DrillObservations.AuditEvent] {
        lines(path).compactMap { line in
            guard let t = (line["time_ms"] as? NSNumber)?.int64Value, let node = line["node"] as? String, let event = line["event"] as? String else { return nil }
            return .init(tMs: t, node: node, event: event, leaseMs: (line["lease_ms"] as? NSNumber)?.int64Value, member: line["member"] as? String)
        }
    }
}
