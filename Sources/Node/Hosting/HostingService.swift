import Emperor
import Foundation
import Logging
import ServiceLifecycle
import Store
import Supervisor
import Synchronization

/// Hosting on this node: follows the desired state, keeps each placed container's home (uwsgi.it layout, keys,
/// ssh keys, owned domains, shortcuts) in line with it, and runs one sub-Emperor per container as a vassal of
/// the node's Emperor (as the container's uid when the node runs as root). Serves from the last published
/// state while the store has no quorum, and after a restart from the local snapshot.
public final class HostingService: Service, Sendable {
    private let settings: HostingSettings
    private let emperorSettings: EmperorSettings
    private let routes: HostingShortcuts.Routes
    private let feed: DesiredStateFeed
    private let logger: Logger
    private let vassals = VassalList()
    private let emperor: Emperor
    private let asRoot: Bool
    private let state: NodeState?

    public init(settings: HostingSettings, emperor emperorSettings: EmperorSettings, routes: HostingShortcuts.Routes,
                feed: DesiredStateFeed, logger: Logger, state: NodeState? = nil) {
        self.settings = settings
        self.state = state
        state?.update { $0.hosting = NodeState.HostingStatus(containersDir: settings.containersDir) }
        self.routes = routes
        self.feed = feed
        self.logger = logger
        self.asRoot = getuid() == 0
        var es = emperorSettings
        es.monitors = ["store:containers"]
        es.tyrant = false   // the launcher drops privileges itself, to the container's uid
        self.emperorSettings = es
        var options = Emperor.Options()
        let list = vassals
        options.source = { list.files }
        let launcher = Self.launcher(settings: settings, asRoot: asRoot)
        options.launcher = launcher
        self.emperor = Emperor(settings: es, options: options, logger: logger)
    }

    /// The node's Emperor (for status and tests).
    public var nodeEmperor: Emperor { emperor }

    public func home(_ uid: Int64) -> String { settings.containersDir + "/\(uid)" }

