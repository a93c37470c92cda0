import Foundation
import Synchronization
import NIOCore
import NIOPosix
import Testing
import TestSupport
@testable import Store

/// Real dqlite nodes inside the test process (Debian's libdqlite 1.11.1), spoken to through our wire client.
@Suite(.serialized) struct EmbeddedStoreTests {
    static func freePorts(_ n: Int) -> [Int] {
        // Ephemeral-range ports picked by binding to port 0.
        (0..<n).map { _ in
            let (fd, port) = LoopbackSocket.bind(SOCK_STREAM)
            close(fd)
            return port
        }
    }

    static func tempDir() -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("legion-store-\(UUID().uuidString.prefix(8))").path
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    static func startNodes(_ count: Int) async throws -> (nodes: [DqliteNode], addresses: [String], dir: String) {
        let dir = tempDir()
        let addresses = freePorts(count).map { "127.0.0.1:\($0)" }
        var nodes: [DqliteNode] = []
        for (index, address) in addresses.enumerated() {
            var settings = DqliteNode.Settings(id: UInt64(index + 1), address: address, dataDir: "\(dir)/n\(index + 1)")
            settings.latencyMs = 10
            let node = try DqliteNode(settings)
            try await node.start()
            nodes.append(node)
        }
        return (nodes, addresses, dir)
    }

    @Test func singleNodeRoundTripsTypesAndRefusesBadInput() async throws {
        let (nodes, addresses, dir) = try await Self.startNodes(1)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let client = StoreClient(options: .init(nodes: addresses))
        _ = try await StoreMigrator.migrate(client, appliedBy: "test")
        try await client.exec("CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n TEXT) STRICT", retry: true)
        try await client.exec("INSERT INTO t VALUES (?, ?, ?, ?, ?)", [.integer(Int64(1) << 62), .float(3.25), .text("héllo"), .blob([0, 1, 255]), .null])
        let rows = try await client.query("SELECT i, f, s, b, n FROM t")
        #expect(rows.rows == [[.integer(Int64(1) << 62), .float(3.25), .text("héllo"), .blob([0, 1, 255]), .null]])
        // A result bigger than one ROWS message (dqlite splits at its buffer size).
        try await client.exec("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000) INSERT INTO t(i, s) SELECT x, printf('%0100d', x) FROM c", retry: true)
        let many = try await client.query("SELECT i, s FROM t WHERE s IS NOT NULL AND i <= 5000 ORDER BY i")
        #expect(many.rows.count == 5000)
        #expect(many.rows.last?[0] == .integer(5000))

        // Wrong type for a STRICT column: the server's message comes through.
        do {
            try await client.exec("INSERT INTO t(i) VALUES (?)", [.text("not a number")])
            Issue.record("a text value went into a STRICT INTEGER column")
        } catch {
            #expect(error.description.contains("cannot store TEXT value in INTEGER column"))
        }
        // Too many parameters, oversized values, bad SQL: clear errors, and the client keeps working.
        do {
            _ = try await client.query("SELECT 1", [DqliteValue](repeating: .integer(1), count: 256))
            Issue.record("256 parameters were sent")
        } catch {
            #expect(error.description.contains("at most 255"))
        }
        do {
            try await client.exec("INSERT INTO t(b) VALUES (?)", [.blob([UInt8](repeating: 0, count: (16 << 20) + 1))])
            Issue.record("an oversized blob was sent")
        } catch {
            #expect(error.description.contains("16 MiB"))
        }
        do {
            _ = try await client.query("SELEKT 1")
            Issue.record("bad SQL accepted")
        } catch {
            #expect(error.description.contains("syntax error"))
        }
        #expect(try await client.query("SELECT count(*) FROM t WHERE f = 3.25").scalar == .integer(1))
        await client.close()
        for node in nodes { await node.stop() }
    }

