import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing
@testable import Node

@Suite struct TaskPoolWatchdogTests {
    static let ms: UInt64 = 1_000_000

    @Test func aProbeIsSentOnlyWhenNoneIsOnItsWay() {
        var d = TaskPoolStallDetector(periodNanos: 100 * Self.ms, thresholdNanos: 500 * Self.ms)
        #expect(d.tick(now: 1000 * Self.ms) == .probe(sentAt: 1000 * Self.ms))
        #expect(d.tick(now: 1100 * Self.ms) == .none, "one probe at a time")
        #expect(d.probeRan(sentAt: 1000 * Self.ms, now: 1101 * Self.ms) == nil, "a prompt probe is no news")
        #expect(d.tick(now: 1200 * Self.ms) == .probe(sentAt: 1200 * Self.ms))
    }

    @Test func aProbeLateBeyondTheThresholdIsReportedOnceThenItsRecovery() {
        var d = TaskPoolStallDetector(periodNanos: 100 * Self.ms, thresholdNanos: 500 * Self.ms)
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

    /// A real stall: every pool thread is held by tasks that block them; the watchdog's thread notices and
    /// lists the threads, and says when the pool runs again.
    @Test func aPoolHeldByBlockingTasksIsReportedWithItsThreads() async throws {
        let lines = LogCapture()
        let logger = Logger(label: "watchdog-test") { _ in lines }
        let watchdog = TaskPoolWatchdog(period: .milliseconds(50), threshold: .milliseconds(300), logger: logger)
        let group = ServiceGroup(configuration: .init(services: [watchdog], logger: Logger(label: "group")))
        let running = Task { try await group.run() }
        try await Task.sleep(for: .milliseconds(200))   // a few prompt probes first: no report
        #expect(lines.all.isEmpty, "\(lines.all)")
        // More blocking tasks than pool threads, each holding its thread for 400 ms: the pool runs nothing else.
        let width = ProcessInfo.processInfo.activeProcessorCount
        await withTaskGroup(of: Void.self) { tasks in
            for _ in 0..<(2 * width) {
                tasks.addTask { usleep(400_000) }
            }
        }
        var waited = 0
        while !lines.all.contains(where: { $0.contains("runs again") }) && waited < 100 {
            try await Task.sleep(for: .milliseconds(20))
            waited += 1
        }
        let stall = try #require(lines.all.first { $0.contains("has run nothing for") }, "\(lines.all)")
        #expect(stall.contains("legion-watchdog"), "the thread report lists the threads: \(stall)")
        #expect(lines.all.contains { $0.contains("runs again after") }, "\(lines.all)")
        await group.triggerGracefulShutdown()
        try await running.value
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
