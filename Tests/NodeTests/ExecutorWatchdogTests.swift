import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import Testing
@testable import Node

@Suite struct ExecutorWatchdogTests {
    static let ms: UInt64 = 1_000_000

    @Test func aProbeIsSentOnlyWhenNoneIsOnItsWay() {
        var d = ExecutorStallDetector(periodNanos: 100 * Self.ms, thresholdNanos: 500 * Self.ms)
        #expect(d.tick(now: 1000 * Self.ms) == .probe(sentAt: 1000 * Self.ms))
        #expect(d.tick(now: 1100 * Self.ms) == .none, "one probe at a time")
        #expect(d.probeRan(sentAt: 1000 * Self.ms, now: 1101 * Self.ms) == nil, "a prompt probe is no news")
        #expect(d.tick(now: 1200 * Self.ms) == .probe(sentAt: 1200 * Self.ms))
    }

    @Test func aProbeLateBeyondTheThresholdIsReportedOnceThenItsRecovery() {
        var d = ExecutorStallDetector(periodNanos: 100 * Self.ms, thresholdNanos: 500 * Self.ms)
        #expect(d.tick(now: 0) == .probe(sentAt: 0))
        for t in stride(from: UInt64(100), to: 500, by: 100) {
            #expect(d.tick(now: t * Self.ms) == .none, "not yet at \(t) ms")
        }
        #expect(d.tick(now: 500 * Self.ms) == .reportStall(stalledNanos: 500 * Self.ms))
        #expect(d.tick(now: 600 * Self.ms) == .none, "said once per stall")
        #expect(d.tick(now: 5000 * Self.ms) == .none)
        #expect(d.probeRan(sentAt: 0, now: 5050 * Self.ms) == 5050 * Self.ms, "the recovery says how long it lasted")
        #expect(d.tick(now: 5100 * Self.ms) == .probe(sentAt: 5100 * Self.ms))
        #expect(d.probeRan(sentAt: 5100 * Self.ms, now: 5101 * Self.ms) == nil, "a new stall must be reported anew")
        #expect(!d.reported)
    }

    /// Runs a watchdog over `executors` while `stall` holds one of them; returns every line it logged.
    static func watch(_ executors: [ExecutorWatchdog.Executor], during stall: () async -> Void) async throws -> [String] {
        let lines = LogCapture()
        let watchdog = ExecutorWatchdog(executors: executors, period: .milliseconds(50), threshold: .milliseconds(300),
                                        logger: Logger(label: "watchdog-test") { _ in lines })
        let group = ServiceGroup(configuration: .init(services: [watchdog], logger: Logger(label: "group")))
        let running = Task { try await group.run() }
        try await Task.sleep(for: .milliseconds(200))   // a few prompt probes first: no report
        #expect(lines.all.isEmpty, "prompt probes are no news: \(lines.all)")
        await stall()
        var waited = 0
        while !lines.all.contains(where: { $0.contains("runs again") }) && waited < 100 {
            try await Task.sleep(for: .milliseconds(20))
            waited += 1
        }
        await group.triggerGracefulShutdown()
        try await running.value
        return lines.all
    }

    /// A real stall: every pool thread is held by tasks that block them; the watchdog's thread notices and
    /// lists the threads, and says when the pool runs again.
    @Test func aTaskPoolHeldByBlockingTasksIsReportedWithItsThreads() async throws {
        let lines = try await Self.watch([.taskPool]) {
            // More blocking tasks than pool threads, each holding its thread for 400 ms: the pool runs nothing else.
            let width = ProcessInfo.processInfo.activeProcessorCount
            await withTaskGroup(of: Void.self) { tasks in
                for _ in 0..<(2 * width) {
                    tasks.addTask { usleep(400_000) }
                }
            }
        }
        let stall = try #require(lines.first { $0.contains("the Swift task pool has run nothing for") }, "\(lines)")
        #expect(stall.contains("legion-watchdog"), "the thread report lists the threads by name: \(stall)")
        #expect(lines.contains { $0.contains("the Swift task pool runs again after") }, "\(lines)")
    }

    /// An event loop blocked by a job (store requests and their timeouts would wait behind it) is named.
    @Test func aBlockedEventLoopIsReportedByName() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = ExecutorWatchdog.Executor.eventLoops(of: group, named: "test", label: "test_loop")
        #expect(loops.map(\.name) == ["test event loop 0", "test event loop 1"])
        #expect(loops.map(\.label) == ["test_loop_0", "test_loop_1"])
        let lines = try await Self.watch(loops) {
            let blocked = Array(group.makeIterator())[1]
            try? await blocked.submit { usleep(600_000) }.get()
        }
        try await group.shutdownGracefully()
        #expect(lines.contains { $0.contains("test event loop 1 has run nothing for") }, "\(lines)")
        #expect(!lines.contains { $0.contains("test event loop 0 has run nothing") }, "the other loop ran: \(lines)")
        #expect(lines.contains { $0.contains("test event loop 1 runs again after") }, "\(lines)")
    }
}

/// Keeps every logged message (for tests).
final class LogCapture: LogHandler, Sendable {
    private let store = Mutex<[String]>([])
    var all: [String] { store.withLock { $0 } }

    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    var logLevel: Logger.Level {
        get { .trace }
        set {}
    }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(event: LogEvent) {
        store.withLock { $0.append("\(event.message)") }
    }
}
