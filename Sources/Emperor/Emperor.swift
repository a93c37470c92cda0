import CProcess
import CRouterIO
import Foundation
import Logging
import Metrics
import Supervisor
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The time source of the Emperor's shell (injectable: the core runs on fake time in tests).
public protocol EmperorClock: Sendable {
    func now() -> EmperorCore.Time
}

public struct SystemEmperorClock: EmperorClock {
    public init() {}
    public func now() -> EmperorCore.Time {
        var mono = timespec()
        clock_gettime(CLOCK_MONOTONIC, &mono)
        var wall = timespec()
        clock_gettime(CLOCK_REALTIME, &wall)
        return .init(monoMs: Int64(mono.tv_sec) * 1000 + Int64(mono.tv_nsec) / 1_000_000, wallS: Int64(wall.tv_sec))
    }
}

/// The Emperor's shell: one thread with an epoll loop over inotify, the vassals' channels, the stats socket
/// and a command eventfd (what uWSGI's `emperor_loop` does), carrying out `EmperorCore`'s directives with the
/// process supervisor. Vassals are real uWSGI instances (or anything that speaks the Emperor protocol).
public final class Emperor: @unchecked Sendable {
    // @unchecked: the loop's state is confined to the loop thread; `commands`, `statsText` and `done` are
    // behind mutexes, and the eventfd is only written from other threads.

    public struct Options: Sendable {
        /// Refuse symlinked vassal files that point outside their directory (containers).
        public var confineSymlinks = false
        /// The descriptor of our own Emperor's channel when this Emperor is itself a vassal (a sub-Emperor).
        public var parentChannel: Int32?
        /// The log file the Emperor and its vassals write to, rotated (copy + truncate) past `logMaxBytes`.
        public var logFile: String?
        public var logMaxBytes: Int = 200 << 20
        /// Vassals from somewhere other than files (the store's containers); replaces the monitors' scan.
        public var source: (@Sendable () -> [EmperorCore.VassalFile])?
        /// Builds the command for a vassal instead of `binary --ini NAME` (the channel fd and environment are added).
        public var launcher: (@Sendable (EmperorCore.VassalFile) -> SpawnSpec)?
        public init() {}
    }

    private enum Command {
        case exited(name: String, pid: Int32, reason: ExitReason)
        case shutdown
        case reload
        case clearBlacklist
        case status
        case rescan
    }

    public let settings: EmperorSettings
    private let options: Options
    private let logger: Logger
    private let clock: any EmperorClock
    private let supervisor: ProcessSupervisor
    private let reader: VassalFileReader
    private let commands = Mutex<[Command]>([])
    private let statsText = Mutex<String>("")
    private let names = Mutex<Set<String>>([])
    private let finished = Mutex<(done: Bool, exitCode: Int32, waiters: [CheckedContinuation<Int32, Never>])>((false, 0, []))
    private let eventFD: Int32

    // Loop-thread state.
    private var core: EmperorCore
    private var channels: [Int32: (name: String, pid: Int32)] = [:]
    private var channelOf: [String: Int32] = [:]
    private var epollFD: Int32 = -1
    private var inotifyFD: Int32 = -1
    private var statsFD: Int32 = -1
    private var exitCode: Int32 = 0

    private static let tokenEvent: UInt64 = 1
    private static let tokenInotify: UInt64 = 2
    private static let tokenStats: UInt64 = 3
    private static let tokenParent: UInt64 = 4
    private static let tokenChannel: UInt64 = 1 << 32

    public init(settings: EmperorSettings, options: Options = Options(), logger: Logger,
                clock: any EmperorClock = SystemEmperorClock(), supervisor: ProcessSupervisor = .shared) {
        self.settings = settings
        self.options = options
        self.logger = logger
        self.clock = clock
        self.supervisor = supervisor
        self.reader = VassalFileReader(settings: settings, confineSymlinks: options.confineSymlinks)
        self.core = EmperorCore(settings: settings)
        self.eventFD = crio_eventfd()
    }

    // MARK: Control (any thread)

    public func shutdown() { post(.shutdown) }
    public func reloadAll() { post(.reload) }
    public func clearBlacklist() { post(.clearBlacklist) }
    public func logStatus() { post(.status) }
    public func rescan() { post(.rescan) }

    /// The stats document as of the last loop iteration.
    public var stats: String { statsText.withLock { $0 } }
    /// The vassals with a running instance, as of the last loop iteration.
    public var vassalNames: Set<String> { names.withLock { $0 } }

