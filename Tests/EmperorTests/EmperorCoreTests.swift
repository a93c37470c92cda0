import LegionSimulator
import Testing
@testable import Emperor

/// The Emperor's rules on fake time: no process, no clock, every directive checked.
@Suite struct EmperorCoreTests {
    typealias Core = EmperorCore
    typealias File = EmperorCore.VassalFile

    static func file(_ name: String, mtime: Int64 = 1, uid: UInt32 = 0, problem: String? = nil) -> File {
        File(name: name, path: "/v/\(name)", monitor: "/v", mtimeNs: mtime, uid: uid, gid: uid, problem: problem)
    }

    static func t(_ ms: Int64) -> Core.Time { .init(monoMs: ms, wallS: 1_800_000_000 + ms / 1000) }

    static func settings() -> EmperorSettings {
        var s = EmperorSettings()
        s.throttleMs = 1000
        s.maxThrottleMs = 3500
        s.goodRunMs = 10_000
        s.curseToleranceMs = 5000
        s.reloadMercyMs = 4000
        s.requiredHeartbeatMs = 5000
        return s
    }

    static func spawns(_ d: [Core.Directive]) -> [String] {
        d.compactMap { if case .spawn(let f) = $0 { return f.name } else { return nil } }
    }

    static func sends(_ d: [Core.Directive]) -> [UInt8] {
        d.compactMap { if case .send(_, _, let b) = $0 { return b } else { return nil } }
    }

    static func kills(_ d: [Core.Directive]) -> [Int32] {
        d.compactMap { if case .kill(_, _, let s) = $0 { return s } else { return nil } }
    }

    /// Scans and starts `names` (pids 100, 101, …) at time 0.
    static func running(_ names: [String], settings: EmperorSettings = settings()) -> Core {
        var core = Core(settings: settings)
        let d = core.scan(names.map { file($0) }, now: t(0))
        #expect(spawns(d) == names.sorted())
        for (i, name) in names.sorted().enumerated() { _ = core.spawned(file(name), pid: Int32(100 + i), now: t(0)) }
        return core
    }

    @Test func newFilesStartAtOnceEvenTwoHundred() {
        var core = Core(settings: Self.settings())
        let files = (0..<200).map { Self.file("app\($0).ini") }
        let d = core.scan(files, now: Self.t(0))
        // No throttling of the initial scan (uWSGI's documented "throttling" would take minutes for 200).
        #expect(Self.spawns(d).count == 200)
    }

    @Test func touchReloadsRemoveStops() {
        var core = Self.running(["a.ini"])
        _ = core.received(1, from: "a.ini", pid: 100, now: Self.t(100))
        #expect(core.instances["a.ini"]?.ready == true)
        // Same mtime: nothing.
        #expect(Self.sends(core.scan([Self.file("a.ini")], now: Self.t(500))).isEmpty)
        let touch = core.scan([Self.file("a.ini", mtime: 2)], now: Self.t(1000))
        #expect(Self.sends(touch) == [Core.Byte.reload])
        #expect(core.instances["a.ini"]?.respawns == 1)
        #expect(core.instances["a.ini"]?.ready == false)
        let removed = core.scan([], now: Self.t(2000))
        #expect(Self.sends(removed) == [Core.Byte.stop])
        #expect(core.instances["a.ini"]?.phase == .stopping)
        // It exits: no respawn, no blacklist (a requested stop is not a death).
        let exit = core.exited("a.ini", pid: 100, reason: "exit code 0", code: 0, now: Self.t(2010))
        #expect(Self.spawns(exit).isEmpty)
        #expect(core.instances.isEmpty)
        #expect(core.throttles.isEmpty)
    }

    @Test func aFileRecreatedWhileItsVassalStopsStartsAsSoonAsItExits() {
        var core = Self.running(["a.ini"])
        _ = core.scan([], now: Self.t(10))
        #expect(Self.spawns(core.scan([Self.file("a.ini", mtime: 2)], now: Self.t(20))).isEmpty, "one instance per name")
        let d = core.exited("a.ini", pid: 100, reason: "exit code 0", code: 0, now: Self.t(500))
        #expect(Self.spawns(d) == ["a.ini"])
    }

    @Test func gracefulShutdownUsesByteTwo() {
        var s = Self.settings()
        s.gracefulShutdown = true
        var core = Self.running(["a.ini"], settings: s)
        #expect(Self.sends(core.scan([], now: Self.t(10))) == [Core.Byte.gracefulStop])
    }

