import ArgumentParser
import Foundation
import Node

struct ContainerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "container",
        abstract: "Operate on this server's running containers (root).",
        subcommands: [Enter.self]
    )

    struct Enter: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a shell (or a command) inside a running container, as its user.",
            discussion: """
            Uses `runc exec`, so the session is inside the container exactly as its own processes: namespaces,
            cgroup limits, seccomp filter, no new privileges, the container's uid (never root). Customers get the
            same through ssh (sshd's ForceCommand legion-shell; scripts/install --ssh).

              legion container enter 30001
              legion container enter 30001 -- ps aux
            """
        )

        @Argument(help: "Container uid (30001…).")
        var uid: Int64

        @Option(help: "The node's name, when more than one node on this server runs containers (runc id legion-NODE-UID).")
        var node: String?

        @Option(help: "runc's state directory.")
        var runcRoot: String = "/run/runc"

        @Argument(parsing: .postTerminator, help: "The command to run (default: a login shell).")
        var command: [String] = []

        func validate() throws {
            guard uid > 30000, uid <= 30000 + 0xFFFFFF else { throw ValidationError("a container uid is 30001 or more (legion admin container list)") }
        }

        func run() throws {
            guard getuid() == 0 else { throw ValidationError("entering a container needs root (runc exec)") }
            let id = try Self.runcID(uid: uid, node: node, root: runcRoot)
            guard let runc = ["/usr/sbin/runc", "/usr/bin/runc"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
                throw ValidationError("runc is not installed; apt-get install runc")
            }
            var argv = [runc, "--root", runcRoot, "exec"]
            if isatty(STDIN_FILENO) != 0 { argv.append("-t") }
            argv += ["--user", "\(uid):\(uid)", "--cwd", "/containers/\(uid)", "--env", "HOME=/containers/\(uid)", "--env", "USER=\(uid)",
                     "--env", "LOGNAME=\(uid)", "--env", "PATH=/usr/local/bin:/usr/bin:/bin"]
            if let term = ProcessInfo.processInfo.environment["TERM"] { argv += ["--env", "TERM=\(term)"] }
            argv.append(id)
            argv += command.isEmpty ? ["/bin/sh", "-c", "command -v bash >/dev/null && exec bash -l; exec sh -l"] : command
            let cArgs = argv.map { strdup($0) } + [nil]
            execv(runc, cArgs)
            throw ValidationError("cannot run \(runc): \(String(cString: strerror(errno)))")
        }

        /// The running container's runc id: `legion-<node>-<uid>` in runc's state directory.
        static func runcID(uid: Int64, node: String?, root: String) throws -> String {
            if let node { return "legion-\(node)-\(uid)" }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
            let matches = names.filter { $0.hasPrefix("legion-") && $0.hasSuffix("-\(uid)") && $0.count > "legion--\(uid)".count }.sorted()
            switch matches.count {
            case 1: return matches[0]
            case 0: throw ValidationError("container \(uid) is not running on this server (no legion-*-\(uid) in \(root)); see legion admin container list")
            default: throw ValidationError("more than one node here runs container \(uid) (\(matches.joined(separator: ", "))); choose one with --node")
            }
        }
    }
}
