import Foundation
import Legion

/// Runs many seeded scenarios (on every core) and sums up what they showed.
public struct SimulationCampaign: Sendable {
    public struct Summary: Sendable, CustomStringConvertible {
        public var mode: LegionCodec.Mode
        public var scenarios = 0
        public var events = 0
        public var packets = 0
        public var leaseOverlapScenarios = 0
        public var vipOverlapScenarios = 0
        public var unfencedVipOverlapScenarios = 0
        public var noLordAfterHeal = 0
        public var disagreedAtEnd = 0
        public var failoverMs: [UInt64] = []
        public var lordAfterHealMs: [UInt64] = []
        public var failingSeeds: [UInt64] = []
        public var livenessFailingSeeds: [UInt64] = []
        public var firstViolations: [String] = []
        public var codecRejections = 0

        static func percentile(_ values: [UInt64], _ p: Double) -> UInt64? {
            guard !values.isEmpty else { return nil }
            let sorted = values.sorted()
            let index = min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))
            return sorted[index]
        }

        public var description: String {
            func pct(_ v: [UInt64], _ p: Double) -> String { Summary.percentile(v, p).map { "\($0)" } ?? "-" }
            return "simulation mode=\(mode.rawValue) scenarios=\(scenarios) events=\(events) packets=\(packets) "
                + "lease_overlaps=\(leaseOverlapScenarios) vip_overlaps=\(vipOverlapScenarios) "
                + "unfenced_vip_overlaps=\(unfencedVipOverlapScenarios) no_lord_after_heal=\(noLordAfterHeal) "
                + "disagreed_at_end=\(disagreedAtEnd) failover_p50_ms=\(pct(failoverMs, 0.5)) failover_p99_ms=\(pct(failoverMs, 0.99)) "
                + "lord_after_heal_p99_ms=\(pct(lordAfterHealMs, 0.99)) lord_after_heal_max_ms=\(lordAfterHealMs.max().map { "\($0)" } ?? "-")"
        }

        mutating func add(_ r: LegionSimulator.Result, livenessBoundMs: UInt64) {
            scenarios += 1
            events += r.events
            packets += r.packets
            codecRejections += r.codecRejections
            if r.leaseOverlaps > 0 { leaseOverlapScenarios += 1 }
            if r.vipOverlaps > 0 { vipOverlapScenarios += 1 }
            if r.unfencedVipOverlaps > 0 { unfencedVipOverlapScenarios += 1 }
            if !r.safe {
                failingSeeds.append(r.scenario.seed)
                if let v = r.firstViolation, firstViolations.count < 5 { firstViolations.append("seed \(r.scenario.seed): \(v)") }
            }
            if let ms = r.lordAfterHealMs { lordAfterHealMs.append(ms) }
            if r.lordAfterHealMs.map({ $0 > livenessBoundMs }) ?? true {
                noLordAfterHeal += 1
                livenessFailingSeeds.append(r.scenario.seed)
            }
            if !r.agreedAtEnd {
                disagreedAtEnd += 1
                if !livenessFailingSeeds.contains(r.scenario.seed) { livenessFailingSeeds.append(r.scenario.seed) }
            }
            failoverMs.append(contentsOf: r.failoverMs)
        }

        mutating func merge(_ o: Summary) {
            scenarios += o.scenarios
            events += o.events
            packets += o.packets
            codecRejections += o.codecRejections
            leaseOverlapScenarios += o.leaseOverlapScenarios
            vipOverlapScenarios += o.vipOverlapScenarios
            unfencedVipOverlapScenarios += o.unfencedVipOverlapScenarios
            noLordAfterHeal += o.noLordAfterHeal
            disagreedAtEnd += o.disagreedAtEnd
            failoverMs += o.failoverMs
            lordAfterHealMs += o.lordAfterHealMs
            failingSeeds += o.failingSeeds
            livenessFailingSeeds += o.livenessFailingSeeds
            firstViolations += o.firstViolations
        }
    }

    public let mode: LegionCodec.Mode
    public let seeds: Range<UInt64>
    public let livenessBoundMs: UInt64
    public let workers: Int

    public init(mode: LegionCodec.Mode, seeds: Range<UInt64>, livenessBoundMs: UInt64, workers: Int = 2) {
        self.mode = mode
        self.seeds = seeds
        self.livenessBoundMs = livenessBoundMs
        self.workers = max(workers, 1)
    }

    public func run() async -> Summary {
        let mode = self.mode
        let bound = livenessBoundMs
        let lower = seeds.lowerBound
        let count = UInt64(seeds.count)
        let workers = UInt64(self.workers)
        return await withTaskGroup(of: Summary.self) { group in
            for w in 0..<workers {
                group.addTask {
                    // Each worker runs on its own OS thread, not on Swift's cooperative pool, so a
                    // long campaign never starves other async work in the process (tests run beside it).
                    await withCheckedContinuation { (done: CheckedContinuation<Summary, Never>) in
                        let thread = Thread {
                            var summary = Summary(mode: mode)
                            var seed = lower + w
                            while seed < lower + count {
                                var sim = LegionSimulator(scenario: SimScenario(seed: seed, mode: mode))
                                summary.add(sim.run(), livenessBoundMs: bound)
                                seed += workers
                            }
                            done.resume(returning: summary)
                        }
                        thread.stackSize = 8 << 20
                        thread.start()
                    }
                }
            }
            var total = Summary(mode: mode)
            for await part in group { total.merge(part) }
            total.failingSeeds.sort()
            total.livenessFailingSeeds.sort()
            return total
        }
    }

    /// Replays one seed with a trace, for debugging a failure.
    public static func replay(seed: UInt64, mode: LegionCodec.Mode) -> LegionSimulator.Result {
        var sim = LegionSimulator(scenario: SimScenario(seed: seed, mode: mode), trace: true)
        return sim.run()
    }
}
