import Foundation
import Store

/// Container networking (`[hosting] network = "routed"`), as pure functions of the desired state: each container
/// has a network namespace of its own with one veth whose host end (`lv<uid>`) carries the gateway 10.0.0.1/32 and
/// a /32 route to the container's address (uwsgi.it's formula: 10.0.0.0 | (id + 2)); no bridge, so containers on
/// one node meet only through the node's forwarding, where one nftables table decides:
///
/// - a container only sends from its own address (anti-spoofing: port → address set);
/// - container ↔ container traffic (between two of this node's veths, or to/from a linked container routed to
///   another server) passes only for **two-sided** links (A linked B and B linked A, §2.4/§3.10),
///   one element per direction, on one node or across nodes (a remote peer is routed via its server's address);
/// - containers reach the node itself only on the router ports (the store, Legion and API ports stay out of reach;
///   vassals subscribe through the unix sockets bound into the container);
/// - nothing from outside reaches a container except replies and the port mappings (DNAT);
/// - traffic leaving for anything but a linked container is masqueraded to the node's address;
/// - the admin `rules` rows (allow/deny, in/out, highest priority first) then decide a container's traffic with the
///   outside, before the defaults (out: allowed; in: replies and port mappings only).
///
/// Containers are told apart by interface (and, for remote peers, by the routed addresses), never by "10.0.0.0/8":
/// the servers' own network may well be inside it.
///
/// The whole table is replaced in one `nft -f` transaction whenever it changes (live: links open and close without
/// restarting anything). The shell (`ContainerNetworker`) runs the scripts and the ruleset this type writes.
public enum ContainerNetwork {
    /// The containers' gateway (as on uwsgi.it) and their network.
    public static let gateway = "10.0.0.1"
    public static let network = "10.0.0.0/8"

    /// One mutual link seen from this node: `local` runs here, `peer` on the server at `peerAddress`.
    public typealias Link = DesiredState.Link
    public typealias PortMapping = DesiredState.PortMapping

    /// Everything the firewall depends on.
    public struct Inputs: Sendable, Equatable {
        public var containers: [(uid: Int64, ip: String)]
        public var links: [Link]
        public var portMappings: [PortMapping]
        /// TCP ports of the node containers may reach (its routers).
        public var openPorts: [Int]
        /// Admin rules for traffic with the outside, in order (highest priority first).
        public var rules: [DesiredState.Rule]

        public init(containers: [(uid: Int64, ip: String)], links: [Link], portMappings: [PortMapping], openPorts: [Int],
                    rules: [DesiredState.Rule] = []) {
            self.containers = containers
            self.links = links
            self.portMappings = portMappings
            self.openPorts = openPorts
            self.rules = rules
        }

        public static func == (a: Inputs, b: Inputs) -> Bool {
            a.containers.map(\.uid) == b.containers.map(\.uid) && a.containers.map(\.ip) == b.containers.map(\.ip)
                && a.links == b.links && a.portMappings == b.portMappings && a.openPorts == b.openPorts && a.rules == b.rules
        }
    }

    /// The host end of a container's veth (≤ 15 bytes: uids stay below 10^13).
    public static func hostInterface(uid: Int64) -> String {
        precondition(uid > 0 && uid < 10_000_000_000_000, "a container uid is positive and short enough for an interface name")
        return "lv\(uid)"
    }

    /// The container's network namespace (`/run/netns/<name>`; the node's name keeps two nodes on one host apart).
    public static func namespace(node: String, uid: Int64) -> String { "legion-\(node)-\(uid)" }

    public static func namespacePath(node: String, uid: Int64) -> String { "/run/netns/" + namespace(node: node, uid: uid) }

    /// The nftables table of this node (letters, digits and '_' only).
    public static func tableName(node: String) -> String {
        "legion_" + String(node.map { $0.isLetter || $0.isNumber ? $0 : "_" })
    }

    /// The container's address, if it is a valid 10.0.0.0/8 IPv4 literal (anything else is refused: it would land
    /// in a firewall rule).
    static func checkedIP(_ ip: String) -> String? {
        ip.hasPrefix("10.") && AdminStore.isIPv4Literal(ip) ? ip : nil
    }

    /// The mutual links in the direction pairs the firewall lets through (both ways for each link).
    public static func linkElements(_ links: [Link]) -> [(from: String, to: String)] {
        var seen = Set<String>()
        var out: [(String, String)] = []
        for link in links {
            guard let a = checkedIP(AdminStore.containerIP(id: link.local - AdminStore.baseUID)),
                  let b = checkedIP(AdminStore.containerIP(id: link.peer - AdminStore.baseUID)) else { continue }
            for (x, y) in [(a, b), (b, a)] where seen.insert("\(x) . \(y)").inserted {
                out.append((x, y))
            }
        }
        return out
    }

