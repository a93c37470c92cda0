/// uWSGI's Emperor as a pure state machine: inputs are scans of the vassal files, bytes and EOFs on the
/// vassals' channels, exits and `tick(now)`; outputs are directives the shell carries out (spawn, send a
/// byte, signal a process group, log). No I/O, no clock: a test drives it on fake time.
///
/// Where uWSGI 2.0.21 departs from its own docs this follows the docs and says so:
/// - throttling applies to respawns after fast deaths, never to the initial scan (200 vassals start at once);
/// - a requested stop never blacklists (2.0.21 blacklists unloyal vassals even then);
/// - a missed heartbeat first reloads the vassal (byte 1), and only a vassal still silent one period later is
///   killed — its whole process group, so a busy orphan worker cannot keep the port;
/// - touching a throttled or blacklisted vassal's file starts it at once (a fixed `need-app` vassal need not wait).
public struct EmperorCore: Sendable {
    public struct Time: Sendable, Equatable {
        /// Monotonic milliseconds: every delay is measured on this.
        public var monoMs: Int64
        /// Unix seconds, only for the stats document.
        public var wallS: Int64
        public init(monoMs: Int64, wallS: Int64) {
            self.monoMs = monoMs
            self.wallS = wallS
        }
    }

    /// One vassal file as a scan saw it.
    public struct VassalFile: Sendable, Equatable {
        /// The instance name: the bare file name for directory monitors.
        public var name: String
        public var path: String
        public var monitor: String
        /// Modification time in nanoseconds (finer than uWSGI's whole seconds, so two touches in a second count).
        public var mtimeNs: Int64
        public var uid: UInt32
        public var gid: UInt32
        /// Set when the file must not run (symlink out of its directory, too large, a domain not owned…).
        public var problem: String?
        /// The problem is a permission the vassal lost (a domain no longer owned): a running instance is stopped.
        public var revoked: Bool = false
        /// Worker processes the vassal asks for (`processes`/`workers` in an ini; 1 when unknown).
        public var workers: Int = 1
        /// FNV-1a of the file's bytes (0 when not read): a touch with the same contents may chain-reload.
        public var contentHash: UInt64 = 0
        /// The uWSGI binary this vassal asks for (`[legion] binary = PATH` in an ini), else the Emperor's.
        public var binary: String?

        public init(name: String, path: String, monitor: String, mtimeNs: Int64, uid: UInt32 = 0, gid: UInt32 = 0,
                    problem: String? = nil) {
            self.name = name
            self.path = path
            self.monitor = monitor
            self.mtimeNs = mtimeNs
            self.uid = uid
            self.gid = gid
            self.problem = problem
        }
    }

    public enum Directive: Sendable, Equatable {
        case spawn(VassalFile)
        case send(name: String, pid: Int32, byte: UInt8)
        /// Chain-reload the instance through its master FIFO (`EmperorSettings.chainReloadFifo`); the shell
        /// falls back to the reload byte when the FIFO cannot be written.
        case chainReload(VassalFile, pid: Int32)
        /// Signal the vassal's process group (the master and every worker it started).
        case kill(name: String, pid: Int32, signal: Int32)
        case log(LogLevel, String)
        /// Shutdown complete: every vassal is gone.
        case finished
    }

    public enum LogLevel: String, Sendable { case info, warning, error }

    /// Emperor ⇄ vassal protocol bytes (uWSGI `core/emperor.c`).
    public enum Byte {
        public static let stop: UInt8 = 0
        public static let reload: UInt8 = 1
        public static let gracefulStop: UInt8 = 2
        public static let ready: UInt8 = 1
        public static let configRequest: UInt8 = 2
        public static let accepting: UInt8 = 5
        public static let loyal: UInt8 = 17
        public static let voluntaryStop: UInt8 = 22
        public static let heartbeat: UInt8 = 26
        public static let sos: UInt8 = 30
        /// The exit code of a vassal whose exec failed.
        public static let exileCode: Int32 = 26
    }

    public enum Phase: String, Sendable { case starting, running, stopping }

