#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle
import Supervisor
import Synchronization

/// The rule of the executor watchdog for one executor, without clocks or threads: every `period` the watchdog
/// sends a probe (a tiny job) unless one is still on its way; a probe that has not run after `threshold` means the
/// executor is held (a job blocking its thread: a lock, a synchronous wait, a slow syscall) and is reported once;
/// its late run reports the recovery.
public struct ExecutorStallDetector: Sendable, Equatable {
    public enum Directive: Sendable, Equatable {
        case none
        /// Send a probe stamped `sentAt`.
        case probe(sentAt: UInt64)
        /// The probe sent at `sentAt` has not run for `stalledNanos`: say so (once per stall).
        case reportStall(stalledNanos: UInt64)
    }

    public let periodNanos: UInt64
    public let thresholdNanos: UInt64
    /// When the probe on its way was sent; nil when none is.
    public private(set) var outstanding: UInt64?
    public private(set) var reported = false

    public init(periodNanos: UInt64, thresholdNanos: UInt64) {
        precondition(periodNanos > 0 && thresholdNanos >= periodNanos, "the stall threshold must be at least one period")
        self.periodNanos = periodNanos
        self.thresholdNanos = thresholdNanos
    }

    /// Called every period by the watchdog's thread.
    public mutating func tick(now: UInt64) -> Directive {
        guard let sent = outstanding else {
            outstanding = now
            return .probe(sentAt: now)
        }
        let waited = now &- sent
        if waited >= thresholdNanos && !reported {
            reported = true
            return .reportStall(stalledNanos: waited)
        }
        return .none
    }

    /// Called when the probe stamped `sentAt` ran; returns how long the executor was stalled when a stall had been
    /// reported (the recovery line), else nil.
    public mutating func probeRan(sentAt: UInt64, now: UInt64) -> UInt64? {
        guard outstanding == sentAt else { return nil }   // a stale probe (cannot happen: one at a time)
        outstanding = nil
        defer { reported = false }
        return reported ? now &- sentAt : nil
    }
}

/// Watches, from a thread of its own, the executors a node's async work runs on (see `ExecutorStallDetector`):
/// Swift's task pool — as many threads as cores: two blocked tasks stall the store client, API, alarm spool and
/// hosting — and the shared NIO event loops, on which every store connection's requests *and their timeouts* run
/// (a blocked loop hangs each request past its timeout). The router's own loops and the Legion thread are not
/// watched: they keep serving, which is why a stalled node looks from outside like one that "logs nothing".
/// A stall is logged with every thread's state and kernel wait channel, so the blocked threads can be told from
/// idle ones.
public final class ExecutorWatchdog: Service, Sendable {
    /// Something that runs jobs: the task pool, an event loop.
    public struct Executor: Sendable {
        /// For the log: "the Swift task pool".
        public var name: String
        /// For `legion_executor_stalls_total{executor=…}`: "task_pool".
        public var label: String
        public var submit: @Sendable (@escaping @Sendable () -> Void) -> Void

        public init(name: String, label: String, submit: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void) {
            self.name = name
            self.label = label
            self.submit = submit
        }

        /// Swift's global concurrent executor, at the default priority (each priority has threads of its own; the
        /// node's tasks run at the default one).
        public static let taskPool = Executor(name: "the Swift task pool", label: "task_pool") { job in Task.detached { job() } }

        /// Each event loop of a NIO group: "`name` event loop N", labelled "`label`_N".
        public static func eventLoops(of group: EventLoopGroup, named name: String, label: String) -> [Executor] {
            var index = 0
            return group.makeIterator().map { loop in
                defer { index += 1 }
                return Executor(name: "\(name) event loop \(index)", label: "\(label)_\(index)") { job in loop.execute(job) }
            }
        }
    }

    private let executors: [Executor]
    private let detectors: Mutex<[ExecutorStallDetector]>
    private let periodNanos: UInt64
    private let stopped = Atomic<Bool>(false)
    private let logger: Logger

    /// The task pool and the shared (singleton) NIO event loops.
    public static func defaultExecutors() -> [Executor] {
        [.taskPool] + Executor.eventLoops(of: MultiThreadedEventLoopGroup.singleton, named: "the shared NIO", label: "shared_event_loop")
    }

    public init(executors: [Executor] = ExecutorWatchdog.defaultExecutors(), period: Duration = .seconds(2),
                threshold: Duration = .seconds(6), logger: Logger) {
        func nanos(_ d: Duration) -> UInt64 {
            UInt64(max(0, d.components.seconds)) * 1_000_000_000 + UInt64(max(0, d.components.attoseconds / 1_000_000_000))
        }
        self.executors = executors
        periodNanos = nanos(period)
        detectors = Mutex(Array(repeating: ExecutorStallDetector(periodNanos: nanos(period), thresholdNanos: nanos(threshold)),
                                count: executors.count))
        self.logger = logger
    }

    public func run() async throws {
        let thread = Thread { [self] in
            ThreadName.set("legion-watchdog")
            loop()
        }
        thread.start()
        try? await gracefulShutdown()
        stopped.store(true, ordering: .relaxed)
    }

    private func loop() {
        while !stopped.load(ordering: .relaxed) {
            var pause = timespec(tv_sec: Int(periodNanos / 1_000_000_000), tv_nsec: Int(periodNanos % 1_000_000_000))
            var left = timespec()
            while nanosleep(&pause, &left) != 0 && errno == EINTR { pause = left }
            let now = SystemClock.monotonicNanos()
            let directives = detectors.withLock { detectors in detectors.indices.map { detectors[$0].tick(now: now) } }
            for (index, directive) in directives.enumerated() {
                let executor = executors[index]
                switch directive {
                case .none:
                    break
                case .probe(let sentAt):
                    executor.submit { [self] in
                        let ranAt = SystemClock.monotonicNanos()
                        if let stalled = detectors.withLock({ $0[index].probeRan(sentAt: sentAt, now: ranAt) }) {
                            logger.notice("watchdog: \(executor.name) runs again after \(stalled / 1_000_000) ms")
                        }
                    }
                case .reportStall(let stalled):
                    Counter(label: NodeMetrics.executorStalls, dimensions: [("executor", executor.label)]).increment()
                    logger.error("watchdog: \(executor.name) has run nothing for \(stalled / 1_000_000) ms: a job holds its thread(s) (a lock, a synchronous wait or a slow system call), and every store request, API call, alarm or hosting step queued there waits. Threads:\n\(Self.threadReport())")
                }
            }
        }
    }

    /// One line per thread of this process: id, name, state, CPU ticks and the kernel function it waits in.
    static func threadReport() -> String {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.compactMap(Int.init).sorted().compactMap { tid -> String? in
            let base = "/proc/self/task/\(tid)/"
            guard let stat = try? String(contentsOfFile: base + "stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            let comm = (try? String(contentsOfFile: base + "comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            let wchan = (try? String(contentsOfFile: base + "wchan", encoding: .utf8)).flatMap { $0.isEmpty ? nil : $0 } ?? "-"
            guard fields.count > 13 else { return nil }
            return "  \(tid) \(comm) state \(fields[0]) utime \(fields[11]) stime \(fields[12]) wchan \(wchan)"
        }.joined(separator: "\n")
    }
}