    /// Runs until every vassal is gone after a shutdown; cancelling the task shuts down. Returns the exit code
    /// (0, or 1 when this sub-Emperor lost its own Emperor).
    @discardableResult
    public func run() async throws -> Int32 {
        try prepare()
        let thread = Thread { [self] in
            ThreadName.set("legion-emperor")
            loop()
        }
        thread.start()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let code: Int32? = finished.withLock { state in
                    if state.done { return state.exitCode }
                    state.waiters.append(continuation)
                    return nil
                }
                if let code { continuation.resume(returning: code) }
            }
        } onCancel: {
            self.shutdown()
        }
    }

    private func post(_ command: Command) {
        commands.withLock { $0.append(command) }
        _ = crio_eventfd_signal(eventFD)
    }

    // MARK: Loop (its own thread)

    private func prepare() throws {
        guard eventFD >= 0 else { throw EmperorError("cannot create an eventfd: \(String(cString: strerror(errno)))") }
        epollFD = crio_epoll_create()
        guard epollFD >= 0 else { throw EmperorError("cannot create an epoll instance: \(String(cString: strerror(errno)))") }
        _ = crio_epoll_add(epollFD, eventFD, Self.tokenEvent, 0, 0, 0)
        inotifyFD = cproc_inotify_init()
        if inotifyFD >= 0 {
            _ = crio_epoll_add(epollFD, inotifyFD, Self.tokenInotify, 0, 0, 0)
            // A list-backed Emperor (options.source: the node's sub-Emperors) has no directory to watch; it is told to rescan.
            var watched = options.source == nil ? settings.monitors : []
            if let owned = settings.ownedDomainsFile { watched.append((owned as NSString).deletingLastPathComponent + "/") }
            for monitor in watched {
                var isDir: ObjCBool = false
                let dir = FileManager.default.fileExists(atPath: monitor, isDirectory: &isDir) && isDir.boolValue
                    ? monitor : (monitor as NSString).deletingLastPathComponent
                if cproc_inotify_watch(inotifyFD, dir) < 0 {
                    logger.warning("cannot watch \(dir) with inotify (\(String(cString: strerror(errno)))); rescanning every \(settings.rescanMs) ms")
                }
            }
        }
        if let address = settings.statsServer {
            if let colon = address.lastIndex(of: ":"), let port = Int32(address[address.index(after: colon)...]) {
                statsFD = crio_listen_tcp(String(address[..<colon]), port, 64)
            } else {
                statsFD = crio_listen_unix(address)
            }
            guard statsFD >= 0 else {
                throw EmperorError("cannot listen on the stats address \(address): \(String(cString: strerror(errno))); choose a free port or a writable path")
            }
            _ = crio_epoll_add(epollFD, statsFD, Self.tokenStats, 0, 0, 0)
        }
        if let parent = options.parentChannel {
            _ = fcntl(parent, F_SETFD, FD_CLOEXEC)
            _ = fcntl(parent, F_SETFL, fcntl(parent, F_GETFL) | O_NONBLOCK)
            _ = crio_epoll_add(epollFD, parent, Self.tokenParent, 0, 0, 0)
            // As a vassal: ready, accepting, and loyal from the start (what a uWSGI sub-Emperor sends).
            for byte in [EmperorCore.Byte.ready, EmperorCore.Byte.accepting, EmperorCore.Byte.loyal] {
                var b = byte
                _ = write(parent, &b, 1)
            }
        }
    }

    private func loop() {
        logger.info("emperor started", metadata: ["monitors": "\(settings.monitors.joined(separator: ", "))"])
        var now = clock.now()
        execute(core.scan(scanVassals(), now: now))
        var nextScan = now.monoMs + settings.rescanMs
        var scanSoon: Int64?
        var tokens = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        var done = false
        while !done {
            publishStats()
            now = clock.now()
            var timeout = nextScan - now.monoMs
            if let soon = scanSoon { timeout = min(timeout, soon - now.monoMs) }
            if needsTicks() { timeout = min(timeout, 100) }
            let n = crio_epoll_wait(epollFD, &tokens, &events, 64, Int32(max(0, min(timeout, 60_000))))
            now = clock.now()
            for i in 0..<Int(max(0, n)) {
                switch tokens[i] {
                case Self.tokenEvent:
                    crio_eventfd_drain(eventFD)
                case Self.tokenInotify:
                    _ = cproc_inotify_drain(inotifyFD)
                    // Let a writer finish: scan 30 ms after the last change.
                    scanSoon = now.monoMs + 30
                case Self.tokenStats:
                    serveStats()
                case Self.tokenParent:
                    readParent(now: now)
                default:
                    readChannel(Int32(truncatingIfNeeded: tokens[i] & 0xFFFF_FFFF), now: now)
                }
            }
            for command in commands.withLock({ c -> [Command] in defer { c = [] }; return c }) {
                switch command {
                case .exited(let name, let pid, let reason):
                    if let fd = channelOf[name], channels[fd]?.pid == pid {
                        readChannel(fd, now: now)   // bytes sent just before the exit count
                        closeChannel(fd)
                    }
                    // Whatever the master left in its process group is an orphan now (a busy worker holding the port).
                    _ = kill(-pid, SIGKILL)
                    var code: Int32?
                    if case .exited(let c) = reason { code = c }
                    let (respawns, throttled) = (core.respawnCount, core.throttledCount)
                    execute(core.exited(name, pid: pid, reason: reason.description, code: code, now: now))
                    if core.respawnCount > respawns { Counter(label: "legion_emperor_respawns_total").increment(by: core.respawnCount - respawns) }
                    if core.throttledCount > throttled { Counter(label: "legion_emperor_throttled_total").increment(by: core.throttledCount - throttled) }
                case .shutdown:
                    execute(core.shutdown(now: now))
                case .reload:
                    execute(core.reloadAll(now: now))
                case .clearBlacklist:
                    execute(core.clearBlacklist(now: now))
                case .status:
                    for line in core.statusLines() { logger.info("\(line)") }
                case .rescan:
                    scanSoon = now.monoMs
                }
            }
            if let soon = scanSoon, now.monoMs >= soon {
                scanSoon = nil
                nextScan = 0
            }
            if now.monoMs >= nextScan {
                if !core.shuttingDown { execute(core.scan(scanVassals(), now: now)) }
                nextScan = now.monoMs + settings.rescanMs
                rotateLogIfNeeded()
            }
            done = execute(core.tick(now: now)) || finishedFlag
        }
        publishStats(force: true)
        for fd in Array(channels.keys) { closeChannel(fd) }
        if statsFD >= 0 {
            close(statsFD)
            if let address = settings.statsServer, !address.contains(":") { unlink(address) }
        }
        logger.info("emperor stopped")
        let waiters = finished.withLock { state -> [CheckedContinuation<Int32, Never>] in
            state.done = true
            state.exitCode = exitCode
            defer { state.waiters = [] }
            return state.waiters
        }
        for w in waiters { w.resume(returning: exitCode) }
    }

    private var finishedFlag = false

    private func scanVassals() -> [EmperorCore.VassalFile] {
        if let source = options.source { return source() }
        return reader.scan()
    }

    private func needsTicks() -> Bool {
        if core.shuttingDown { return true }
        if core.throttles.values.contains(where: { $0.delayMs > 0 }) { return true }
        return core.instances.values.contains { $0.phase == .stopping || $0.lastHeartbeatMono != nil }
    }

    /// Carries out directives; true when the core reports the shutdown finished.
    @discardableResult
    private func execute(_ directives: [EmperorCore.Directive]) -> Bool {
        for directive in directives {
            switch directive {
            case .spawn(let file):
                spawn(file)
            case .send(let name, let pid, let byte):
                guard let fd = channelOf[name], channels[fd]?.pid == pid else { continue }
                var b = byte
                if write(fd, &b, 1) != 1 {
                    logger.warning("cannot write to vassal \(name)'s channel: \(String(cString: strerror(errno)))")
                }
            case .chainReload(let file, let pid):
                if !chainReload(file) {
                    logger.warning("vassal \(file.name): its master FIFO cannot be written; full reload instead")
                    if let fd = channelOf[file.name], channels[fd]?.pid == pid {
                        var b = EmperorCore.Byte.reload
                        _ = write(fd, &b, 1)
                    }
                }
            case .kill(_, let pid, let signal):
                if kill(-pid, signal) != 0 { _ = kill(pid, signal) }
            case .log(let level, let message):
                switch level {
                case .info: logger.info("\(message)")
                case .warning: logger.warning("\(message)")
                case .error: logger.error("\(message)")
                }
            case .finished:
                finishedFlag = true
            }
        }
        return finishedFlag
    }

    /// Writes `c` to the vassal's master FIFO (non-blocking: no reader means no FIFO to use).
    private func chainReload(_ file: EmperorCore.VassalFile) -> Bool {
        guard let pattern = settings.chainReloadFifo else { return false }
        let path = Self.expandMagic(pattern, file: file)
        let fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var c = UInt8(ascii: "c")
        return write(fd, &c, 1) == 1
    }

    private func spawn(_ file: EmperorCore.VassalFile) {
        let now = clock.now()
        var pair: [Int32] = [-1, -1]
        guard cproc_socketpair(&pair) == 0 else {
            execute(core.spawnFailed(file, error: "socketpair: \(String(cString: strerror(errno)))", now: now))
            return
        }
        var spec: SpawnSpec
        if let launcher = options.launcher {
            spec = launcher(file)
        } else {
            spec = SpawnSpec(executable: file.binary ?? settings.binary)
            spec.arguments = Self.arguments(for: file, settings: settings)
            spec.workingDirectory = file.name.contains("/") ? nil : file.monitor
        }
        spec.environment = Self.environment(base: spec.environment ?? currentEnvironment(), extra: settings.environment, fd: 3)
        spec.passFDs = [(pair[1], 3)]
        if settings.tyrant {
            spec.user = (file.uid, file.gid)
            logger.info("[emperor-tyrant] dropping privileges to \(file.uid) \(file.gid) for instance \(file.name)")
        }
        let name = file.name
        do {
            let child = try supervisor.spawn(spec) { [weak self] pid, reason in
                self?.post(.exited(name: name, pid: pid, reason: reason))
            }
            close(pair[1])
            channels[pair[0]] = (name, child.pid)
            channelOf[name] = pair[0]
            _ = crio_epoll_add(epollFD, pair[0], Self.tokenChannel | UInt64(UInt32(bitPattern: pair[0])), 0, 0, 0)
            execute(core.spawned(file, pid: child.pid, now: now))
        } catch {
            close(pair[0])
            close(pair[1])
            execute(core.spawnFailed(file, error: error.description, now: now))
        }
    }

    private func readChannel(_ fd: Int32, now: EmperorCore.Time) {
        guard let (name, pid) = channels[fd] else { return }
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 {
                for byte in buffer[0..<n] { execute(core.received(byte, from: name, pid: pid, now: now)) }
                continue
            }
            if n == 0 {
                closeChannel(fd)
                execute(core.channelClosed(name, pid: pid, now: now))
            } else if errno == EINTR {
                continue
            }
            return
        }
    }

    private func closeChannel(_ fd: Int32) {
        guard let entry = channels.removeValue(forKey: fd) else { return }
        if channelOf[entry.name] == fd { channelOf[entry.name] = nil }
        _ = crio_epoll_del(epollFD, fd)
        close(fd)
    }

    private func readParent(now: EmperorCore.Time) {
        guard let parent = options.parentChannel else { return }
        var byte: UInt8 = 0
        let n = read(parent, &byte, 1)
        if n == 1 {
            switch byte {
            case EmperorCore.Byte.stop, EmperorCore.Byte.gracefulStop:
                logger.info("our Emperor asked us to stop")
                exitCode = 0
                execute(core.shutdown(now: now))
            case EmperorCore.Byte.reload:
                // Like uWSGI's sub-Emperors with exit-on-reload: stop our vassals, exit 0, get respawned.
                logger.info("our Emperor asked for a reload: stopping the vassals and exiting to be respawned")
                exitCode = 0
                execute(core.shutdown(now: now))
            default:
                logger.warning("unknown byte \(byte) from our Emperor; ignored")
            }
        } else if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
            logger.error("lost connection with our Emperor: stopping the vassals")
            _ = crio_epoll_del(epollFD, parent)
            exitCode = 1
            execute(core.shutdown(now: now))
        }
    }

    private func serveStats() {
        var host = [CChar](repeating: 0, count: 64)
        var port: Int32 = 0
        while true {
            let fd = crio_accept(statsFD, &host, 64, &port)
            guard fd >= 0 else { return }
            let text = EmperorStats.json(core, process: processInfo())
            _ = text.withCString { cproc_write_all(fd, $0, strlen($0), 1000) }
            close(fd)
        }
    }

    private var lastStatsMono: Int64 = -1_000_000

    /// Publishes what other threads may read: the running names at every iteration (cheap), the stats document
    /// at most every 200 ms (a 200-vassal boot wakes the loop thousands of times).
    private func publishStats(force: Bool = false) {
        let running = Set(core.instances.keys)
        names.withLock { $0 = running }
        let now = clock.now().monoMs
        guard force || now - lastStatsMono >= 200 else { return }
        lastStatsMono = now
        let text = EmperorStats.json(core, process: processInfo())
        statsText.withLock { $0 = text }
    }

    private func processInfo() -> EmperorStats.Process {
        EmperorStats.Process(version: "legion-emperor 1 (uWSGI 2.0 protocol)", pid: getpid(), uid: getuid(), gid: getgid(),
                             cwd: FileManager.default.currentDirectoryPath)
    }

    private func rotateLogIfNeeded() {
        guard let path = options.logFile else { return }
        var st = stat()
        guard stat(path, &st) == 0, Int(st.st_size) > options.logMaxBytes else { return }
        // copy + truncate: the Emperor and every vassal hold the file open with O_APPEND, so truncating in
        // place is safe for all of them (a rename would leave them writing to the old file).
        let rotated = path + ".1"
        _ = unlink(rotated)
        do {
            try FileManager.default.copyItem(atPath: path, toPath: rotated)
            _ = truncate(path, 0)
            logger.info("log rotated to \(rotated)")
        } catch {
            logger.warning("cannot rotate \(path): \(error)")
        }
    }

    // MARK: Pure helpers

    /// argv after argv[0]: `[--inherit B…] [--include B…] [--set S…] --<fmt> <name> [--inherit A…] [--include A…]`.
    public static func arguments(for file: EmperorCore.VassalFile, settings: EmperorSettings) -> [String] {
        let magic = { (text: String) in expandMagic(text, file: file) }
        var args: [String] = []
        for f in settings.vassalsInheritBefore { args += ["--inherit", magic(f)] }
        for f in settings.vassalsIncludeBefore { args += ["--include", magic(f)] }
        for s in settings.vassalsSet { args += ["--set", magic(s)] }
        let ext = (file.name as NSString).pathExtension.lowercased()
        args += [EmperorSettings.extensions[ext] ?? "--inherit", file.name]
        for f in settings.vassalsInherit { args += ["--inherit", magic(f)] }
        for f in settings.vassalsInclude { args += ["--include", magic(f)] }
        return args
    }

    /// `%n` name without extension, `%s` file name, `%d` its directory (with `/`), `%p` full path, `%%` a percent.
    public static func expandMagic(_ text: String, file: EmperorCore.VassalFile) -> String {
        guard text.contains("%") else { return text }
        let base = (file.path as NSString).lastPathComponent
        let dir = (file.path as NSString).deletingLastPathComponent + "/"
        var out = ""
        var chars = text.makeIterator()
        while let c = chars.next() {
            guard c == "%" else { out.append(c); continue }
            guard let m = chars.next() else { out.append("%"); break }
            switch m {
            case "n": out += (base as NSString).deletingPathExtension
            case "s": out += base
            case "d": out += dir
            case "p": out += file.path
            case "%": out += "%"
            default: out += "%\(m)"   // uWSGI's own magic variables (%J, %h…) are left for the vassal to expand
            }
        }
        return out
    }

    /// The vassal's environment: ours without `UWSGI_RELOADS`/`NOTIFY_SOCKET`/our own Emperor's fd,
    /// `UWSGI_VASSAL_X=v` rewritten to `UWSGI_X=v` (as uWSGI documents; 2.0.21's rewrite is broken), and the channel fd.
    public static func environment(base: [String: String], extra: [String: String], fd: Int32) -> [String: String] {
        var env: [String: String] = [:]
        for (key, value) in base {
            if ["UWSGI_RELOADS", "NOTIFY_SOCKET", "UWSGI_EMPEROR_FD", "UWSGI_EMPEROR_FD_CONFIG", "UWSGI_EMPEROR_PROXY"].contains(key) { continue }
            env[key] = value
        }
        for (key, value) in base where key.hasPrefix("UWSGI_VASSAL_") {
            env[key] = nil
            env["UWSGI_" + key.dropFirst("UWSGI_VASSAL_".count)] = value
        }
        for (key, value) in extra { env[key] = value }
        env["UWSGI_EMPEROR_FD"] = "\(fd)"
        return env
    }
}

public struct EmperorError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
