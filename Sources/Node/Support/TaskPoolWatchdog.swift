#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Supervisor

/// The rule of the task pool watchdog, without clocks or threads: every `period` the watchdog sends a probe (a
/// tiny task on the Swift concurrency pool) unless one is still on its way; a probe that has not run after
/// `threshold` means every pool thread is held (a task blocking its thread: a lock, a synchronous wait, a slow
/// syscall) and is reported once; its late run reports the recovery.
///
/// The pool has as many threads as cores (two here): two blocked tasks stall every async part of a node — its
/// store client, API, alarm spool, hosting — while the router's event loops and the Legion thread still run,
/// which looks from outside like a node that "logs nothing". This makes it say so.
public struct TaskPoolStallDetector: Sendable, Equatable {
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

    /// Called when the probe stamped `sentAt` ran; returns how long the pool was stalled when a stall had been
    /// reported (the recovery line), else nil.
    public mutating func probeRan(sentAt: UInt64, now: UInt64) -> UInt64? {
        guard outstanding == sentAt else { return nil }   // a stale probe (cannot happen: one at a time)
        outstanding = nil
        defer { reported = false }
        return reported ? now &- sentAt : nil
    }
}

/// Watches the Swift concurrency pool from a thread of its own (see `TaskPoolStallDetector`): a stall is logged
/// with every thread's state and kernel wait channel, so the blocked threads can be told from idle ones.
public final class TaskPoolWatchdog: Service, Sendable {
    private let detector: Mutex<TaskPoolStallDetector>
    private let stopped = Atomic<Bool>(false)
    private let logger: Logger

    public init(period: Duration = .seconds(2), threshold: Duration = .seconds(6), logger: Logger) {
        func nanos(_ d: Duration) -> UInt64 {
            UInt64(max(0, d.components.seconds)) * 1_000_000_000 + UInt64(max(0, d.components.attoseconds / 1_000_000_000))
        }
        detector = Mutex(TaskPoolStallDetector(periodNanos: nanos(period), thresholdNanos: nanos(threshold)))
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
        let period = detector.withLock { $0.periodNanos }
        while !stopped.load(ordering: .relaxed) {
            var pause = timespec(tv_sec: Int(period / 1_000_000_000), tv_nsec: Int(period % 1_000_000_000))
            var left = timespec()
            while nanosleep(&pause, &left) != 0 && errno == EINTR { pause = left }
            let now = SystemClock.monotonicNanos()
            switch detector.withLock({ $0.tick(now: now) }) {
            case .none:
                break
            case .probe(let sentAt):
                // No priority: the probe queues where the node's own tasks do (each priority has its own threads).
                Task.detached { [self] in
                    let ranAt = SystemClock.monotonicNanos()
                    if let stalled = detector.withLock({ $0.probeRan(sentAt: sentAt, now: ranAt) }) {
                        logger.notice("watchdog: the task pool runs again after \(stalled / 1_000_000) ms")
                    }
                }
            case .reportStall(let stalled):
                logger.error("watchdog: the Swift task pool has run nothing for \(stalled / 1_000_000) ms: every pool thread is held by a task that blocks it (the async side of this node — store client, API, alarms, hosting — is stalled; the router and Legion threads still run). Threads:\n\(Self.threadReport())")
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