    public func run() async throws {
        for dir in [settings.containersDir, settings.archiveDir] {
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            } catch {
                throw EmperorError("hosting: cannot create \(dir): \(error.localizedDescription); check [hosting] containers_dir / archive_dir")
            }
        }
        if asRoot {
            // Sub-Emperors run as the containers' uids: every directory above the homes must let them through.
            var dir = (settings.containersDir as NSString).deletingLastPathComponent
            while dir.count > 1 {
                var st = stat()
                if stat(dir, &st) == 0, st.st_mode & 0o001 == 0 {
                    logger.error("hosting: \(dir) is not searchable by other users, so containers (uid 30000+id) cannot reach their homes under \(settings.containersDir); run: chmod o+x \(dir)")
                }
                dir = (dir as NSString).deletingLastPathComponent
            }
        } else {
            logger.notice("hosting: not running as root, so containers' sub-Emperors and vassals run as this node's user, not as uid 30000+id")
        }
        let emperor = self.emperor
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { _ = try await emperor.run() }
                group.addTask { [self] in
                    for await desired in feed.subscribe() {
                        await apply(desired)
                    }
                }
                group.addTask { [self] in
                    // /status: how many sub-Emperors run (they come and go between desired states).
                    while !Task.isCancelled {
                        let running = emperor.vassalNames.count
                        state?.update { $0.hosting?.subEmperors = running }
                        try? await Task.sleep(for: .seconds(2))
                    }
                }
                // The Emperor returns after a shutdown (all vassals stopped); then stop following the feed.
                try await group.next()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            emperor.shutdown()
        }
    }

    /// One reconciliation pass: files first, then the sub-Emperors, then archives of removed containers.
    func apply(_ desired: DesiredState) async {
        let observed = observe()
        let directives = HostingReconciler.plan(desired: desired.containers, observed: observed, home: home, routes: routes)
        var archives: [Int64] = []
        for directive in directives {
            switch directive {
            case .createHome(let uid, let name):
                createHome(uid: uid, name: name)
            case .writeFile(let uid, let file):
                write(file, uid: uid)
            case .archiveHome(let uid):
                archives.append(uid)
            }
        }
        for container in desired.containers {
            for domain in container.customerDomains ?? [] where (home(container.uid) + "/run/\(domain)_00000000.socket").utf8.count >= 108 {
                logger.error("hosting: container \(container.uid): the socket path for \(domain) would exceed 108 bytes; set a shorter [hosting] containers_dir")
            }
        }
        let list = HostingReconciler.vassals(desired: desired.containers, home: home, uidOwned: asRoot)
        vassals.files = list
        emperor.rescan()
        let count = desired.containers.count
        state?.update {
            $0.hosting?.containers = count
            $0.hosting?.appliedVersion = desired.version
            $0.hosting?.lastApplyMs = UInt64(Date().timeIntervalSince1970 * 1000)
        }
        for uid in archives {
            await archive(uid: uid)
        }
    }

    private func observe() -> [Int64: HostingReconciler.Observed] {
        var out: [Int64: HostingReconciler.Observed] = [:]
        let names = (try? FileManager.default.contentsOfDirectory(atPath: settings.containersDir)) ?? []
        for name in names {
            guard let uid = Int64(name), uid >= AdminStore.baseUID else { continue }
            var files: [String: String] = [:]
            for path in ["etc/hostname", "etc/domains", "etc/shortcuts.ini", ".ssh/uwsgi_authorized_keys", "etc/uwsgi.key", "etc/uwsgi.pubkey"] {
                if let text = try? String(contentsOfFile: home(uid) + "/" + path, encoding: .utf8) { files[path] = text }
            }
            out[uid] = HostingReconciler.Observed(files: files)
        }
        return out
    }

    private func createHome(uid: Int64, name: String) {
        let base = home(uid)
        do {
            try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            chownIfRoot(base, uid: uid)
            for dir in HostingReconciler.directories {
                let path = base + "/" + dir
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: dir == ".ssh" ? 0o700 : 0o755])
                chownIfRoot(path, uid: uid)
            }
            logger.info("hosting: container \(uid) (\(name)): home created at \(base)")
        } catch {
            logger.error("hosting: cannot create the home of container \(uid) at \(base): \(error.localizedDescription)")
        }
    }

    private func write(_ file: HostingReconciler.ManagedFile, uid: Int64) {
        let path = home(uid) + "/" + file.path
        let temporary = path + ".legion-tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(file.contents.utf8),
                                             attributes: [.posixPermissions: Int(file.mode)]) else {
            logger.error("hosting: cannot write \(path); check the disk and the home's permissions")
            return
        }
        chownIfRoot(temporary, uid: uid)
        guard rename(temporary, path) == 0 else {
            logger.error("hosting: cannot replace \(path): \(String(cString: strerror(errno)))")
            return
        }
        logger.info("hosting: container \(uid): wrote \(file.path)\(file.secret ? " (secret, contents not logged)" : "")")
    }

    private func chownIfRoot(_ path: String, uid: Int64) {
        guard asRoot else { return }
        _ = chown(path, uid_t(uid), gid_t(uid))
    }

    /// A removed container: its sub-Emperor stops its vassals (their subscriptions go with them), then the
    /// home moves to the archive directory; nothing is deleted.
    private func archive(uid: Int64) async {
        let name = "\(uid)"
        for _ in 0..<300 where emperor.vassalNames.contains(name) {
            try? await Task.sleep(for: .milliseconds(100))
        }
        if emperor.vassalNames.contains(name) {
            logger.warning("hosting: container \(uid)'s sub-Emperor is still running after 30 s; archiving its home anyway")
        }
        guard !vassals.files.contains(where: { $0.name == name }) else { return }   // placed here again meanwhile
        let stamp = Int(Date().timeIntervalSince1970)
        let target = settings.archiveDir + "/\(uid)-\(stamp)"
        if rename(home(uid), target) == 0 {
            logger.notice("hosting: container \(uid) removed from this node: stopped, home archived to \(target)")
        } else {
            logger.error("hosting: cannot archive \(home(uid)) to \(target): \(String(cString: strerror(errno)))")
        }
    }

    /// The command of a container's sub-Emperor: `legion emperor HOME/vassals` confined to its home, with the
    /// shortcuts injected into every vassal and its log in `logs/emperor.log`.
    static func launcher(settings: HostingSettings, asRoot: Bool) -> @Sendable (EmperorCore.VassalFile) -> SpawnSpec {
        let legion = settings.legionBinary ?? ownExecutable()
        return { file in
            let home = file.path
            var spec = SpawnSpec(executable: legion, arguments: [
                "emperor", home + "/vassals",
                "--confine-symlinks",
                "--owned-domains", home + "/etc/domains",
                "--vassals-set", "inject-before=\(home)/etc/shortcuts.ini",
                "--binary", settings.uwsgiBinary,
                "--log", home + "/logs/emperor.log",
                "--log-max-bytes", "\(settings.logMaxBytes)",
                "--freq", "\(Double(settings.subEmperorRescanMs) / 1000)",
                "--stats", home + "/run/emperor.stats",
                "--chain-reload-fifo", home + "/run/%n.fifo",
            ])
            var env = currentEnvironment()
            env["HOME"] = home
            if asRoot {
                env["USER"] = file.name
                env["LOGNAME"] = file.name
                spec.user = (file.uid, file.gid)
            }
            spec.environment = env
            spec.workingDirectory = home
            spec.argv0 = "legion"
            return spec
        }
    }

    static func ownExecutable() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

/// The sub-Emperor list the node's Emperor reads at each scan.
final class VassalList: Sendable {
    private let state = Mutex<[EmperorCore.VassalFile]>([])
    var files: [EmperorCore.VassalFile] {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }
}