    @Test func afterWriteIsCalledForWritesThatChangedTheStoreOnly() async throws {
        let (nodes, addresses, dir) = try await Self.startNodes(1)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let setup = StoreClient(options: .init(nodes: addresses))
        _ = try await StoreMigrator.migrate(setup, appliedBy: "test")
        try await setup.exec("CREATE TABLE w (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)", retry: true)
        let calls = Mutex(0)
        var options = StoreClient.Options(nodes: addresses)
        options.afterWrite = { calls.withLock { $0 += 1 } }
        let client = StoreClient(options: options)
        _ = try await client.query("SELECT count(*) FROM w")
        #expect(calls.withLock { $0 } == 0, "a read is not a write")
        _ = try await client.write(requestID: "w-1", [.init("INSERT INTO w(v) VALUES (?)", [.text("a")])])
        #expect(calls.withLock { $0 } == 1)
        let replay = try await client.write(requestID: "w-1", [.init("INSERT INTO w(v) VALUES (?)", [.text("a")])])
        #expect(replay.replayed && calls.withLock { $0 } == 1, "a replayed write changed nothing")
        await #expect(throws: StoreError.self) {
            _ = try await client.write(requestID: "w-2", [.init("INSERT INTO w(v) VALUES (?)", [.text("a")])])
        }
        #expect(calls.withLock { $0 } == 1, "a rejected write changed nothing")
        try await client.exec("UPDATE w SET v = 'b'")
        #expect(calls.withLock { $0 } == 2, "exec may change the store")
        await client.close()
        await setup.close()
        for node in nodes { await node.stop() }
    }

    @Test func groupCommitGivesEveryWriteItsOwnOutcome() async throws {
        let (nodes, addresses, dir) = try await Self.startNodes(1)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let setup = StoreClient(options: .init(nodes: addresses))
        _ = try await StoreMigrator.migrate(setup, appliedBy: "test")
        try await setup.exec("CREATE TABLE g (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)", retry: true)
        let writer = GroupCommitWriter(client: StoreClient(options: .init(nodes: addresses)), maxBatch: 64)
        // 300 concurrent writes: every 10th violates UNIQUE (v = "dup"), every 15th must change a row that is
        // not there, and writes 0..<20 are each sent twice with the same request id.
        let outcomes = await withTaskGroup(of: (Int, Result<StoreClient.WriteReceipt, StoreError>).self) { group in
            for i in 0..<320 {
                let n = i < 300 ? i : i - 300
                group.addTask {
                    let value = n % 10 == 9 ? "dup" : "v\(n)"
                    var statements: [StoreClient.Statement] = [.init("INSERT INTO g(v) VALUES (?)", [.text(value)])]
                    if n % 15 == 14 { statements.append(.init("UPDATE g SET v = v WHERE id = -1", mustChange: "no row -1")) }
                    do throws(StoreError) {
                        return (i, .success(try await writer.write(requestID: "g-\(n)", statements)))
                    } catch {
                        return (i, .failure(error))
                    }
                }
            }
            return await group.reduce(into: [Int: Result<StoreClient.WriteReceipt, StoreError>]()) { $0[$1.0] = $1.1 }
        }
        let rows = try await setup.query("SELECT v, id FROM g")
        let stored = Set(rows.rows.compactMap { $0[0].string })
        let idOf = Dictionary(uniqueKeysWithValues: rows.rows.compactMap { row in row[0].string.flatMap { v in row[1].int.map { (v, $0) } } })
        #expect(rows.rows.count == stored.count, "a value was stored twice")
        var applied = 0
        for n in 0..<300 {
            guard let outcome = outcomes[n] else { Issue.record("write \(n) got no outcome"); continue }
            switch outcome {
            case .success(let receipt):
                applied += 1
                #expect(stored.contains(n % 10 == 9 ? "dup" : "v\(n)"))
                // Each write's own last_insert_rowid and changes, whichever path it took.
                #expect(receipt.insertIDs == [idOf[n % 10 == 9 ? "dup" : "v\(n)"] ?? -1], "write \(n): \(receipt)")
                #expect(receipt.rowsAffected == [1])
                #expect(n % 15 != 14, "write \(n) should have failed its mustChange statement")
            case .failure(let error):
                // Refused alone: its own statement failed; the batch went on.
                #expect(n % 15 == 14 || n % 10 == 9, "write \(n) failed: \(error)")
                if n % 15 == 14 && n % 10 != 9 { #expect(!stored.contains("v\(n)"), "a refused write left its row") }
            }
        }
        // The repeated ids: applied at most once, the second call reports the first outcome.
        for n in 0..<20 {
            if case .success(let first) = outcomes[n], case .success(let second) = outcomes[300 + n] {
                #expect(first.insertIDs == second.insertIDs)
                #expect(first.replayed != second.replayed)
            }
        }
        #expect(stored.contains("dup"))
        #expect(stored.count == applied)
        let counters = writer.counters
        #expect(counters.writes == 320)
        #expect(counters.batches < 320, "concurrent writes were not batched")
        #expect(counters.largestBatch > 1)
        await writer.close()
        await setup.close()
        for node in nodes { await node.stop() }
    }

    @Test func idempotentWritesApplyOnceAndMigrationsRunOnceCluster() async throws {
        let (nodes, addresses, dir) = try await Self.startNodes(3)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let admin = StoreClient(options: .init(nodes: addresses))
        try await admin.add(id: 2, address: addresses[1])
        try await admin.assign(id: 2, role: .voter)
        try await admin.add(id: 3, address: addresses[2])
        try await admin.assign(id: 3, role: .voter)
        #expect(try await admin.members().filter { $0.role == .voter }.count == 3)

        // Three nodes migrate at once: every migration is applied exactly once.
        let outcomes = try await withThrowingTaskGroup(of: StoreMigrator.Outcome.self) { group in
            for index in 0..<3 {
                group.addTask {
                    let client = StoreClient(options: .init(nodes: [addresses[index]] + addresses))
                    defer { Task { await client.close() } }
                    return try await StoreMigrator.migrate(client, appliedBy: "node\(index)")
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.flatMap(\.applied).sorted() == StoreSchema.migrations.map(\.version))
        #expect(outcomes.allSatisfy { $0.version == StoreSchema.latestVersion })
        #expect(try await admin.query("SELECT count(*) FROM schema_migrations").scalar == .integer(Int64(StoreSchema.migrations.count)))

        try await admin.exec("CREATE TABLE w (id INTEGER PRIMARY KEY, v TEXT)", retry: true)
        let first = try await admin.write(requestID: "req-1", [.init("INSERT INTO w(v) VALUES (?)", ["one"])])
        let again = try await admin.write(requestID: "req-1", [.init("INSERT INTO w(v) VALUES (?)", ["one"])])
        #expect(!first.replayed && again.replayed)
        #expect(again.insertIDs == first.insertIDs)
        #expect(try await admin.query("SELECT count(*) FROM w").scalar == .integer(1))
        // A failing statement rolls the whole write back, including its request id.
        await #expect(throws: StoreError.self) {
            _ = try await admin.write(requestID: "req-2", [.init("INSERT INTO w(v) VALUES (?)", ["two"]), .init("INSERT INTO nope VALUES (1)")])
        }
        #expect(try await admin.query("SELECT count(*) FROM w").scalar == .integer(1))
        #expect(try await admin.isApplied(requestID: "req-2") == false)

        // The leader stops: a new one is elected and writes go on through the same client.
        let leader = try await admin.leader()
        let index = Int(leader.id) - 1
        let stopped = ContinuousClock.now
        await nodes[index].stop()
        let receipt = try await admin.write(requestID: "req-3", [.init("INSERT INTO w(v) VALUES (?)", ["three"])])
        let resumed = ContinuousClock.now - stopped
        #expect(receipt.insertIDs.count == 1)
        #expect(resumed < .seconds(3), "writes resumed after \(resumed)")
        #expect(try await admin.query("SELECT v FROM w ORDER BY id").rows == [[.text("one")], [.text("three")]])
        #expect(try await admin.leader().id != leader.id)
        await admin.close()
        for node in nodes { await node.stop() }
    }
}