    public struct Instance: Sendable, Equatable {
        public var file: VassalFile
        public var pid: Int32
        public var phase: Phase = .starting
        public var bornMono: Int64
        public var bornWall: Int64
        public var lastModWall: Int64
        public var loyal = false
        public var ready = false
        public var accepting = false
        public var lastLoyalWall: Int64 = 0
        public var lastReadyWall: Int64 = 0
        public var lastAcceptingWall: Int64 = 0
        public var lastHeartbeatMono: Int64?
        public var lastHeartbeatWall: Int64 = 0
        public var respawns = 0
        public var cursedAtWall: Int64 = 0
        public var channelClosed = false
        /// When the stop (or the last SIGKILL) was sent.
        public var stopSentMono: Int64?
        /// Set when a reload was sent (by touch, SIGHUP or a missed heartbeat): an exit after it is expected.
        public var reloadSentMono: Int64?
        /// A missed heartbeat already caused a reload: the next miss kills.
        public var hangReloaded = false
    }

    public struct Throttle: Sendable, Equatable {
        public var fastDeaths = 0
        public var delayMs: Int64 = 0
        public var nextSpawnMono: Int64 = 0
        public var blacklisted = false
        public var attempt = 0
        public var firstAttemptWall: Int64 = 0
        public var lastAttemptWall: Int64 = 0
    }

    public private(set) var settings: EmperorSettings
    public private(set) var instances: [String: Instance] = [:]
    public private(set) var throttles: [String: Throttle] = [:]
    /// Vassals restarted after dying / held back by the throttle, since the start (the node's metrics).
    public private(set) var respawnCount = 0
    public private(set) var throttledCount = 0
    /// Last scan's files by name.
    public private(set) var files: [String: VassalFile] = [:]
    /// Files whose problem was already logged (at this mtime), so a bad file is reported once, not every scan.
    private var reported: [String: Int64] = [:]
    /// SIGINT/SIGTERM received: nothing starts any more, `.finished` comes once every vassal is gone.
    public private(set) var shuttingDown = false
    private var shutdownDeadline: Int64 = 0
    private var finishedSent = false

    public init(settings: EmperorSettings) {
        self.settings = settings
    }

    // MARK: Inputs

    /// A full scan: every valid vassal file the monitors hold now.
    public mutating func scan(_ current: [VassalFile], now: Time) -> [Directive] {
        var out: [Directive] = []
        var seen: [String: VassalFile] = [:]
        for file in current where seen[file.name] == nil { seen[file.name] = file }
        // Removed files: stop their instances.
        for (name, instance) in instances where seen[name] == nil && instance.phase != .stopping {
            out.append(.log(.info, "vassal \(name) removed: stopping it"))
            out += stop(name, now: now)
        }
        for name in throttles.keys where seen[name] == nil { throttles[name] = nil }
        for name in reported.keys where seen[name] == nil { reported[name] = nil }
        for file in seen.values.sorted(by: { $0.name < $1.name }) {
            let previous = files[file.name]
            let touched = previous != nil && previous?.mtimeNs != file.mtimeNs
            if let problem = file.problem {
                let running = instances[file.name].map { $0.phase != .stopping } ?? false
                if reported[file.name] != file.mtimeNs || (running && file.revoked) {
                    reported[file.name] = file.mtimeNs
                    let note = running ? (file.revoked ? " (stopping the running instance)" : " (the running instance keeps its previous configuration)") : ""
                    out.append(.log(.error, "vassal \(file.name) refused: \(problem)\(note)"))
                }
                if running, file.revoked { out += stop(file.name, now: now) }
                continue
            }
            if settings.tyrant, file.uid == 0 || file.gid == 0 {
                if reported[file.name] != file.mtimeNs {
                    reported[file.name] = file.mtimeNs
                    out.append(.log(.error, "[emperor-tyrant] invalid permissions for vassal \(file.name): owned by uid \(file.uid) gid \(file.gid); chown it to the user it should run as (never root)"))
                }
                if instances[file.name] != nil, instances[file.name]?.phase != .stopping { out += stop(file.name, now: now) }
                continue
            }
            if var instance = instances[file.name] {
                guard instance.phase != .stopping else { continue }
                if settings.tyrant, instance.file.uid != file.uid || instance.file.gid != file.gid {
                    out.append(.log(.warning, "!!! permissions of file \(file.name) changed. stopping the instance... !!!"))
                    out += stop(file.name, now: now)
                    continue
                }
                if touched {
                    // A chain reload replaces one worker at a time, so with two or more the others keep serving;
                    // with one, a full reload is better: the vassal unsubscribes first (shortcuts set
                    // unsubscribe-on-graceful-reload) and the router sends its requests to the domain's other vassals.
                    let sameContents = file.contentHash != 0 && file.contentHash == instance.file.contentHash
                    instance.file = file
                    instance.lastModWall = now.wallS
                    instance.respawns += 1
                    if settings.chainReloadFifo != nil, sameContents, file.workers >= 2, !instance.channelClosed {
                        instances[file.name] = instance
                        out.append(.log(.info, "vassal \(file.name) touched: chain reload (one worker at a time, no stall)"))
                        out.append(.chainReload(file, pid: instance.pid))
                        continue
                    }
                    instance.ready = false
                    instance.accepting = false
                    instance.reloadSentMono = now.monoMs
                    instances[file.name] = instance
                    out.append(.log(.info, "vassal \(file.name) changed: graceful reload"))
                    if !instance.channelClosed { out.append(.send(name: file.name, pid: instance.pid, byte: Byte.reload)) }
                }
                continue
            }
            if touched, var throttle = throttles[file.name], throttle.nextSpawnMono > now.monoMs || throttle.blacklisted {
                // A touched file is the user saying "try again": no waiting out the throttle.
                throttle.nextSpawnMono = now.monoMs
                throttle.blacklisted = false
                throttles[file.name] = throttle
                out.append(.log(.info, "vassal \(file.name) touched while throttled: starting it now"))
            }
            files[file.name] = file
            if !shuttingDown, canSpawn(file.name, now: now) { out.append(.spawn(file)) }
        }
        files = seen
        return out
    }

