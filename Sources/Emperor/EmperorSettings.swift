/// How an Emperor behaves: uWSGI's Emperor options, with its defaults where they make sense.
public struct EmperorSettings: Sendable, Equatable {
    /// Directories (or glob patterns) to watch for vassal files.
    public var monitors: [String] = []
    /// Safety-net rescan period (inotify wakes the Emperor at once). uWSGI: `emperor-freq`, 3 s.
    public var rescanMs: Int64 = 3000
    /// Respawn delay added per fast death (`emperor-throttle`, ms).
    public var throttleMs: Int64 = 1000
    /// Cap of the respawn delay (`emperor-max-throttle`, ms).
    public var maxThrottleMs: Int64 = 180_000
    /// An instance that ran this long (or became loyal) died a "good" death: respawned at once, throttle reset.
    public var goodRunMs: Int64 = 10_000
    /// Stopped vassals still alive after this get SIGKILL (`emperor-curse-tolerance`, ms).
    public var curseToleranceMs: Int64 = 30_000
    /// On shutdown, vassals still alive after this get SIGKILL (`reload-mercy`, ms).
    public var reloadMercyMs: Int64 = 30_000
    /// A vassal that sent heartbeats and then went silent this long is reloaded, then killed (`emperor-required-heartbeat`).
    public var requiredHeartbeatMs: Int64 = 30_000
    /// Stop with byte 2 (finish requests in flight) instead of 0 (`emperor-graceful-shutdown`).
    public var gracefulShutdown: Bool = false
    /// Never blacklist (`emperor-no-blacklist`).
    public var noBlacklist: Bool = false
    /// Tyrant mode: vassals run as their file's owner; root-owned files are refused.
    public var tyrant: Bool = false
    /// Accept symlinked vassal files (`emperor-nofollow` semantics are the default: links are refused when false).
    public var followSymlinks: Bool = true
    /// The uWSGI binary vassals run (`binary-path`); a vassal may name its own with `legion-binary = PATH`.
    public var binary: String = "uwsgi"
    /// `vassals-set`: `--set K=V` for every vassal (`%n`, `%s`, `%d`, `%p` expanded per vassal).
    public var vassalsSet: [String] = []
    /// `vassals-include` / `vassals-include-before`: `--include F` after / before the vassal's own config.
    public var vassalsInclude: [String] = []
    public var vassalsIncludeBefore: [String] = []
    /// `vassals-inherit` / `-before`: `--inherit F`.
    public var vassalsInherit: [String] = []
    public var vassalsInheritBefore: [String] = []
    /// Stats server: `HOST:PORT` (TCP) or a unix socket path (`emperor-stats-server`).
    public var statsServer: String?
    /// Zero-stall reloads: when a touched vassal's file has the same contents, write `c` (chain reload: one
    /// worker at a time, no re-exec) to its master FIFO at this path (`%n` etc. expanded) instead of sending
    /// the reload byte, which re-execs the whole instance (a multi-second stall for one vassal). A changed
    /// file still gets the full reload, since the configuration must be read again.
    public var chainReloadFifo: String?
    /// Refuse vassal files larger than this (bytes).
    public var maxFileBytes: Int = 1 << 20
    /// Extra environment for every vassal.
    public var environment: [String: String] = [:]
    /// Domains vassals may attach with the hosting shortcuts (nil: no check). Checked before start.
    public var ownedDomains: Set<String>?
    /// A file with one owned domain per line, re-read at every scan (and watched): replaces `ownedDomains`.
    public var ownedDomainsFile: String?

    public init() {}

    /// Extensions uWSGI reads (`.skel` and everything else are ignored).
    public static let extensions: [String: String] = [
        "ini": "--ini", "xml": "--xml", "yml": "--yaml", "yaml": "--yaml", "json": "--json", "js": "--json",
    ]
}
