import ArgumentParser
import Dispatch
import Emperor
import Foundation
import Logging

struct EmperorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "emperor",
        abstract: "Run an Emperor on vassal directories, as `uwsgi --emperor DIR` does (real uWSGI vassals).",
        discussion: """
        Every .ini/.xml/.yml/.yaml/.json/.js file in DIR is a vassal: a new file starts one (`uwsgi --ini NAME`,
        run in DIR, with UWSGI_EMPEROR_FD set), touching it reloads it gracefully, removing it stops it. A
        vassal that dies is respawned at once when it was loyal (served a request) or ran long; fast deaths
        are throttled (+--throttle per death, up to --max-throttle) and never-loyal ones blacklisted; touching
        the file starts it again at once. Vassals that send heartbeats and go silent are reloaded, then killed.
        Signals: SIGHUP reloads all, SIGINT/SIGTERM stop all (SIGKILL after --reload-mercy) and exit,
        SIGURG clears the blacklist, SIGUSR1 logs one line per vassal.
        Run under another Emperor (UWSGI_EMPEROR_FD set) it is a sub-Emperor: loyal at once, it stops its
        vassals and exits when asked to stop or reload, or when its Emperor goes away.
        In an ini vassal, `[legion] binary = PATH` picks the uWSGI binary for that vassal.
        """
    )

    @Argument(help: "Vassal directories or glob patterns (e.g. /etc/uwsgi/vassals or '/srv/*/uwsgi.ini').")
    var monitors: [String]

    @Option(help: "The uWSGI binary vassals run.")
    var binary: String = "uwsgi"

    @Option(name: .customLong("stats"), help: "Stats server: HOST:PORT or a unix socket path (JSON as uWSGI's emperor-stats-server).")
    var stats: String?

    @Option(name: .customLong("vassals-set"), help: "KEY=VALUE passed to every vassal as --set (%n, %s, %d, %p expanded). Repeatable.")
    var vassalsSet: [String] = []
    @Option(name: .customLong("vassals-include"), help: "A config file every vassal includes after its own. Repeatable.")
    var vassalsInclude: [String] = []
    @Option(name: .customLong("vassals-include-before"), help: "A config file every vassal includes before its own. Repeatable.")
    var vassalsIncludeBefore: [String] = []
    @Option(name: .customLong("vassals-inherit"), help: "A config file every vassal inherits after its own. Repeatable.")
    var vassalsInherit: [String] = []
    @Option(name: .customLong("vassals-inherit-before"), help: "A config file every vassal inherits before its own. Repeatable.")
    var vassalsInheritBefore: [String] = []

    @Option(help: "Respawn delay added per fast death, ms.")
    var throttle: Int64 = 1000
    @Option(name: .customLong("max-throttle"), help: "Maximum respawn delay, ms.")
    var maxThrottle: Int64 = 180_000
    @Option(name: .customLong("curse-tolerance"), help: "Seconds a stopped vassal may take before SIGKILL.")
    var curseTolerance: Double = 30
    @Option(name: .customLong("reload-mercy"), help: "Seconds vassals get to stop on shutdown before SIGKILL.")
    var reloadMercy: Double = 30
    @Option(name: .customLong("required-heartbeat"), help: "Seconds of heartbeat silence before a vassal is reloaded (then killed).")
    var requiredHeartbeat: Double = 30
    @Option(help: "Safety-net rescan period in seconds (inotify reacts at once).")
    var freq: Double = 3

    @Flag(help: "Tyrant mode: each vassal runs as its file's owner; root-owned files are refused. Needs root.")
    var tyrant = false
    @Flag(help: "Refuse symbolic links as vassal files.")
    var nofollow = false
    @Flag(name: .customLong("confine-symlinks"), help: "Refuse symbolic links that point outside the vassal directory.")
    var confineSymlinks = false
    @Flag(name: .customLong("no-blacklist"), help: "Never blacklist vassals.")
    var noBlacklist = false
    @Flag(name: .customLong("graceful-shutdown"), help: "Stop vassals gracefully (requests in flight finish).")
    var gracefulShutdown = false

    @Option(name: .customLong("owned-domains"), help: "A file with one domain per line: vassals may attach only these with the hosting shortcuts.")
    var ownedDomains: String?
    @Option(help: "Append the Emperor's and its vassals' output to this file (rotated past --log-max-bytes).")
    var log: String?
    @Option(name: .customLong("log-max-bytes"), help: "Rotate the log file past this size.")
    var logMaxBytes: Int = 200 << 20

    @Option(name: .customLong("chain-reload-fifo"), help: "Zero-stall touch: a touched vassal whose contents did not change gets 'c' (chain reload) on this master FIFO (%n = vassal name) instead of a full reload.")
    var chainReloadFifo: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        if let log {
            let fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else { throw UserFacingError("cannot open the log file \(log): \(String(cString: strerror(errno)))") }
            dup2(fd, 1)
            dup2(fd, 2)
            close(fd)
        }
        CLILogging.bootstrap(level: logLevel)
        if tyrant, getuid() != 0 {
            throw UserFacingError("tyrant mode drops each vassal to its file's owner and needs root; run as root or without --tyrant")
        }
        var settings = EmperorSettings()
        settings.monitors = monitors.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 }
        for m in settings.monitors where !m.contains("*") && !m.contains("?") && !FileManager.default.fileExists(atPath: m) {
            throw UserFacingError("\(m) does not exist; create the vassal directory first (mkdir -p \(m))")
        }
        settings.binary = binary
        settings.statsServer = stats
        settings.vassalsSet = vassalsSet
        settings.vassalsInclude = vassalsInclude
        settings.vassalsIncludeBefore = vassalsIncludeBefore
        settings.vassalsInherit = vassalsInherit
        settings.vassalsInheritBefore = vassalsInheritBefore
        guard throttle >= 0, maxThrottle >= throttle else { throw UserFacingError("--max-throttle must be at least --throttle") }
        settings.throttleMs = throttle
        settings.maxThrottleMs = maxThrottle
        settings.curseToleranceMs = Int64(curseTolerance * 1000)
        settings.reloadMercyMs = Int64(reloadMercy * 1000)
        settings.requiredHeartbeatMs = Int64(requiredHeartbeat * 1000)
        settings.rescanMs = max(100, Int64(freq * 1000))
        settings.tyrant = tyrant
        settings.followSymlinks = !nofollow
        settings.noBlacklist = noBlacklist
        settings.gracefulShutdown = gracefulShutdown
        settings.chainReloadFifo = chainReloadFifo
        if let ownedDomains {
            guard FileManager.default.isReadableFile(atPath: ownedDomains) else {
                throw UserFacingError("cannot read --owned-domains \(ownedDomains)")
            }
            settings.ownedDomainsFile = ownedDomains.hasPrefix("/") ? ownedDomains : FileManager.default.currentDirectoryPath + "/" + ownedDomains
        }
        var options = Emperor.Options()
        options.confineSymlinks = confineSymlinks
        options.logFile = log
        options.logMaxBytes = logMaxBytes
        if let text = ProcessInfo.processInfo.environment["UWSGI_EMPEROR_FD"], let fd = Int32(text) {
            options.parentChannel = fd
            unsetenv("UWSGI_EMPEROR_FD")
        }
        let logger = Logger(label: "legion.emperor")
        let emperor = Emperor(settings: settings, options: options, logger: logger)
        let signals = SignalRelay()
        signals.on(SIGHUP) { emperor.reloadAll() }
        signals.on(SIGINT) { emperor.shutdown() }
        signals.on(SIGTERM) { emperor.shutdown() }
        signals.on(SIGQUIT) { emperor.shutdown() }
        signals.on(SIGURG) { emperor.clearBlacklist() }
        signals.on(SIGUSR1) { emperor.logStatus() }
        let code: Int32
        do {
            code = try await emperor.run()
        } catch {
            throw UserFacingError("\(error)")
        }
        if code != 0 { throw ExitCode(code) }
    }
}

/// Turns signals into calls (DispatchSource), so the Emperor's loop never runs in a signal handler.
final class SignalRelay: @unchecked Sendable {
    // @unchecked: `sources` is only appended to on the thread that sets the relay up.
    private var sources: [DispatchSourceSignal] = []

    func on(_ signalNumber: Int32, _ action: @escaping @Sendable () -> Void) {
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler(handler: action)
        source.resume()
        sources.append(source)
    }
}