    @Test func stoppedVassalIgnoringStopIsKilledAfterCurseTolerance() {
        var core = Self.running(["a.ini"])
        _ = core.scan([], now: Self.t(1000))
        #expect(Self.kills(core.tick(now: Self.t(5999))).isEmpty)
        #expect(Self.kills(core.tick(now: Self.t(6000))) == [9])
    }

    @Test func loyalDeathRespawnsAtOnce() {
        var core = Self.running(["a.ini"])
        _ = core.received(Core.Byte.loyal, from: "a.ini", pid: 100, now: Self.t(200))
        let d = core.exited("a.ini", pid: 100, reason: "killed by signal 9", code: nil, now: Self.t(300))
        #expect(Self.spawns(d) == ["a.ini"])
        #expect(core.throttles["a.ini"] == nil)
    }

    @Test func fastDeathsAreThrottledUpToTheMaximumAndBlacklisted() {
        var core = Self.running(["a.ini"])
        var now: Int64 = 0
        var delays: [Int64] = []
        for i in 0..<6 {
            now += 50
            let d = core.exited("a.ini", pid: Int32(100 + i), reason: "exit code 1", code: 1, now: Self.t(now))
            #expect(Self.spawns(d).isEmpty, "a fast death is never respawned at once")
            let delay = core.throttles["a.ini"]?.delayMs ?? -1
            delays.append(delay)
            #expect(core.throttles["a.ini"]?.blacklisted == true)
            // Not before the delay…
            #expect(Self.spawns(core.tick(now: Self.t(now + delay - 1))).isEmpty)
            // …then yes.
            now += delay
            #expect(Self.spawns(core.tick(now: Self.t(now))) == ["a.ini"])
            _ = core.spawned(Self.file("a.ini"), pid: Int32(101 + i), now: Self.t(now))
        }
        #expect(delays == [1000, 2000, 3000, 3500, 3500, 3500])
        #expect(core.throttles["a.ini"]?.attempt == 6)
    }

    @Test func loyaltyAndLongRunsResetTheThrottle() {
        var core = Self.running(["a.ini"])
        _ = core.exited("a.ini", pid: 100, reason: "exit code 1", code: 1, now: Self.t(50))
        _ = core.tick(now: Self.t(1050))
        _ = core.spawned(Self.file("a.ini"), pid: 101, now: Self.t(1050))
        _ = core.received(Core.Byte.loyal, from: "a.ini", pid: 101, now: Self.t(1100))
        #expect(core.throttles["a.ini"]?.blacklisted == false)
        #expect(core.throttles["a.ini"]?.delayMs == 0)
        // A vassal that ran past goodRunMs without being loyal (no request yet) is respawned at once too.
        var other = Self.running(["b.ini"])
        let d = other.exited("b.ini", pid: 100, reason: "exit code 1", code: 1, now: Self.t(20_000))
        #expect(Self.spawns(d) == ["b.ini"])
    }

    @Test func touchingAThrottledVassalStartsItNow() {
        var core = Self.running(["a.ini"])
        for i in 0..<3 {
            let base = Int64(i) * 10_000
            _ = core.exited("a.ini", pid: Int32(100 + i), reason: "exit code 1", code: 1, now: Self.t(base + 10))
            _ = core.tick(now: Self.t(base + 9000))
            _ = core.spawned(Self.file("a.ini"), pid: Int32(101 + i), now: Self.t(base + 9000))
            _ = core.exited("a.ini", pid: Int32(101 + i), reason: "exit code 1", code: 1, now: Self.t(base + 9010))
            _ = core.tick(now: Self.t(base + 9999))
            _ = core.spawned(Self.file("a.ini"), pid: Int32(101 + i), now: Self.t(base + 9999))
        }
        _ = core.exited("a.ini", pid: 103, reason: "exit code 1 (need-app)", code: 1, now: Self.t(30_000))
        #expect(core.throttles["a.ini"]?.delayMs == 3500)
        #expect(Self.spawns(core.tick(now: Self.t(30_100))).isEmpty)
        let d = core.scan([Self.file("a.ini", mtime: 9)], now: Self.t(30_100))
        #expect(Self.spawns(d) == ["a.ini"])
    }

    @Test func clearingTheBlacklistStartsWaitingVassals() {
        var core = Self.running(["a.ini", "b.ini"])
        _ = core.exited("a.ini", pid: 100, reason: "exit code 1", code: 1, now: Self.t(10))
        #expect(core.throttles["a.ini"]?.blacklisted == true)
        let d = core.clearBlacklist(now: Self.t(20))
        #expect(Self.spawns(d) == ["a.ini"])
        #expect(core.throttles.isEmpty)
        #expect(!EmperorStats.json(core, process: .init(version: "t", pid: 1, uid: 0, gid: 0, cwd: "/")).contains("\"attempt\""))
    }