    /// The shell started `name` as `pid`.
    public mutating func spawned(_ file: VassalFile, pid: Int32, now: Time) -> [Directive] {
        precondition(instances[file.name] == nil, "at most one instance per vassal name")
        instances[file.name] = Instance(file: file, pid: pid, bornMono: now.monoMs, bornWall: now.wallS, lastModWall: now.wallS)
        return [.log(.info, "vassal \(file.name) started (pid \(pid))")]
    }

    /// The shell could not start `name` (the binary is missing, a directory cannot be entered…): throttled like a fast death.
    public mutating func spawnFailed(_ file: VassalFile, error: String, now: Time) -> [Directive] {
        let delay = penalize(file.name, loyal: false, now: now)
        return [.log(.error, "vassal \(file.name) could not start: \(error); retrying in \(delay) ms (or touch the file)")]
    }

    /// One byte from a vassal's channel.
    public mutating func received(_ byte: UInt8, from name: String, pid: Int32, now: Time) -> [Directive] {
        guard var instance = instances[name], instance.pid == pid else { return [] }
        var out: [Directive] = []
        switch byte {
        case Byte.ready:
            instance.ready = true
            instance.lastReadyWall = now.wallS
            if instance.phase == .starting { instance.phase = .running }
            out.append(.log(.info, "vassal \(name) has been spawned"))
        case Byte.accepting:
            instance.accepting = true
            instance.lastAcceptingWall = now.wallS
            if instance.phase == .starting { instance.phase = .running }
            if instance.reloadSentMono != nil { instance.reloadSentMono = nil }
        case Byte.loyal:
            if !instance.loyal { out.append(.log(.info, "vassal \(name) is now loyal")) }
            instance.loyal = true
            instance.lastLoyalWall = now.wallS
            if instance.phase == .starting { instance.phase = .running }
            if var throttle = throttles[name] {
                throttle.blacklisted = false
                throttle.fastDeaths = 0
                throttle.delayMs = 0
                throttles[name] = throttle
            }
        case Byte.heartbeat:
            instance.lastHeartbeatMono = now.monoMs
            instance.lastHeartbeatWall = now.wallS
            instance.hangReloaded = false
        case Byte.voluntaryStop:
            instances[name] = instance
            out.append(.log(.info, "vassal \(name) asked to stop (idle)"))
            return out + stop(name, now: now)
        case Byte.configRequest, Byte.sos:
            break   // config push and Broodlord zergs are not supported: nothing to answer
        default:
            out.append(.log(.warning, "vassal \(name) sent unknown byte \(byte); ignored"))
        }
        instances[name] = instance
        return out
    }

    /// The vassal's end of the channel closed (master and workers gone or closing).
    public mutating func channelClosed(_ name: String, pid: Int32, now: Time) -> [Directive] {
        guard var instance = instances[name], instance.pid == pid else { return [] }
        instance.channelClosed = true
        if instance.cursedAtWall == 0 { instance.cursedAtWall = now.wallS }
        instances[name] = instance
        return []
    }