    /// The complete ruleset for `nft -f`: creates the table if missing, deletes it and defines it again, in one
    /// transaction (a failure leaves the previous rules in place).
    public static func ruleset(node: String, inputs: Inputs) -> String {
        let table = tableName(node: node)
        let containers = inputs.containers.compactMap { c in checkedIP(c.ip).map { (uid: c.uid, ip: $0) } }
        func elements(_ items: [String]) -> String { items.isEmpty ? "" : " elements = { \(items.joined(separator: ", ")) }" }
        let ports = containers.map { "\"\(hostInterface(uid: $0.uid))\"" }
        let portIPs = containers.map { "\"\(hostInterface(uid: $0.uid))\" . \($0.ip)" }
        let links = linkElements(inputs.links).map { "\($0.from) . \($0.to)" }
        let ipOf = Dictionary(containers.map { ($0.uid, $0.ip) }, uniquingKeysWith: { a, _ in a })
        var dnat: [String] = []
        for m in inputs.portMappings.sorted(by: { ($0.proto, $0.publicPort) < ($1.proto, $1.publicPort) }) {
            guard m.proto == "tcp" || m.proto == "udp", (1...65535).contains(m.publicPort), (1...65535).contains(m.privatePort),
                  let ip = ipOf[m.uid] else { continue }
            dnat.append("    iifname != @ports \(m.proto) dport \(m.publicPort) dnat ip to \(ip):\(m.privatePort)")
        }
        let open = inputs.openPorts.filter { (1...65535).contains($0) }.sorted()
        var ruleLines: [String] = []
        for rule in inputs.rules where ipOf[rule.uid] != nil && AdminStore.isRuleAddress(rule.src) && AdminStore.isRuleAddress(rule.dst) {
            guard let verdict = ["allow": "accept", "deny": "drop"][rule.action], rule.direction == "in" || rule.direction == "out" else { continue }
            let port = "\"\(hostInterface(uid: rule.uid))\""
            var line = "    " + (rule.direction == "out" ? "iifname \(port)" : "oifname \(port)")
            if rule.src != "any" { line += " ip saddr \(rule.src)" }
            if rule.dst != "any" { line += " ip daddr \(rule.dst)" }
            ruleLines.append(line + " counter \(verdict)")
        }
        let local = containers.map(\.ip)
        let remote = remoteRoutes(inputs.links, localUIDs: Set(containers.map(\.uid))).map(\.ip)
        var lines = [
            "table inet \(table)",
            "delete table inet \(table)",
            "table inet \(table) {",
            "  set ports { type ifname;\(elements(ports)) }",
            "  set port_ip { type ifname . ipv4_addr;\(elements(portIPs)) }",
            "  set local { type ipv4_addr;\(elements(local)) }",
            "  set remote { type ipv4_addr;\(elements(remote)) }",
            "  set links { type ipv4_addr . ipv4_addr;\(elements(links)) }",
            "  chain input { type filter hook input priority filter; policy accept;",
            "    iifname @ports jump from_container",
            "  }",
            "  chain from_container {",
            "    meta nfproto ipv6 drop",
            "    iifname . ip saddr != @port_ip counter drop",
            "    ct state established,related accept",
            "    icmp type echo-request accept",
        ]
        if !open.isEmpty { lines.append("    tcp dport { \(open.map(String.init).joined(separator: ", ")) } accept") }
        lines += [
            "    counter drop",
            "  }",
            "  chain forward { type filter hook forward priority filter; policy accept;",
            "    iifname @ports meta nfproto ipv6 drop",
            "    iifname @ports iifname . ip saddr != @port_ip counter drop",
            "    iifname @ports oifname @ports jump c2c",
            "    iifname @ports ip daddr @remote jump c2c",
            "    oifname @ports ip saddr @remote jump c2c",
        ]
        lines += ruleLines   // admin rules: traffic with the outside only (c2c was decided above)
        lines += [
            "    oifname @ports ct state established,related accept",
            "    oifname @ports ct status dnat accept",
            "    oifname @ports counter drop",
            "  }",
            "  chain c2c {",
            "    ip saddr . ip daddr @links accept",
            "    counter drop",
            "  }",
            "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;",
        ]
        lines += dnat
        lines += [
            "  }",
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;",
            "    ip saddr @local ip daddr != @remote oifname != @ports masquerade",
            "  }",
            "}",
        ]
        return lines.joined(separator: "\n") + "\n"
    }

    /// Routes to linked containers on other servers (destination /32 → that server's address), deduplicated.
    public static func remoteRoutes(_ links: [Link], localUIDs: Set<Int64>) -> [(ip: String, via: String)] {
        var out: [String: String] = [:]
        for link in links where !localUIDs.contains(link.peer) {
            guard let ip = checkedIP(AdminStore.containerIP(id: link.peer - AdminStore.baseUID)), AdminStore.isIPv4Literal(link.peerAddress) else { continue }
            out[ip] = link.peerAddress
        }
        return out.keys.sorted().map { (ip: $0, via: out[$0] ?? "") }
    }

    /// Creates (idempotently) the container's namespace, its veth pair, addresses and routes. `sh -e`.
    public static func setupScript(node: String, uid: Int64, ip: String) -> String? {
        guard let ip = checkedIP(ip) else { return nil }
        let ns = namespace(node: node, uid: uid)
        let veth = hostInterface(uid: uid)
        return """
            set -e
            [ -e /run/netns/\(ns) ] || ip netns add \(ns)
            if ! ip link show \(veth) >/dev/null 2>&1; then
              ip -n \(ns) link del eth0 2>/dev/null || true
              ip link add \(veth) type veth peer name eth0 netns \(ns)
            fi
            ip addr replace \(gateway)/32 dev \(veth)
            ip link set \(veth) up
            ip route replace \(ip)/32 dev \(veth) src \(gateway)
            ip -n \(ns) link set lo up
            ip -n \(ns) addr replace \(ip)/32 dev eth0
            ip -n \(ns) link set eth0 up
            ip -n \(ns) route replace \(gateway) dev eth0 scope link
            ip -n \(ns) route replace default via \(gateway) dev eth0 src \(ip)
            """ + "\n"
    }

    /// Removes the container's namespace (its veth pair and the /32 route go with it).
    public static func teardownScript(node: String, uid: Int64) -> String {
        let ns = namespace(node: node, uid: uid)
        return """
            ip link del \(hostInterface(uid: uid)) 2>/dev/null
            ip netns del \(ns) 2>/dev/null
            true
            """ + "\n"
    }
}