    @Test func silentHeartbeatReloadsThenKills() {
        var core = Self.running(["a.ini"])
        _ = core.received(Core.Byte.heartbeat, from: "a.ini", pid: 100, now: Self.t(1000))
        #expect(Self.sends(core.tick(now: Self.t(6000))).isEmpty, "5 s of silence is not yet more than required")
        let first = core.tick(now: Self.t(6001))
        #expect(Self.sends(first) == [Core.Byte.reload])
        #expect(Self.kills(first).isEmpty)
        let second = core.tick(now: Self.t(11_002))
        #expect(Self.kills(second) == [9])
        // A vassal that never sent a heartbeat is never checked.
        var quiet = Self.running(["q.ini"])
        #expect(quiet.tick(now: Self.t(1_000_000)).isEmpty)
    }

    @Test func heartbeatAfterReloadClearsTheHang() {
        var core = Self.running(["a.ini"])
        _ = core.received(Core.Byte.heartbeat, from: "a.ini", pid: 100, now: Self.t(0))
        _ = core.tick(now: Self.t(5001))
        _ = core.received(Core.Byte.heartbeat, from: "a.ini", pid: 100, now: Self.t(6000))
        #expect(Self.kills(core.tick(now: Self.t(10_999))).isEmpty)
    }

    @Test func shutdownStopsAllKillsAfterMercyThenFinishes() {
        var core = Self.running(["a.ini", "b.ini"])
        let d = core.shutdown(now: Self.t(0))
        #expect(Self.sends(d) == [Core.Byte.stop, Core.Byte.stop])
        _ = core.exited("a.ini", pid: 100, reason: "exit code 0", code: 0, now: Self.t(100))
        #expect(Self.kills(core.tick(now: Self.t(3999))).isEmpty)
        #expect(Self.kills(core.tick(now: Self.t(4000))) == [9])
        let last = core.exited("b.ini", pid: 101, reason: "killed by signal 9", code: nil, now: Self.t(4010))
        #expect(last.contains(.finished))
        #expect(Self.spawns(core.scan([Self.file("c.ini")], now: Self.t(4020))).isEmpty, "nothing starts during shutdown")
        #expect(core.shutdown(now: Self.t(5000)).allSatisfy { if case .log = $0 { return true } else { return false } })
    }

    @Test func exitOnReloadSubEmperorsComeBackAtOnce() {
        var core = Self.running(["30001"])
        _ = core.scan([Self.file("30001", mtime: 5)], now: Self.t(100))
        let d = core.exited("30001", pid: 100, reason: "exit code 0", code: 0, now: Self.t(150))
        #expect(Self.spawns(d) == ["30001"])
    }

    @Test func tyrantRefusesRootOwnedFilesAndStopsOnOwnerChange() {
        var s = Self.settings()
        s.tyrant = true
        var core = Core(settings: s)
        let root = core.scan([Self.file("a.ini", uid: 0)], now: Self.t(0))
        #expect(Self.spawns(root).isEmpty)
        #expect(root.contains { if case .log(.error, let m) = $0 { return m.contains("[emperor-tyrant] invalid permissions") } else { return false } })
        // Reported once per mtime, not at every scan.
        #expect(core.scan([Self.file("a.ini", uid: 0)], now: Self.t(3000)).isEmpty)
        #expect(core.throttles.isEmpty, "never blacklisted")
        #expect(Self.spawns(core.scan([Self.file("a.ini", uid: 1000)], now: Self.t(6000))) == ["a.ini"])
        _ = core.spawned(Self.file("a.ini", uid: 1000), pid: 7, now: Self.t(6000))
        let changed = core.scan([Self.file("a.ini", uid: 1001)], now: Self.t(9000))
        #expect(Self.sends(changed) == [Core.Byte.stop])
        _ = core.exited("a.ini", pid: 7, reason: "exit code 0", code: 0, now: Self.t(9010))
        #expect(Self.spawns(core.scan([Self.file("a.ini", uid: 1001)], now: Self.t(9100))) == ["a.ini"])
    }