    /// The vassal's master exited.
    public mutating func exited(_ name: String, pid: Int32, reason: String, code: Int32?, now: Time) -> [Directive] {
        guard let instance = instances[name], instance.pid == pid else { return [] }
        instances[name] = nil
        var out: [Directive] = []
        let alive = now.monoMs - instance.bornMono
        if instance.phase == .stopping {
            out.append(.log(.info, "vassal \(name) stopped (\(reason))"))
            // Its file is back (re-created while it stopped, or a new owner): start the new one now, not at the next scan.
            if !shuttingDown, let file = files[name], file.problem == nil, canSpawn(name, now: now),
               !(settings.tyrant && (file.uid == 0 || file.gid == 0)) {
                out.append(.spawn(file))
            }
        } else if shuttingDown {
            out.append(.log(.info, "vassal \(name) exited during shutdown (\(reason))"))
        } else if instance.reloadSentMono != nil, code == 0 {
            // exit-on-reload vassals (sub-Emperors) answer a reload by exiting: start the new one at once.
            out.append(.log(.info, "vassal \(name) exited to reload: starting it again"))
            if let file = files[name], file.problem == nil { out.append(.spawn(file)) }
        } else if instance.loyal || alive >= settings.goodRunMs {
            throttles[name] = nil
            respawnCount += 1
            out.append(.log(.warning, "vassal \(name) died after \(alive) ms (\(reason)): respawning"))
            if let file = files[name], file.problem == nil { out.append(.spawn(file)) }
        } else {
            let delay = penalize(name, loyal: instance.loyal, now: now)
            throttledCount += 1
            let exile = code == Byte.exileCode ? "; exit 26: the binary could not be executed" : ""
            let listed = throttles[name]?.blacklisted == true ? ", blacklisted" : ""
            out.append(.log(.warning, "vassal \(name) died after \(alive) ms (\(reason)\(exile)): respawn throttled \(delay) ms\(listed); touch the file to retry at once"))
        }
        if shuttingDown, instances.isEmpty, !finishedSent {
            finishedSent = true
            out.append(.finished)
        }
        return out
    }

    /// Timers: throttled respawns due, missed heartbeats, stop timeouts, the shutdown deadline.
    public mutating func tick(now: Time) -> [Directive] {
        var out: [Directive] = []
        if shuttingDown {
            if now.monoMs >= shutdownDeadline {
                for (name, instance) in instances.sorted(by: { $0.key < $1.key }) where instance.stopSentMono.map({ now.monoMs - $0 >= 1000 }) ?? true {
                    out.append(.log(.warning, "NO MERCY: killing vassal \(name) (pid \(instance.pid)) still alive after the reload mercy"))
                    out.append(.kill(name: name, pid: instance.pid, signal: 9))
                    instances[name]?.stopSentMono = now.monoMs
                }
            }
            if instances.isEmpty, !finishedSent {
                finishedSent = true
                out.append(.finished)
            }
            return out
        }
        for (name, instance) in instances.sorted(by: { $0.key < $1.key }) {
            switch instance.phase {
            case .stopping:
                if let sent = instance.stopSentMono, now.monoMs - sent >= settings.curseToleranceMs {
                    out.append(.log(.warning, "vassal \(name) (pid \(instance.pid)) still alive \(settings.curseToleranceMs) ms after stop: SIGKILL"))
                    out.append(.kill(name: name, pid: instance.pid, signal: 9))
                    instances[name]?.stopSentMono = now.monoMs
                }
            case .starting, .running:
                guard let last = instance.lastHeartbeatMono, now.monoMs - last > settings.requiredHeartbeatMs else { continue }
                if instance.hangReloaded {
                    out.append(.log(.error, "vassal \(name) sent no heartbeat for \(now.monoMs - last) ms, even after a reload: killing it (and its workers)"))
                    out.append(.kill(name: name, pid: instance.pid, signal: 9))
                    instances[name]?.lastHeartbeatMono = nil
                } else {
                    out.append(.log(.warning, "vassal \(name) sent no heartbeat for \(now.monoMs - last) ms: reloading it"))
                    instances[name]?.hangReloaded = true
                    instances[name]?.lastHeartbeatMono = now.monoMs
                    instances[name]?.reloadSentMono = now.monoMs
                    if !instance.channelClosed { out.append(.send(name: name, pid: instance.pid, byte: Byte.reload)) }
                }
            }
        }
        for (name, file) in files.sorted(by: { $0.key < $1.key }) where instances[name] == nil && file.problem == nil {
            guard let throttle = throttles[name], throttle.nextSpawnMono <= now.monoMs else { continue }
            if settings.tyrant, file.uid == 0 || file.gid == 0 { continue }
            out.append(.spawn(file))
        }
        return out
    }

