import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import Node
import Store

struct StoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Inspect and exercise the replicated control-plane store (embedded dqlite).",
        subcommands: [Status.self, Query.self, Load.self, Verify.self, Recover.self]
    )

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Leader, members and roles, schema version and each node's last applied change.")

        @OptionGroup var store: StoreOptions

        @Flag(help: "Print JSON: {\"leader\", \"members\": [{\"id\", \"address\", \"role\", \"reachable\", \"applied_seq\"}], \"last_change_seq\", \"schema_version\"}.")
        var json = false

        func run() async throws {
            let client = try store.client()
            defer { Task { await client.close() } }
            let leader: (id: UInt64, address: String)
            let members: [DqliteMember]
            do {
                leader = try await client.leader()
                members = try await client.members()
            } catch {
                if json {
                    print(JSONValue.object([("leader", .null), ("error", .string("\(error)"))]).serialized)
                }
                throw UserFacingError("\(error)")
            }
            let lastSeq = (try? await client.query("SELECT coalesce(max(seq), 0) FROM change_log"))?.scalar?.int
            let schema = (try? await client.query("SELECT coalesce(max(version), 0) FROM schema_migrations"))?.scalar?.int
            // Each node's own view (applied change, snapshot), when its API is reachable.
            var applied: [String: Int64] = [:]
            if store.store == nil, let cluster = try? LocalCluster(options: try ClusterCommand.Options.parse(store.configDir.map { ["--config-dir", $0] } ?? [])) {
                for node in cluster.nodes {
                    guard let api = node.config.api, let bind = node.config.store?.bind.description,
                          let response = HTTPProbe.get(host: api.host, port: api.port, path: "/status", timeoutMs: 300),
                          let object = try? JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any],
                          let st = object["store"] as? [String: Any], let seq = st["applied_seq"] as? Int
                    else { continue }
                    applied[bind] = Int64(seq)
                }
            }
            var reachable: [UInt64: Bool] = [:]
            for member in members {
                let conn = try? await DqliteConnection.connect(to: member.address, group: MultiThreadedEventLoopGroup.singleton, timeout: .milliseconds(300))
                reachable[member.id] = conn != nil
                conn?.close()
            }
            if json {
                print(JSONValue.object([
                    ("leader", .object([("id", .uint(leader.id)), ("address", .string(leader.address))])),
                    ("members", .array(members.map { m in
                        .object([("id", .uint(m.id)), ("address", .string(m.address)), ("role", .string(m.role.description)),
                                 ("reachable", .bool(reachable[m.id] ?? false)), ("applied_seq", applied[m.address].map { .int($0) } ?? .null)])
                    })),
                    ("last_change_seq", lastSeq.map { .int($0) } ?? .null),
                    ("schema_version", schema.map { .int($0) } ?? .null),
                ]).serialized)
                return
            }
            print("leader: node \(leader.id) at \(leader.address)")
            print("schema version: \(schema.map(String.init) ?? "?"), last change: \(lastSeq.map(String.init) ?? "?")")
            for m in members {
                let seq = applied[m.address].map { "applied \($0)" } ?? "applied ?"
                print("  node \(m.id)  \(m.address)  \(m.role)\(m.id == leader.id ? " (leader)" : "")  \(reachable[m.id] == true ? "up" : "DOWN")  \(seq)")
            }
        }
    }

    struct Query: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a read-only SQL query on the leader (SELECT/WITH/EXPLAIN).")

        @OptionGroup var store: StoreOptions

        @Argument(help: "The SQL query; use ? for parameters.")
        var sql: String

        @Option(name: .customLong("param"), help: "A parameter (integers are bound as integers, the rest as text). Repeatable.")
        var parameters: [String] = []

        @Flag(help: "Print rows as a JSON array of objects.")
        var json = false

        func run() async throws {
            let head = sql.trimmingCharacters(in: .whitespacesAndNewlines).prefix(8).uppercased()
            guard head.hasPrefix("SELECT") || head.hasPrefix("WITH") || head.hasPrefix("EXPLAIN") else {
                throw UserFacingError("store query runs reads only (SELECT, WITH, EXPLAIN); change data with `legion admin`")
            }
            let client = try store.client()
            defer { Task { await client.close() } }
            do {
                let rows = try await client.query(sql, parameters.map { Int64($0).map(DqliteValue.integer) ?? .text($0) })
                print(json ? rows.json.serialized : rows.table)
            } catch {
                throw UserFacingError("\(error)")
            }
        }
    }

    struct Load: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write idempotent rows as fast as possible (benchmark and durability checker).",
            discussion: """
            Each write inserts one row into TABLE with its own request id, through StoreClient.write (retried
            across leader changes, applied at most once). Acknowledged request ids are appended to --acked-file;
            `legion store verify` then proves each is present exactly once. The last line is
            `store clients=N writes=N writes_per_s=… p50_ms=… p99_ms=… retried=… unconfirmed=…`.
            """
        )

        @OptionGroup var store: StoreOptions

        @Option(help: "Concurrent clients (each its own connection).")
        var clients = 1

        @Option(help: "Total writes (split across clients). 0 = until --duration ends.")
        var writes = 1000

        @Option(help: "Stop after this many seconds (0 = no limit).")
        var duration: Double = 0

        @Option(help: "Table to write (created if missing).")
        var table = "store_checker"

        @Option(help: "Append each acknowledged request id to this file.")
        var ackedFile: String?

        @Option(help: "Prefix of request ids (unique per run).")
        var run = String(UUID().uuidString.prefix(8))

        @Option(help: "Stop cleanly once this file exists (for test harnesses).")
        var stopFile: String?

        @Flag(help: "Plain autocommit INSERTs (no request id, not retried): the client's raw speed, for comparison.")
        var plain = false

        func validate() throws {
            guard (1...256).contains(clients) else { throw ValidationError("--clients must be 1-256") }
            guard table.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else { throw ValidationError("--table must be letters, digits and _") }
            guard writes > 0 || duration > 0 || stopFile != nil else { throw ValidationError("give --writes, --duration or --stop-file") }
        }

        func run() async throws {
            let addresses = try store.addresses()
            let setup = try store.client()
            do {
                try await setup.exec("""
                    CREATE TABLE IF NOT EXISTS \(table) (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, client INTEGER NOT NULL,
                                                    seq INTEGER NOT NULL, payload TEXT NOT NULL)
                    """, retry: true)
            } catch {
                throw UserFacingError("\(error)")
            }
            await setup.close()
            var acked: FileHandle?
            if let ackedFile {
                if !FileManager.default.fileExists(atPath: ackedFile) {
                    _ = FileManager.default.createFile(atPath: ackedFile, contents: nil)
                }
                guard let handle = FileHandle(forWritingAtPath: ackedFile) else { throw UserFacingError("cannot write \(ackedFile)") }
                handle.seekToEndOfFile()
                acked = handle
            }
            let sink = AckSink(handle: acked)
            let perClient = writes > 0 ? max(1, writes / clients) : Int.max
            let stopAt = duration > 0 ? ContinuousClock.now + .milliseconds(Int64(duration * 1000)) : nil
            let payload = String(repeating: "x", count: 100)
            let table = self.table
            let runID = self.run
            let timeout = store.timeout
            let stopFile = self.stopFile
            let plain = self.plain
            let started = ContinuousClock.now
            let results = await withTaskGroup(of: ClientResult.self) { tasks in
                for index in 0..<clients {
                    tasks.addTask {
                        var options = StoreClient.Options(nodes: addresses)
                        options.budget = .milliseconds(Int64(timeout * 1000))
                        let client = StoreClient(options: options)
                        var result = ClientResult()
                        var seq = 0
                        while seq < perClient {
                            if let stopAt, ContinuousClock.now > stopAt { break }
                            if let stopFile, FileManager.default.fileExists(atPath: stopFile) { break }
                            let id = "\(runID)-\(index)-\(seq)"
                            let begin = ContinuousClock.now
                            // An unconfirmed write is retried with the same id until it is acknowledged.
                            while true {
                                if plain {
                                    do {
                                        try await client.exec("INSERT INTO \(table)(request_id, client, seq, payload) VALUES(?, ?, ?, ?)",
                                                              [.text(id), .int(index), .int(seq), .text(payload)])
                                    } catch {
                                        result.unconfirmed += 1
                                        try? await Task.sleep(for: .milliseconds(1))
                                        continue
                                    }
                                    break
                                }
                                do {
                                    let receipt = try await client.write(requestID: id, [
                                        .init("INSERT INTO \(table)(request_id, client, seq, payload) VALUES(?, ?, ?, ?)",
                                              [.text(id), .int(index), .int(seq), .text(payload)]),
                                    ])
                                    if receipt.attempts > 1 || receipt.replayed { result.retried += 1 }
                                    break
                                } catch {
                                    result.unconfirmed += 1
                                    if let stopAt, ContinuousClock.now > stopAt + .seconds(30) { return result }
                                    try? await Task.sleep(for: .milliseconds(50))
                                }
                            }
                            let elapsed = ContinuousClock.now - begin
                            result.latenciesMs.append(Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000)
                            sink.append(id)
                            seq += 1
                        }
                        await client.close()
                        return result
                    }
                }
                var all = ClientResult()
                for await r in tasks {
                    all.latenciesMs += r.latenciesMs
                    all.retried += r.retried
                    all.unconfirmed += r.unconfirmed
                }
                return all
            }
            let wall = ContinuousClock.now - started
            let seconds = Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18
            acked?.closeFile()
            let sorted = results.latenciesMs.sorted()
            func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
            print(String(format: "store clients=%d writes=%d writes_per_s=%.0f p50_ms=%.2f p99_ms=%.2f retried=%d unconfirmed=%d",
                         clients, sorted.count, Double(sorted.count) / max(seconds, 0.001), pct(0.5), pct(0.99), results.retried, results.unconfirmed))
        }

        struct ClientResult: Sendable {
            var latenciesMs: [Double] = []
            var retried = 0
            var unconfirmed = 0
        }

        /// Appends acknowledged ids, one per line, flushed at once (the checker must not lose any on a crash).
        final class AckSink: Sendable {
            let handle: FileHandle?
            init(handle: FileHandle?) { self.handle = handle }
            func append(_ id: String) { handle?.write(Data((id + "\n").utf8)) }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Prove every acknowledged write of `store load` is present exactly once.")

        @OptionGroup var store: StoreOptions

        @Option(help: "The file `store load --acked-file` wrote.")
        var ackedFile: String

        @Option(help: "The table `store load` wrote.")
        var table = "store_checker"

        func run() async throws {
            guard table.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else { throw ValidationError("--table must be letters, digits and _") }
            guard let text = try? String(contentsOfFile: ackedFile, encoding: .utf8) else { throw UserFacingError("cannot read \(ackedFile)") }
            let acked = Set(text.split(separator: "\n").map(String.init))
            let client = try store.client()
            defer { Task { await client.close() } }
            let rows: DqliteRows
            do {
                rows = try await client.query("SELECT request_id, count(*) FROM \(table) GROUP BY request_id")
            } catch {
                throw UserFacingError("\(error)")
            }
            var counts: [String: Int64] = [:]
            for row in rows.rows { counts[row[0].string ?? ""] = row[1].int ?? 0 }
            let missing = acked.filter { counts[$0] == nil }
            let duplicated = counts.filter { $0.value > 1 }
            print(JSONValue.object([
                ("acknowledged", .int(Int64(acked.count))), ("rows", .int(Int64(counts.values.reduce(0, +)))),
                ("lost", .int(Int64(missing.count))), ("duplicated", .int(Int64(duplicated.count))),
                ("unacknowledged_present", .int(Int64(counts.keys.filter { !acked.contains($0) }.count))),
                ("examples_lost", .array(missing.prefix(5).map { .string($0) })),
            ]).serialized)
            if !missing.isEmpty || !duplicated.isEmpty { throw ExitCode(1) }
        }
    }

    struct Recover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disaster recovery: make a stopped lone survivor the only voter of its store.",
            discussion: """
            Use only when a majority of the store's members is gone for good. Stop the surviving node, run
            `legion store recover --config NODE.toml --yes`, then start it: it comes back as a 1-voter store with its data.
            Wipe the data directories of the lost nodes before they rejoin, and give rejoining nodes ids other than 1.
            """
        )

        @Option(help: "The surviving node's config.")
        var config: String

        @Flag(help: "Confirm: the other members are gone for good.")
        var yes = false

        func run() async throws {
            guard yes else { throw UserFacingError("this rewrites the store's membership; add --yes once the other members are gone for good") }
            let node: NodeConfig
            do { node = try NodeConfig.load(path: config) } catch { throw UserFacingError("\(error)") }
            guard let store = node.store else { throw UserFacingError("\(config) has no [store] table") }
            if let pid = try? String(contentsOfFile: node.dataDir + "/node.pid", encoding: .utf8),
               let value = Int32(pid.trimmingCharacters(in: .whitespacesAndNewlines)), LocalCluster.isAlive(value) {
                throw UserFacingError("node \(node.name) is running (pid \(value)); stop it first")
            }
            do {
                let dq = try DqliteNode(.init(id: store.id, address: store.bind.description, dataDir: node.dataDir + "/store"))
                try dq.recover(asLoneVoter: ())
            } catch {
                throw UserFacingError("\(error)")
            }
            print("node \(store.id) (\(store.bind)) is now the only voter; start it, then add members back")
        }
    }
}