    @Test func badFilesAreReportedOnceAndNeverStartOthersUnharmed() {
        var core = Core(settings: Self.settings())
        let d = core.scan([Self.file("bad.ini", problem: "line 3 is not 'key = value'"), Self.file("good.ini")], now: Self.t(0))
        #expect(Self.spawns(d) == ["good.ini"])
        _ = core.spawned(Self.file("good.ini"), pid: 1, now: Self.t(0))
        #expect(d.contains { if case .log(.error, let m) = $0 { return m.contains("bad.ini refused: line 3") } else { return false } })
        #expect(core.scan([Self.file("bad.ini", problem: "line 3 is not 'key = value'"), Self.file("good.ini")], now: Self.t(100))
            .allSatisfy { if case .log = $0 { return false } else { return true } })
        // Fixed: starts.
        #expect(Self.spawns(core.scan([Self.file("bad.ini", mtime: 2), Self.file("good.ini")], now: Self.t(200))) == ["bad.ini"])
    }

    @Test func aVassalWhoseDomainIsRevokedIsStopped() {
        var core = Self.running(["a.ini", "b.ini"])
        var revoked = Self.file("a.ini", problem: "the domain d is not registered to this customer")
        revoked.revoked = true
        let d = core.scan([revoked, Self.file("b.ini")], now: Self.t(10))
        #expect(Self.sends(d) == [Core.Byte.stop])
        #expect(core.instances["a.ini"]?.phase == .stopping)
        #expect(core.instances["b.ini"]?.phase != .stopping)
        // A syntax problem in a running vassal's new version does not stop it.
        var broken = Self.file("b.ini", mtime: 2, problem: "line 2 is not 'key = value'")
        broken.revoked = false
        #expect(Self.sends(core.scan([revoked, broken], now: Self.t(20))).isEmpty)
    }

    @Test func bytesFromAnOldInstanceAreIgnored() {
        var core = Self.running(["a.ini"])
        #expect(core.received(Core.Byte.loyal, from: "a.ini", pid: 999, now: Self.t(1)).isEmpty)
        #expect(core.instances["a.ini"]?.loyal == false)
        #expect(core.exited("a.ini", pid: 999, reason: "x", code: 0, now: Self.t(2)).isEmpty)
        #expect(core.instances["a.ini"] != nil)
    }

    @Test func voluntaryStopStops() {
        var core = Self.running(["a.ini"])
        #expect(Self.sends(core.received(Core.Byte.voluntaryStop, from: "a.ini", pid: 100, now: Self.t(1))) == [Core.Byte.stop])
    }

    /// Random events on fake time (seeded): at most one instance per name, only known files run, delays stay
    /// within the maximum, shutdown always finishes.
    @Test func randomEventsKeepTheInvariants() {
        for seed in UInt64(1)...300 {
            var rng = SimRandom(seed: seed)
            var core = Core(settings: Self.settings())
            var files: [String: Int64] = [:]
            var pid: Int32 = 1
            var now: Int64 = 0
            var pending: [File] = []
            for _ in 0..<200 {
                now += Int64(rng.next() % 2000)
                let name = "v\(rng.next() % 4).ini"
                var directives: [Core.Directive] = []
                switch rng.next() % 7 {
                case 0: files[name] = (files[name] ?? 0) + 1
                case 1: files[name] = nil
                case 2:
                    if let i = core.instances[name] {
                        directives += core.exited(name, pid: i.pid, reason: "r", code: Int32(rng.next() % 2), now: Self.t(now))
                    }
                case 3:
                    if let i = core.instances[name] {
                        let bytes: [UInt8] = [1, 5, 17, 26, 22]
                        directives += core.received(bytes[Int(rng.next() % 5)], from: name, pid: i.pid, now: Self.t(now))
                    }
                case 4: directives += core.clearBlacklist(now: Self.t(now))
                case 5: directives += core.reloadAll(now: Self.t(now))
                default: directives += core.tick(now: Self.t(now))
                }
                directives += core.scan(files.map { Self.file($0.key, mtime: $0.value) }, now: Self.t(now))
                for d in directives { if case .spawn(let f) = d { pending.append(f) } }
                for f in pending where core.instances[f.name] == nil && files[f.name] != nil {
                    _ = core.spawned(f, pid: pid, now: Self.t(now))
                    pid += 1
                }
                pending = []
                for t in core.throttles.values { #expect(t.delayMs <= 3500, "seed \(seed)") }
                for name in core.instances.keys where files[name] == nil {
                    #expect(core.instances[name]?.phase == .stopping, "seed \(seed): \(name) runs without its file")
                }
            }
            _ = core.shutdown(now: Self.t(now))
            var finished = core.instances.isEmpty
            for (name, i) in core.instances {
                finished = core.exited(name, pid: i.pid, reason: "r", code: 0, now: Self.t(now + 1)).contains(.finished) || finished
            }
            #expect(finished, "seed \(seed): shutdown finishes")
        }
    }
}