    /// SIGHUP: reload every vassal.
    public mutating func reloadAll(now: Time) -> [Directive] {
        var out: [Directive] = [.log(.info, "reloading all vassals")]
        for (name, instance) in instances.sorted(by: { $0.key < $1.key }) where instance.phase != .stopping {
            instances[name]?.respawns += 1
            instances[name]?.ready = false
            instances[name]?.accepting = false
            instances[name]?.reloadSentMono = now.monoMs
            if !instance.channelClosed { out.append(.send(name: name, pid: instance.pid, byte: Byte.reload)) }
        }
        return out
    }

    /// SIGURG (or a stats command): empty the blacklist and the throttles; waiting vassals start now.
    public mutating func clearBlacklist(now: Time) -> [Directive] {
        let count = throttles.count
        throttles = [:]
        var out: [Directive] = [.log(.info, "blacklist cleared (\(count) entries)")]
        for (name, file) in files.sorted(by: { $0.key < $1.key }) where instances[name] == nil && file.problem == nil && !shuttingDown {
            if settings.tyrant, file.uid == 0 || file.gid == 0 { continue }
            out.append(.spawn(file))
        }
        return out
    }

    /// SIGINT/SIGTERM: stop every vassal, SIGKILL what is left after the reload mercy, then `.finished`.
    public mutating func shutdown(now: Time) -> [Directive] {
        guard !shuttingDown else { return [.log(.info, "already shutting down")] }
        shuttingDown = true
        shutdownDeadline = now.monoMs + settings.reloadMercyMs
        var out: [Directive] = [.log(.info, "stopping \(instances.count) vassal(s)")]
        for name in instances.keys.sorted() where instances[name]?.phase != .stopping { out += stop(name, now: now) }
        if instances.isEmpty {
            finishedSent = true
            out.append(.finished)
        }
        return out
    }

    /// SIGUSR1: one line per vassal.
    public func statusLines() -> [String] {
        instances.keys.sorted().compactMap { name in
            guard let i = instances[name] else { return nil }
            return "vassal instance \(name) (last modified \(i.lastModWall)) status \(i.phase.rawValue) pid \(i.pid) loyal \(i.loyal ? 1 : 0) respawns \(i.respawns)"
        }
    }

    // MARK: Rules

    private func canSpawn(_ name: String, now: Time) -> Bool {
        guard instances[name] == nil else { return false }
        guard let throttle = throttles[name] else { return true }
        return throttle.nextSpawnMono <= now.monoMs
    }

    /// A fast death: the delay grows by `throttleMs` per death up to `maxThrottleMs`; a never-loyal vassal is blacklisted.
    private mutating func penalize(_ name: String, loyal: Bool, now: Time) -> Int64 {
        var throttle = throttles[name] ?? Throttle()
        throttle.fastDeaths += 1
        throttle.delayMs = min(settings.throttleMs * Int64(throttle.fastDeaths), settings.maxThrottleMs)
        throttle.nextSpawnMono = now.monoMs + throttle.delayMs
        if !loyal, !settings.noBlacklist {
            if !throttle.blacklisted { throttle.firstAttemptWall = throttle.firstAttemptWall == 0 ? now.wallS : throttle.firstAttemptWall }
            throttle.blacklisted = true
            throttle.attempt += 1
            throttle.lastAttemptWall = now.wallS
        }
        throttles[name] = throttle
        precondition(throttle.delayMs <= settings.maxThrottleMs, "the respawn delay never exceeds the maximum throttle")
        return throttle.delayMs
    }

    private mutating func stop(_ name: String, now: Time) -> [Directive] {
        guard var instance = instances[name] else { return [] }
        instance.phase = .stopping
        instance.stopSentMono = now.monoMs
        if instance.cursedAtWall == 0 { instance.cursedAtWall = now.wallS }
        instances[name] = instance
        if instance.channelClosed {
            return [.kill(name: name, pid: instance.pid, signal: 15)]
        }
        return [.send(name: name, pid: instance.pid, byte: settings.gracefulShutdown ? Byte.gracefulStop : Byte.stop)]
    }
}
