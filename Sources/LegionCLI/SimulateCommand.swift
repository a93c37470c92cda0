import ArgumentParser
import Legion
import LegionSimulator

struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run the deterministic cluster simulator (fake clock and network) and check safety and liveness.",
        discussion: "A failing scenario prints its seed; `legion simulate --seed N` replays it exactly with a trace."
    )

    @Option(help: "How many seeded scenarios to run.")
    var scenarios: UInt64 = 1000

    @Option(help: "First seed.")
    var firstSeed: UInt64 = 1

    @Option(help: "Replay this one seed with a trace.")
    var seed: UInt64?

    @Option(help: "native or compat.")
    var mode: String = "native"

    func run() async throws {
        guard let mode = LegionCodec.Mode(rawValue: mode) else { throw ValidationError("--mode must be native or compat") }
        if let seed {
            let r = SimulationCampaign.replay(seed: seed, mode: mode)
            print(r.scenario)
            r.trace.forEach { print($0) }
            print("safe=\(r.safe) lord_after_heal_ms=\(r.lordAfterHealMs.map(String.init) ?? "none") agreed_at_end=\(r.agreedAtEnd)")
            if !r.safe { throw ExitCode(1) }
            return
        }
        let summary = await SimulationCampaign(mode: mode, seeds: firstSeed..<(firstSeed + scenarios), livenessBoundMs: mode == .native ? 3000 : 20_000).run()
        print(summary)
        summary.firstViolations.forEach { print("violation: \($0)") }
        if mode == .native, summary.leaseOverlapScenarios + summary.vipOverlapScenarios + summary.noLordAfterHeal > 0 {
            print("failing seeds: \(summary.failingSeeds.prefix(20)) liveness: \(summary.livenessFailingSeeds.prefix(20))")
            throw ExitCode(1)
        }
    }
}
