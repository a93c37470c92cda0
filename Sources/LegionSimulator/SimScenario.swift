import Legion

/// One seeded scenario: cluster shape, clocks, network quality and a fault schedule.
/// Everything is derived from the seed, so `SimScenario(seed:mode:)` replays exactly.
public struct SimScenario: Sendable, CustomStringConvertible {
    public enum Fault: Sendable, CustomStringConvertible {
        case crash(node: Int, at: UInt64, restartAfter: UInt64?)
        case pause(node: Int, at: UInt64, duration: UInt64)
        case split(mask: UInt64, at: UInt64, duration: UInt64)
        case inboundCut(node: Int, at: UInt64, duration: UInt64)
        case outboundCut(node: Int, at: UInt64, duration: UInt64)
        case lossBurst(rate: Double, at: UInt64, duration: UInt64)
        case delaySpike(extraMaxMs: UInt64, at: UInt64, duration: UInt64)
        case crashLord(at: UInt64, restartAfter: UInt64?)
        case pauseLord(at: UInt64, duration: UInt64)

        public var description: String {
            func s(_ ns: UInt64) -> String { "\(ns / 1_000_000)ms" }
            switch self {
            case .crash(let n, let at, let r): return "crash n\(n) @\(s(at))" + (r.map { " restart+\(s($0))" } ?? "")
            case .pause(let n, let at, let d): return "pause n\(n) @\(s(at)) for \(s(d))"
            case .split(let m, let at, let d): return "split mask=\(String(m, radix: 2)) @\(s(at)) for \(s(d))"
            case .inboundCut(let n, let at, let d): return "one-way: n\(n) cannot receive @\(s(at)) for \(s(d))"
            case .outboundCut(let n, let at, let d): return "one-way: n\(n) cannot send @\(s(at)) for \(s(d))"
            case .lossBurst(let r, let at, let d): return "loss \(Int(r * 100))% @\(s(at)) for \(s(d))"
            case .delaySpike(let x, let at, let d): return "delay +0..\(x)ms @\(s(at)) for \(s(d))"
            case .crashLord(let at, let r): return "crash the Lord @\(s(at))" + (r.map { " restart+\(s($0))" } ?? "")
            case .pauseLord(let at, let d): return "pause the Lord @\(s(at)) for \(s(d))"
            }
        }
    }

    public let seed: UInt64
    public let mode: LegionCodec.Mode
    public let valors: [UInt64]
    public let quorum: Int
    public let clockRates: [Double]
    public let wallOffsetsMs: [Int64]
    public let baseDelayMs: ClosedRange<UInt64>
    public let lossRate: Double
    public let duplicateRate: Double
    public let schedulingJitterMs: UInt64
    public let faults: [Fault]
    /// From here on the network is healthy, every node runs, and a Lord must appear (liveness).
    public let healAt: UInt64
    public let endAt: UInt64
    /// Route every packet through the real codec (encrypt, decrypt, parse).
    public let throughCodec: Bool
    public let nativeTiming: NativeLegion.Timing
    public let compatTiming: CompatLegion.Timing

    public var nodeCount: Int { valors.count }

    public init(seed: UInt64, mode: LegionCodec.Mode) {
        var rng = SimRandom(seed: seed)
        self.seed = seed
        self.mode = mode
        let n = [3, 3, 3, 4, 5, 5][Int.random(in: 0..<6, using: &rng)]
        var valors = (0..<n).map { _ in UInt64.random(in: 1...300, using: &rng) }
        if rng.chance(0.15) { valors[n - 1] = 0 }  // an arbiter
        if rng.chance(0.2), n > 1 { valors[1] = valors[0] }  // a valor tie, broken by uuid
        self.valors = valors
        quorum = n / 2 + 1
        var native = NativeLegion.Timing()
        native.preempt = rng.chance(0.7)
        native.preemptDelayMs = [0, 500, 2000][Int.random(in: 0..<3, using: &rng)]
        nativeTiming = native
        var compat = CompatLegion.Timing()
        compat.freqSeconds = 1
        compat.toleranceSeconds = 3
        compatTiming = compat
        let drift = native.maxDrift
        clockRates = (0..<n).map { _ in 1 + Double.random(in: -drift...drift, using: &rng) }
        wallOffsetsMs = (0..<n).map { _ in Int64.random(in: -150...150, using: &rng) }
        let maxDelay = [1, 5, 20, 60][Int.random(in: 0..<4, using: &rng)]
        baseDelayMs = 0...UInt64(maxDelay)
        lossRate = [0, 0, 0.01, 0.05, 0.2][Int.random(in: 0..<5, using: &rng)]
        duplicateRate = rng.chance(0.3) ? 0.05 : 0
        schedulingJitterMs = [1, 2, 10][Int.random(in: 0..<3, using: &rng)]
        throughCodec = rng.chance(0.02)

        let unit: UInt64 = mode == .native ? 1 : 6  // compat timers are seconds, stretch its faults
        let faultStart: UInt64 = (mode == .native ? 1500 : 8000) * 1_000_000
        let faultWindow: UInt64 = 6000 * unit * 1_000_000
        var faults: [Fault] = []
        let count = Int.random(in: 0...4, using: &rng)
        for _ in 0..<count {
            let at = faultStart + UInt64.random(in: 0...faultWindow, using: &rng)
            let node = Int.random(in: 0..<n, using: &rng)
            let dur = rng.ms(50...(1500 * unit))
            switch Int.random(in: 0..<10, using: &rng) {
            case 0: faults.append(.crash(node: node, at: at, restartAfter: rng.chance(0.7) ? rng.ms(100...(2000 * unit)) : nil))
            case 1: faults.append(.pause(node: node, at: at, duration: dur))
            case 2:
                var mask = UInt64.random(in: 1...((1 << UInt64(n)) - 2), using: &rng)
                if mask == 0 { mask = 1 }
                faults.append(.split(mask: mask, at: at, duration: dur))
            case 3: faults.append(.inboundCut(node: node, at: at, duration: dur))
            case 4: faults.append(.outboundCut(node: node, at: at, duration: dur))
            case 5: faults.append(.lossBurst(rate: [0.3, 0.6, 0.9][Int.random(in: 0..<3, using: &rng)], at: at, duration: dur))
            case 6: faults.append(.delaySpike(extraMaxMs: [50, 150, 400][Int.random(in: 0..<3, using: &rng)], at: at, duration: dur))
            case 7: faults.append(.crashLord(at: at, restartAfter: rng.chance(0.7) ? rng.ms(100...(2000 * unit)) : nil))
            case 8: faults.append(.pauseLord(at: at, duration: rng.ms(100...(3000 * unit))))
            default: faults.append(.crashLord(at: at, restartAfter: rng.ms(500...(1500 * unit))))
            }
        }
        self.faults = faults
        let faultEnd = faultStart + faultWindow + (3000 * unit + 2000 * unit) * 1_000_000
        healAt = faultEnd
        endAt = healAt + (mode == .native ? 6000 : 30000) * 1_000_000
    }

    public var description: String {
        "seed=\(seed) mode=\(mode.rawValue) valors=\(valors) quorum=\(quorum) delay=\(baseDelayMs)ms loss=\(lossRate) dup=\(duplicateRate) "
            + "jitter=\(schedulingJitterMs)ms preempt=\(nativeTiming.preempt)/\(nativeTiming.preemptDelayMs)ms codec=\(throughCodec) "
            + "faults=[\(faults.map(\.description).joined(separator: "; "))]"
    }
}
