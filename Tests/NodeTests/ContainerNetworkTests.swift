import Foundation
import Store
import Testing
@testable import Node

@Suite struct ContainerNetworkTests {
    static let inputs = ContainerNetwork.Inputs(
        containers: [(uid: 30001, ip: "10.0.0.3"), (uid: 30002, ip: "10.0.0.4")],
        links: [.init(local: 30001, peer: 30002, peerAddress: "192.0.2.2"), .init(local: 30002, peer: 30001, peerAddress: "192.0.2.2"),
                .init(local: 30001, peer: 30007, peerAddress: "192.0.2.3")],
        portMappings: [.init(proto: "tcp", publicPort: 9080, uid: 30001, privatePort: 8000),
                       .init(proto: "udp", publicPort: 9053, uid: 30002, privatePort: 5353),
                       .init(proto: "tcp", publicPort: 9081, uid: 39999, privatePort: 8000)],   // not on this node: ignored
        openPorts: [18080, 18443])

    @Test func eachMutualLinkOpensBothDirectionsOnceAndRemotePeersAreRouted() {
        let pairs = ContainerNetwork.linkElements(Self.inputs.links).map { "\($0.from)>\($0.to)" }
        #expect(pairs == ["10.0.0.3>10.0.0.4", "10.0.0.4>10.0.0.3", "10.0.0.3>10.0.0.9", "10.0.0.9>10.0.0.3"])
        let routes = ContainerNetwork.remoteRoutes(Self.inputs.links, localUIDs: [30001, 30002])
        #expect(routes.map { "\($0.ip) via \($0.via)" } == ["10.0.0.9 via 192.0.2.3"])
    }

    @Test func theRulesetNamesEveryPortAddressLinkAndMapping() {
        let text = ContainerNetwork.ruleset(node: "n-2", inputs: Self.inputs)
        #expect(text.hasPrefix("table inet legion_n_2\ndelete table inet legion_n_2\n"))
        #expect(text.contains(#"set ports { type ifname; elements = { "lv30001", "lv30002" } }"#))
        #expect(text.contains(#"elements = { "lv30001" . 10.0.0.3, "lv30002" . 10.0.0.4 }"#))
        #expect(text.contains("set remote { type ipv4_addr; elements = { 10.0.0.9 } }"))
        #expect(text.contains("iifname != @ports tcp dport 9080 dnat ip to 10.0.0.3:8000"))
        #expect(text.contains("iifname != @ports udp dport 9053 dnat ip to 10.0.0.4:5353"))
        #expect(!text.contains("9081"), "a mapping to a container not on this node is not applied")
        #expect(text.contains("tcp dport { 18080, 18443 } accept"))
        #expect(text.contains("ip saddr @local ip daddr != @remote oifname != @ports masquerade"))
        // Containers are told apart by interface, never by the 10/8 prefix (servers' networks may be inside it).
        #expect(!text.contains("10.0.0.0/8"))
    }

    @Test func adminRulesComeAfterLinksInPriorityOrderAndOnlyForThisNodesContainers() {
        var inputs = Self.inputs
        inputs.rules = [.init(uid: 30001, direction: "out", src: "any", dst: "203.0.113.0/24", action: "deny"),
                        .init(uid: 30002, direction: "in", src: "198.51.100.7", dst: "any", action: "allow"),
                        .init(uid: 39999, direction: "out", src: "any", dst: "any", action: "deny"),          // not here
                        .init(uid: 30001, direction: "out", src: "any", dst: "1.2.3.4; flush", action: "deny"),  // never reaches nft
                        .init(uid: 30001, direction: "out", src: "any", dst: "any", action: "gateway")]          // unsupported
        let text = ContainerNetwork.ruleset(node: "n2", inputs: inputs)
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let deny = try? #require(lines.firstIndex(of: #"iifname "lv30001" ip daddr 203.0.113.0/24 counter drop"#))
        let allow = try? #require(lines.firstIndex(of: #"oifname "lv30002" ip saddr 198.51.100.7 counter accept"#))
        let c2c = lines.firstIndex(of: "oifname @ports ip saddr @remote jump c2c") ?? Int.max
        let closing = lines.firstIndex(of: "oifname @ports counter drop") ?? -1
        #expect(deny.map { $0 > c2c && $0 < closing } == true && allow.map { $0 > (deny ?? 0) && $0 < closing } == true)
        #expect(!text.contains("lv39999") && !text.contains("flush") && !text.contains("gateway"))
        #expect(AdminStore.isRuleAddress("10.0.0.0/8") && AdminStore.isRuleAddress("any") && !AdminStore.isRuleAddress("10.0.0.0/33")
                && !AdminStore.isRuleAddress("010.0.0.1") && !AdminStore.isRuleAddress("::1"))
    }

    @Test func noContainersGiveAValidEmptyTableAndBadAddressesNeverReachTheRules() {
        let empty = ContainerNetwork.ruleset(node: "n1", inputs: .init(containers: [], links: [], portMappings: [], openPorts: []))
        #expect(empty.contains("set ports { type ifname; }"))
        #expect(!empty.contains("tcp dport {"))
        let hostile = ContainerNetwork.Inputs(containers: [(uid: 30001, ip: "10.0.0.3; flush ruleset"), (uid: 30002, ip: "192.168.1.1")],
                                              links: [.init(local: 30001, peer: 30002, peerAddress: "1.2.3.4; drop")], portMappings: [],
                                              openPorts: [0, 70000])
        let text = ContainerNetwork.ruleset(node: "n1", inputs: hostile)
        #expect(!text.contains("flush") && !text.contains("192.168") && !text.contains("70000"))
        #expect(ContainerNetwork.remoteRoutes(hostile.links, localUIDs: [30001]).isEmpty)
        #expect(ContainerNetwork.setupScript(node: "n1", uid: 30001, ip: "10.0.0.3/8") == nil)
        #expect(ContainerNetwork.setupScript(node: "n1", uid: 30001, ip: "010.0.0.3") == nil)
    }

    @Test func theSetupScriptIsIdempotentAndTheBundleJoinsTheNamespace() throws {
        let script = try #require(ContainerNetwork.setupScript(node: "n2", uid: 30001, ip: "10.0.0.3"))
        #expect(script.hasPrefix("set -e\n[ -e /run/netns/legion-n2-30001 ] || ip netns add legion-n2-30001\n"))
        #expect(script.contains("ip route replace 10.0.0.3/32 dev lv30001 src 10.0.0.1"))
        #expect(script.contains("ip -n legion-n2-30001 route replace default via 10.0.0.1 dev eth0 src 10.0.0.3"))
        #expect(!script.contains("ip addr add"), "a restart must not fail on an address already there")
        let container = DesiredState.Container(uid: 30001, name: "web", customer: "c", memory: 128, storage: 256, distro: nil, ip: "10.0.0.3",
                                               lastRebootMs: 1, sshKeys: nil)
        let paths = ContainerBundle.Paths(rootfs: "/r", bundle: "/b", home: "/h", legion: "/l", libraryDirectories: [], cgroupParent: "/legion/n2",
                                          subscribeDir: "/s", networkNamespace: ContainerNetwork.namespacePath(node: "n2", uid: 30001))
        let config = ContainerBundle.config(for: container, paths: paths, args: ["x"])
        let namespaces = try #require((config["linux"] as? [String: Any])?["namespaces"] as? [[String: String]])
        #expect(namespaces.contains(["type": "network", "path": "/run/netns/legion-n2-30001"]))
    }
}
