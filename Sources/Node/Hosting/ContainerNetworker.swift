import Emperor
import Foundation
import Logging
import Store
import Supervisor
import Synchronization

/// The shell of `ContainerNetwork`: turns on forwarding, replaces the node's nftables table when its inputs change,
/// keeps the routes to linked containers on other servers, and removes a container's namespace when it leaves.
/// Each container's own namespace and veth are made by its `start.sh` (every start, idempotently) just before runc.
final class ContainerNetworker: Sendable {
    private let node: String
    private let openPorts: [Int]
    /// Where the last ruleset is written before `nft -f` reads it (kept: operators can read what is in force).
    private let rulesetPath: String
    private let logger: Logger
    private let applied = Mutex<(inputs: ContainerNetwork.Inputs?, routes: [String: String])>((nil, [:]))

    init(node: String, openPorts: [Int], rulesetPath: String, logger: Logger) {
        self.node = node
        self.rulesetPath = rulesetPath
        self.openPorts = openPorts
        self.logger = logger
    }

    /// At start: the tools are there and the node forwards IPv4 (in its own network namespace).
    func prepare() async throws {
        for tool in ["ip", "nft"] where resolveExecutable(tool) == nil {
            throw EmperorError("hosting: network = \"routed\" needs `\(tool)`; apt-get install iproute2 nftables (scripts/setup --test does)")
        }
        let fd = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY)
        let written = fd >= 0 ? write(fd, "1\n", 2) : -1
        if fd >= 0 { close(fd) }
        guard written == 2 else {
            throw EmperorError("hosting: cannot turn on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward); containers' networks need it")
        }
    }

    /// Brings the firewall and the remote routes in line with the desired state (nothing runs if nothing changed).
    func apply(_ desired: DesiredState) async {
        let inputs = ContainerNetwork.Inputs(containers: desired.containers.map { (uid: $0.uid, ip: $0.ip) }, links: desired.links ?? [],
                                             portMappings: desired.portMappings ?? [], openPorts: openPorts, rules: desired.rules ?? [])
        if applied.withLock({ $0.inputs }) != inputs {
            let text = ContainerNetwork.ruleset(node: node, inputs: inputs)
            guard FileManager.default.createFile(atPath: rulesetPath, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
                logger.error("hosting: cannot write \(rulesetPath); the container firewall is not updated")
                return
            }
            let result = await ProcessSupervisor.shared.run(SpawnSpec(executable: "nft", arguments: ["-f", rulesetPath]), timeoutSeconds: 10,
                                                            captureOutput: true)
            if result.status == 0 {
                applied.withLock { $0.inputs = inputs }
                let pairs = ContainerNetwork.linkElements(inputs.links).count / 2
                logger.notice("hosting: firewall applied (\(inputs.containers.count) containers, \(pairs) two-sided links, \(inputs.portMappings.count) port mappings)")
            } else {
                logger.error("hosting: nft refused the container firewall (\(result.error ?? result.output.trimmingCharacters(in: .whitespacesAndNewlines))); the previous rules stay")
            }
        }
        let wanted = Dictionary(ContainerNetwork.remoteRoutes(inputs.links, localUIDs: Set(desired.containers.map(\.uid))).map { ($0.ip, $0.via) },
                                uniquingKeysWith: { a, _ in a })
        let current = applied.withLock { $0.routes }
        for (ip, via) in wanted where current[ip] != via {
            let result = await run(["ip", "route", "replace", ip + "/32", "via", via])
            if result { applied.withLock { $0.routes[ip] = via } }
            logger.info("hosting: route to linked container \(ip) via \(via)\(result ? "" : " failed")")
        }
        for ip in current.keys where wanted[ip] == nil {
            _ = await run(["ip", "route", "del", ip + "/32", "via", current[ip] ?? ""])
            applied.withLock { _ = $0.routes.removeValue(forKey: ip) }
            logger.info("hosting: route to \(ip) removed (no link to it any more)")
        }
    }

    /// A container left this node: its namespace, veth pair and /32 route go.
    func teardown(uid: Int64) async {
        let result = await ProcessSupervisor.shared.run(SpawnSpec(executable: "/bin/sh", arguments: ["-c", ContainerNetwork.teardownScript(node: node, uid: uid)]),
                                                        timeoutSeconds: 10, captureOutput: true)
        if result.status != 0 {
            logger.warning("hosting: container \(uid): network teardown: \(result.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    private func run(_ argv: [String]) async -> Bool {
        let result = await ProcessSupervisor.shared.run(SpawnSpec(executable: argv[0], arguments: Array(argv.dropFirst())), timeoutSeconds: 10,
                                                        captureOutput: true)
        if result.status != 0 {
            logger.warning("hosting: \(argv.joined(separator: " ")): \(result.error ?? result.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return result.status == 0
    }
}
