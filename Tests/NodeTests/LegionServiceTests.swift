import Foundation
import Logging
import Testing
import Legion
import ServiceLifecycle
@testable import Node
#if canImport(Glibc)
import Glibc
#endif

/// The real shell, in-process: UDP socket, loopback VIP, audit log, hooks, clean shutdown.
@Suite(.serialized) struct LegionServiceTests {
    static func freePort() -> Int { Int.random(in: 21_000...29_000) }

    static func sendUDP(_ payloads: [[UInt8]], port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        for payload in payloads {
            _ = withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
        }
    }

    @Test func aLoneNodeBecomesLordSurvivesGarbageAndShutsDownCleanly() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("legion-svc-\(UUID().uuidString)").path
        let udp = Self.freePort()
        let http = Self.freePort() + 1
        let text = """
        [node]
        name = "solo"
        data_dir = "\(dir)"
        [legion]
        name = "t"
        bind = "127.0.0.1:\(udp)"
        valor = 10
        secret = "aes-256-cbc:test-secret"
        realtime_priority = 5
        lock_memory = false
        [legion.timing]
        # Generous timers: this test runs beside the CPU-bound simulator in the same test process.
        heartbeat_ms = 100
        election_timeout_ms = 2000
        [legion.hooks]
        lord = "echo lord >> \(dir)/hooks.log"
        unlord = "echo unlord $LEGION_REASON >> \(dir)/hooks.log"
        death = "echo death >> \(dir)/hooks.log"
        [vip]
        driver = "loopback"
        address = "127.0.0.87"
        http_port = \(http)
        """
        let config = try NodeConfig.parse(text, path: dir + "/node.toml")
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let state = NodeState(.init(nodeName: "solo", legionName: "t", pid: getpid(), startedAtMs: 0, vip: config.vip.endpoint, endpoints: [:]))
        let service = try LegionService(config: config, state: state, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [service], logger: logger))
        let running = Task { try await group.run() }

        // Becomes Lord and answers on the VIP.
        var answer: HTTPProbe.Response?
        for _ in 0..<400 {
            answer = HTTPProbe.get(host: "127.0.0.87", port: http, path: "/.legion/lord", timeoutMs: 200)
            if answer?.status == 200 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(answer?.status == 200)
        #expect(answer?.body.contains("\"name\":\"solo\"") == true)

        // The protocol runs on its own thread: SCHED_RR where permitted (root), and asleep between the machine's
        // deadlines (heartbeat 100 ms here): a few dozen wake-ups a second, not a spin, not a 5 ms ticker.
        let tid = try #require(Self.thread(named: "legion-protoco"))
        let before = Self.schedule(tid)
        #expect(before.policy == (geteuid() == 0 ? Int(SCHED_RR) : Int(SCHED_OTHER)), "policy \(before.policy)")
        try await Task.sleep(for: .seconds(1))
        let woke = Self.schedule(tid).switches - before.switches
        #expect(woke >= 5 && woke <= 60, "\(woke) wake-ups in a second")

        // Garbage, truncated, wrongly keyed and oversized datagrams: dropped and counted.
        var rng = SystemRandomNumberGenerator()
        var junk: [[UInt8]] = (0..<2000).map { _ in (0..<Int.random(in: 0...600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        junk.append([0x6d, 0xff, 0xff, 0x00])
        let wrongKey = try LegionCodec(mode: .native, secret: try LegionSecret(parsing: "aes-256-cbc:other"))
        junk.append(try wrongKey.encode(LegionAnnounce(legion: Array("t".utf8), valor: 999, unix: 1, name: [0x78], pid: 1, uuid: LegionUUID.random(), seq: 1)))
        // A correctly keyed packet, replayed: the copy is dropped.
        let right = try LegionCodec(mode: .native, secret: config.secret)
        let wall = SystemClock.wallMillis()
        let peer = try right.encode(LegionAnnounce(legion: Array("t".utf8), valor: 1, unix: wall / 1000, name: Array("ghost".utf8), pid: 2,
                                                   uuid: LegionUUID.random(), seq: 5, unixMs: wall))
        for start in stride(from: 0, to: junk.count, by: 100) {
            Self.sendUDP(Array(junk[start..<min(start + 100, junk.count)]), port: udp)
            try await Task.sleep(for: .milliseconds(5))
        }
        // The replayed pair goes after the flood, one at a time: a burst on a loaded machine may overflow the
        // socket buffer and lose a copy, which would make "the copy is dropped" untestable.
        for _ in 0..<2 {
            Self.sendUDP([peer], port: udp)
            try await Task.sleep(for: .milliseconds(20))
        }
        // Wait until every datagram has been processed (the count stops at the number sent).
        for _ in 0..<100 where state.snapshot.drops.values.reduce(0, +) < 2001 {
            try await Task.sleep(for: .milliseconds(20))
        }
        let snapshot = state.snapshot
        let totalDrops = snapshot.drops.values.reduce(0, +)
        #expect(totalDrops >= 2000, "every junk datagram is counted as a drop: \(snapshot.drops)")
        #expect(snapshot.drops["replayed", default: 0] >= 1)
        var stillServing = false
        for _ in 0..<30 where !stillServing {
            stillServing = HTTPProbe.get(host: "127.0.0.87", port: http, path: "/.legion/lord", timeoutMs: 300)?.status == 200
            if !stillServing { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(stillServing, "still serving after the flood")
        #expect(snapshot.legion?.isLord == true || state.snapshot.legion?.isLord == true)

        // Clean shutdown: VIP released, unlord + death hooks, audit trail.
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(HTTPProbe.get(host: "127.0.0.87", port: http, path: "/.legion/lord", timeoutMs: 200) == nil, "VIP listener closed")
        let hooks = (try? String(contentsOfFile: dir + "/hooks.log", encoding: .utf8)) ?? ""
        #expect(hooks.contains("lord\n") && hooks.contains("unlord shutdown") && hooks.contains("death"), "hooks ran: \(hooks)")
        let audit = try String(contentsOfFile: dir + "/audit.jsonl", encoding: .utf8)
        #expect(audit.contains("\"event\":\"lord\""))
        #expect(audit.contains("\"event\":\"unlord\"") && audit.contains("\"reason\":\"shutdown\""))
        #expect(audit.contains("\"event\":\"stopped\""))
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// The thread of this process named `name` (Foundation's Thread.name sets the kernel's comm).
    static func thread(named name: String) -> String? {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.first { (try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8))?.hasPrefix(name) == true }
    }

    /// (scheduling policy, voluntary context switches) of a thread of this process.
    static func schedule(_ tid: String) -> (policy: Int, switches: Int) {
        let stat = (try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8)) ?? ""
        let fields = stat.split(separator: ")").last.map { $0.split(separator: " ") } ?? []
        let status = (try? String(contentsOfFile: "/proc/self/task/\(tid)/status", encoding: .utf8)) ?? ""
        let switches = status.split(separator: "\n").first { $0.hasPrefix("voluntary_ctxt_switches") }
            .flatMap { Int($0.split(separator: "\t").last ?? "") } ?? -1
        return (fields.count > 38 ? Int(fields[38]) ?? -1 : -1, switches)   // field 41 (policy): index 38 after ")"
    }
}
