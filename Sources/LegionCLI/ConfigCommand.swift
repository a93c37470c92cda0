import ArgumentParser
import Node

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Work with node configuration files.",
        subcommands: [Check.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate node configuration files; errors name the key and the problem.")

        @Argument(help: "TOML files to check.")
        var files: [String]

        func run() throws {
            var failed = 0
            for file in files {
                do {
                    let c = try NodeConfig.load(path: file)
                    print("\(file): ok (node \(c.name), legion \(c.legionName), \(c.mode.rawValue), valor \(c.valor), quorum \(c.quorum) of \(c.nodes.count + 1), vip \(c.vip.driver.rawValue))")
                } catch {
                    failed += 1
                    print("\(file): error: \(error)")
                }
            }
            if failed > 0 { throw ExitCode(2) }
        }
    }
}
