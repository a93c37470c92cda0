import ArgumentParser
import Foundation
import Logging
import Node
import NodeRuntime

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run one legion node in the foreground until SIGTERM or SIGINT.",
        discussion: """
        On SIGTERM/SIGINT the node shuts down cleanly: it resigns if Lord (failover IP released,
        unlord hooks run), announces its death so peers elect a new Lord at once, runs the death
        hooks and exits 0. Election events go to DATA_DIR/audit.jsonl; the pid to DATA_DIR/node.pid.
        """
    )

    @Option(name: .long, help: "The node's TOML configuration file.")
    var config: String

    @Option(name: .long, help: "Override [node].data_dir.")
    var dataDir: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        CLILogging.bootstrap(level: logLevel)
        var nodeConfig: NodeConfig
        do {
            nodeConfig = try NodeConfig.load(path: config)
        } catch {
            throw UserFacingError("\(error)")
        }
        if let dataDir { nodeConfig.setDataDir(dataDir) }
        let logger = Logger(label: "legion.\(nodeConfig.name)")
        try FileManager.default.createDirectory(atPath: nodeConfig.dataDir, withIntermediateDirectories: true)
        let pidFile = nodeConfig.dataDir + "/node.pid"
        let pid = ProcessInfo.processInfo.processIdentifier
        try "\(pid)\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: pidFile) }

        let runtime = NodeRuntime(config: nodeConfig, logger: logger)
        do {
            try await runtime.run()
        } catch let error as NodeRuntimeError {
            throw UserFacingError(error.description)
        } catch {
            throw UserFacingError("node \(nodeConfig.name) stopped: \(error)")
        }
    }
}
