import Foundation
import Testing
import Legion
import LegionSimulator

/// The deterministic cluster simulator: thousands of seeded scenarios with crashes, pauses,
/// symmetric and one-way partitions, loss, delay, duplication and clock drift.
/// `LEGION_SIM_SCENARIOS` changes the count; `LEGION_SIM_SEED=N` replays one seed with a trace.
@Suite struct SimulationTests {
    static var scenarioCount: UInt64 {
        ProcessInfo.processInfo.environment["LEGION_SIM_SCENARIOS"].flatMap { UInt64($0) } ?? 10_000
    }

    @Test func nativeModeIsSafeAndLiveAcrossSeededScenarios() async throws {
        if let text = ProcessInfo.processInfo.environment["LEGION_SIM_SEED"], let seed = UInt64(text) {
            let result = SimulationCampaign.replay(seed: seed, mode: .native)
            print(result.scenario)
            result.trace.forEach { print($0) }
            print("lord after heal: \(result.lordAfterHealMs.map { "\($0) ms" } ?? "none"), lord at end: \(result.lordAtEnd ?? "none"), agreed: \(result.agreedAtEnd)")
            #expect(result.safe, "seed \(seed) violates safety: \(result.firstViolation ?? "")")
            return
        }
        let campaign = SimulationCampaign(mode: .native, seeds: 1..<(1 + Self.scenarioCount), livenessBoundMs: 3000)
        let summary = await campaign.run()
        print(summary)
        summary.firstViolations.forEach { print("violation: \($0)") }
        if !summary.livenessFailingSeeds.isEmpty { print("liveness failures (replay with LEGION_SIM_SEED): \(summary.livenessFailingSeeds.prefix(20))") }
        #expect(summary.scenarios == Int(Self.scenarioCount))
        #expect(summary.leaseOverlapScenarios == 0, "safety: replay with LEGION_SIM_SEED=\(summary.failingSeeds.first ?? 0) — \(summary.firstViolations)")
        #expect(summary.vipOverlapScenarios == 0, "VIP safety: seeds \(summary.failingSeeds.prefix(10))")
        #expect(summary.noLordAfterHeal == 0, "liveness: no Lord within 3 s of healing, seeds \(summary.livenessFailingSeeds.prefix(10))")
        #expect(summary.disagreedAtEnd == 0, "agreement at the end")
        #expect(summary.codecRejections == 0)
        #expect(!summary.failoverMs.isEmpty)
    }

    /// Compat mode mirrors uWSGI, which is known to allow two Lords; this records how often on the
    /// same kind of scenarios and checks only what uWSGI guarantees (a fault-free legion agrees).
    @Test func compatModeBehaviourIsRecorded() async throws {
        let count = max(Self.scenarioCount / 10, 50)
        let campaign = SimulationCampaign(mode: .compat, seeds: 1..<(1 + count), livenessBoundMs: 20_000)
        let summary = await campaign.run()
        print(summary)
        #expect(summary.scenarios == Int(count))
        for seed in 1..<(1 + count) where SimScenario(seed: seed, mode: .compat).faults.isEmpty {
            let r = SimulationCampaign.replay(seed: seed, mode: .compat)
            #expect(r.lordAtEnd != nil && r.agreedAtEnd, "fault-free compat scenario \(seed) agrees on one Lord")
        }
    }

    @Test func aSeedReplaysExactly() {
        let a = SimulationCampaign.replay(seed: 4242, mode: .native)
        let b = SimulationCampaign.replay(seed: 4242, mode: .native)
        #expect(a.trace == b.trace)
        #expect(a.events == b.events && a.packets == b.packets)
        #expect(!a.trace.isEmpty)
    }
}
