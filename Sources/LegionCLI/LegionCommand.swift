import ArgumentParser

@main
struct LegionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "legion",
        abstract: "legion — a clustered, highly available hosting platform (uWSGI Legion compatible).",
        discussion: """
        Quick start (no root needed):
          legion cluster up          start the local 3-node cluster (cluster-configs/local-3)
          legion cluster status      who is Lord, where the VIP answers
          legion cluster down        stop it

        Supervise uWSGI vassals without a cluster (replaces `uwsgi --emperor DIR`):
          legion emperor /etc/uwsgi/vassals

        Run one node of a real cluster:
          legion node --config /etc/legion/node.toml
        """,
        subcommands: [NodeCommand.self, ClusterCommand.self, EmperorCommand.self, StoreCommand.self, AdminCommand.self, ContainerCommand.self, DrillCommand.self, ConfigCommand.self, SimulateCommand.self,
                      DrillProbeCommand.self,
                      VIPFenceCommand.self]
    )
}
