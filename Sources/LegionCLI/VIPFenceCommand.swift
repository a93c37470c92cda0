import ArgumentParser
import Foundation
import Supervisor
import Node

struct VIPFenceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vip-fence",
        abstract: "(internal) Watchdog started by a node with the iproute2 VIP driver.",
        discussion: """
        Reads `hold DEADLINE_NS` / `idle` lines from its parent node on standard input and removes
        the VIP (`ip addr del`) if the parent dies or the lease deadline passes without renewal.
        """,
        shouldDisplay: false
    )

    @Option(help: "The VIP with prefix, e.g. 10.0.0.100/24.")
    var address: String

    @Option(help: "The interface carrying the VIP.")
    var interface: String

    @Option(help: "The node's pid (the fence exits when it is re-parented away from it).")
    var parent: Int32

    func run() throws {
        let cidr = address
        let interface = self.interface
        VIPFence.run(cidr: cidr, interface: interface, parent: parent) { why in
            let ip = FileManager.default.fileExists(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip"
            _ = ProcessSupervisor.shared.runBlocking(SpawnSpec(executable: ip, arguments: ["-4", "addr", "del", cidr, "dev", interface]),
                                                     timeoutSeconds: 5, captureOutput: true)
            FileHandle.standardError.write(Data("legion vip-fence: removed \(cidr) from \(interface): \(why)\n".utf8))
        }
    }
}
