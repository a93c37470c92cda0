import Api
import ArgumentParser
import Foundation
import Node
import Store
#if canImport(Glibc)
import Glibc
#endif

/// Where the store is: `--store` addresses, `LEGION_STORE`, or the [store] tables of a cluster config folder.
struct StoreOptions: ParsableArguments {
    @Option(help: "Comma-separated store member addresses (IPv4:port). Default: $LEGION_STORE, else the [store] binds of --config-dir.")
    var store: String?

    @Option(help: "Folder of node TOML files to read store addresses from (default: cluster-configs/local-3).")
    var configDir: String?

    @Option(help: "Seconds a call may spend retrying leader changes before it fails.")
    var timeout: Double = 5

    func addresses() throws -> [String] {
        if let list = store ?? ProcessInfo.processInfo.environment["LEGION_STORE"] {
            let addresses = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard !addresses.isEmpty else { throw UserFacingError("--store is empty; give IPv4:port addresses, e.g. 127.0.0.1:17301") }
            return addresses
        }
        let cluster = try LocalCluster(options: try ClusterCommand.Options.parse(configDir.map { ["--config-dir", $0] } ?? []))
        let addresses = cluster.nodes.compactMap { $0.config.store?.bind.description }
        guard !addresses.isEmpty else {
            throw UserFacingError("no [store] table in the node configs; pass --store ADDR[,ADDR…]")
        }
        return addresses
    }

    func client() throws -> StoreClient {
        var options = StoreClient.Options(nodes: try addresses())
        options.budget = .milliseconds(Int64(timeout * 1000))
        let configs = (try? LocalCluster(options: try ClusterCommand.Options.parse(configDir.map { ["--config-dir", $0] } ?? [])))?.nodes.map(\.config) ?? []
        if let name = configs.first?.store?.database, store == nil {
            options.database = name
        }
        // With the cluster's configs at hand, a write tells the nodes at once (they read the change log now) instead
        // of waiting for the store leader's next check.
        if let first = configs.first, store == nil, ProcessInfo.processInfo.environment["LEGION_STORE"] == nil {
            let members = configs.map(\.bind)
            let origin = "legion-cli-\(getpid())"
            options.afterWrite = { StoreChangeHints.noticeWrite(config: first, members: members, origin: origin) }
        }
        return StoreClient(options: options)
    }
}

extension DqliteRows {
    /// A plain aligned table for humans.
    var table: String {
        guard !columns.isEmpty else { return "" }
        let cells = rows.map { $0.map { v -> String in
            let s = v.description.replacingOccurrences(of: "\n", with: "⏎")
            return s.count > 48 ? String(s.prefix(45)) + "…" : s
        } }
        var widths = columns.map(\.count)
        for row in cells { for (i, c) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ values: [String]) -> String {
            values.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }
        return ([line(columns)] + cells.map(line)).joined(separator: "\n") + "\n(\(rows.count) row\(rows.count == 1 ? "" : "s"))"
    }
}

/// Reads a password without echo from the terminal, or one line from standard input.
enum PasswordInput {
    static func read(fromStdin: Bool, prompt: String = "Password: ") throws -> String {
        if fromStdin {
            guard let line = readLine(strippingNewline: true) else { throw UserFacingError("--password-stdin: standard input is empty") }
            return line
        }
        let fd = open("/dev/tty", O_RDWR)
        guard fd >= 0 else { throw UserFacingError("no terminal to ask for the password; pipe it with --password-stdin") }
        defer { close(fd) }
        var old = termios()
        tcgetattr(fd, &old)
        var silent = old
        silent.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(fd, TCSAFLUSH, &silent)
        defer { tcsetattr(fd, TCSAFLUSH, &old) }
        _ = prompt.withCString { write(fd, $0, strlen($0)) }
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while Glibc.read(fd, &byte, 1) == 1, byte != 10 { bytes.append(byte) }
        _ = "\n".withCString { write(fd, $0, 1) }
        return String(decoding: bytes, as: UTF8.self)
    }
}
