import CRouterIO
import CMount
import Emperor
import Foundation
import Logging
import Metrics
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

    private let nodeName: String
    /// Containers run by runc (root and `[hosting] runtime = "runc"`), else plain processes.
    private let useRunc: Bool
    private let legionPath: String
    private let libraryDirectories: [String]
    private let appliedLimits = Mutex<[Int64: ContainerBundle.Limits]>([:])
    private var useImages: Bool { useRunc && settings.homeImages }
    private let oom: OOMWatcher?
    /// Containers' addresses, links, NAT and port mappings (`[hosting] network = "routed"` with runc).
    private let networker: ContainerNetworker?
    /// Loopboxes (with runc and home images: the home is a shared mount the container binds).
    private let loopboxes: LoopboxMounter
    private let wantedLoopboxes = Mutex<[DesiredState.Loopbox]>([])
    private let alarmSink: (any AlarmSink)?
    private let quota = Mutex(QuotaAlarms())
    private let crashLoops = Mutex(CrashLoopAlarms())
    /// "container/distro" pairs already warned about (a distro not installed here).
    private let missingDistros = Mutex<Set<String>>([])
    private let placed = Mutex<[DesiredState.Container]>([])
    /// The seccomp profile's JSON text (`[hosting] seccomp`), parsed when a bundle is written.
    private let seccompText: String?
    private var seccomp: [String: Any]? {
        seccompText.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    public init(settings: HostingSettings, emperor emperorSettings: EmperorSettings, routes: HostingShortcuts.Routes,
                feed: DesiredStateFeed, logger: Logger, state: NodeState? = nil, nodeName: String = "node",
                alarms: (any AlarmSink)? = nil) {
        self.settings = settings
        self.state = state
        self.nodeName = nodeName
        let root = getuid() == 0
        self.useRunc = settings.runtime == .runc && root
        self.legionPath = settings.legionBinary ?? Self.ownExecutable()
        self.libraryDirectories = useRunc ? Self.libraryDirectories(of: settings.legionBinary ?? Self.ownExecutable()) : []
        alarmSink = alarms
        seccompText = settings.seccompProfile.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }
        if useRunc {
            let sink = alarms
            let log = logger
            oom = OOMWatcher(logger: logger) { uid, kills in
                let message = "container \(uid): OUT OF MEMORY !!!"
                log.warning("\(message)", metadata: ["oom_kills": "\(kills)"])
                Counter(label: NodeMetrics.containerOOMKills).increment()
                if let sink { Task { await sink.raise(uid: uid, level: 0, message: message) } }
            }
        } else {
            oom = nil
        }
        loopboxes = LoopboxMounter(logger: logger)
        networker = useRunc && settings.network == .routed
            ? ContainerNetworker(node: nodeName, openPorts: settings.openPorts, rulesetPath: settings.bundlesDir + "/firewall.nft", logger: logger) : nil
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
        options.launcher = useRunc ? Self.runcLauncher(settings: settings, nodeName: nodeName) : Self.launcher(settings: settings, asRoot: asRoot)
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
        if settings.runtime == .runc, !useRunc {
            logger.error("hosting: [hosting] runtime = \"runc\" needs root; containers run as plain processes instead")
        }
        if useRunc {
            do {
                try ContainerBundle.prepareRootfs(settings.rootfsDir)
                try FileManager.default.createDirectory(atPath: settings.bundlesDir, withIntermediateDirectories: true)
                if settings.homeImages { try FileManager.default.createDirectory(atPath: settings.imagesDir, withIntermediateDirectories: true) }
            } catch {
                throw EmperorError("hosting: cannot prepare \(settings.rootfsDir) / \(settings.bundlesDir) for runc: \(error.localizedDescription)")
            }
            guard resolveExecutable(settings.runcBinary) != nil else {
                throw EmperorError("hosting: runtime = \"runc\" but \(settings.runcBinary) is not installed; apt-get install runc (scripts/setup --test does)")
            }
            try await networker?.prepare()
            if let path = settings.seccompProfile, seccomp == nil {
                throw EmperorError("hosting: [hosting] seccomp = \(path) cannot be read as a JSON profile; build it with scripts/make-seccomp \(path)")
            }
            logger.info("hosting: containers run by runc (bundles in \(settings.bundlesDir), root \(settings.rootfsDir)\(seccomp == nil ? ", no seccomp profile" : ", seccomp \(settings.seccompProfile ?? "")"))")
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
                    var tick = 0
                    while !Task.isCancelled {
                        tick += 1
                        if tick % 5 == 0 { checkCrashLoops() }
                        let names = emperor.vassalNames
                        let uids = names.compactMap { Int64($0.prefix(while: \.isNumber)) }.sorted()
                        state?.update {
                            $0.hosting?.subEmperors = names.count
                            $0.hosting?.running = uids
                        }
                        syncOOMWatches()
                        checkQuotas()
                        syncLoopboxes()
                        try? await Task.sleep(for: .seconds(2))
                    }
                }
                // The Emperor returns after a shutdown (all vassals stopped); then stop following the feed.
                try await group.next()
                group.cancelAll()
            }
            if useImages { await unmountHomes() }
            if let networker {
                for container in placed.withLock({ $0 }) { await networker.teardown(uid: container.uid) }
            }
        } onGracefulShutdown: {
            emperor.shutdown()
        }
    }

    /// One reconciliation pass: files first, then the sub-Emperors, then archives of removed containers.
    func apply(_ desired: DesiredState) async {
        if useImages {
            for container in desired.containers { await ensureHomeImage(container) }
        }
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
        if useRunc {
            for container in desired.containers { await writeBundle(container) }
        }
        await networker?.apply(desired)
        syncSSHKeys(desired.containers)
        placed.withLock { $0 = desired.containers }
        wantedLoopboxes.withLock { $0 = desired.loopboxes ?? [] }
        syncLoopboxes()
        let list = HostingReconciler.vassals(desired: desired.containers, home: home, uidOwned: asRoot && !useRunc)
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

    /// sshd's view of the store's keys: `<ssh_keys_dir>/<uid>` for each placed container (root-owned, 0644, replaced
    /// atomically), nothing for the others, so a key removed in the store (or a container gone) locks the login out.
    private func syncSSHKeys(_ containers: [DesiredState.Container]) {
        let dir = settings.sshKeysDir
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        } catch {
            logger.error("hosting: cannot create \(dir) for ssh keys: \(error.localizedDescription)")
            return
        }
        var wanted: [String: String] = [:]
        for container in containers {
            let keys = (container.sshKeys ?? "").split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty && !$0.hasPrefix("#") }
            if !keys.isEmpty { wanted["\(container.uid)"] = keys.joined(separator: "\n") + "\n" }
        }
        for (name, text) in wanted {
            let path = dir + "/" + name
            do {
                guard try writeIfChanged(path, Data(text.utf8)) else { continue }
                logger.info("hosting: container \(name): ssh keys for sshd updated (\(text.split(separator: "\n").count) keys)")
            } catch {
                logger.error("hosting: cannot write \(path): \(error.localizedDescription)")
            }
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where wanted[name] == nil && Int64(name) != nil {
            if unlink(dir + "/" + name) == 0 { logger.info("hosting: container \(name): no ssh keys any more; ssh login closed") }
        }
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
        if useRunc {
            let id = ContainerBundle.id(node: nodeName, uid: uid)
            _ = await ProcessSupervisor.shared.run(SpawnSpec(executable: settings.runcBinary, arguments: ["delete", "--force", id]),
                                                   timeoutSeconds: 10, captureOutput: true)
            try? FileManager.default.removeItem(atPath: bundle(uid))
            await networker?.teardown(uid: uid)
            _ = appliedLimits.withLock { $0.removeValue(forKey: uid) }
        }
        let stamp = Int(Date().timeIntervalSince1970)
        if useImages, FileManager.default.fileExists(atPath: image(uid)) {
            // The home is the image: unmount it and keep the image, never delete it.
            let target = settings.archiveDir + "/\(uid)-\(stamp).ext4"
            loopboxes.unmountAll(home: home(uid))
            let umount = await ProcessSupervisor.shared.run(SpawnSpec(executable: "umount", arguments: [home(uid)]), timeoutSeconds: 10,
                                                            captureOutput: true)
            if umount.status != 0, Self.isMountpoint(home(uid)) {
                logger.error("hosting: cannot unmount \(home(uid)) (\(umount.output.trimmingCharacters(in: .whitespacesAndNewlines))); container \(uid)'s image stays in place")
                return
            }
            _ = rmdir(home(uid))
            if rename(image(uid), target) == 0 {
                logger.notice("hosting: container \(uid) removed from this node: stopped, home image archived to \(target)")
            } else {
                logger.error("hosting: cannot archive \(image(uid)) to \(target): \(String(cString: strerror(errno)))")
            }
            return
        }
        let target = settings.archiveDir + "/\(uid)-\(stamp)"
        if rename(home(uid), target) == 0 {
            logger.notice("hosting: container \(uid) removed from this node: stopped, home archived to \(target)")
        } else {
            logger.error("hosting: cannot archive \(home(uid)) to \(target): \(String(cString: strerror(errno)))")
        }
    }

    func bundle(_ uid: Int64) -> String { settings.bundlesDir + "/\(uid)" }
    func image(_ uid: Int64) -> String { settings.imagesDir + "/\(uid).ext4" }

    /// Storage size of a container in bytes (the store's MB; 0 means 1 GB).
    static func storageBytes(_ container: DesiredState.Container) -> Int64 {
        (container.storage > 0 ? container.storage : 1024) << 20
    }

    /// The home is a loop-mounted ext4 image of the container's storage size: created (sparse, `-m 0` so the
    /// customer gets every block) on first placement, mounted again after a node restart. A size change is
    /// applied offline when the container next starts (`start.sh` in its bundle): this kernel refuses online resize.
    private func ensureHomeImage(_ container: DesiredState.Container) async {
        let uid = container.uid
        let home = home(uid)
        guard !Self.isMountpoint(home) else {
            _ = cmount_make_shared(home)   // loopboxes mounted under it reach the running container
            return
        }
        let img = image(uid)
        let fresh = !FileManager.default.fileExists(atPath: img)
        func run(_ argv: [String]) async -> Bool {
            let result = await ProcessSupervisor.shared.run(SpawnSpec(executable: argv[0], arguments: Array(argv.dropFirst())),
                                                            timeoutSeconds: 60, captureOutput: true)
            if result.status != 0 {
                logger.error("hosting: container \(uid): \(argv.joined(separator: " ")) failed: \(result.error ?? result.output.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            return result.status == 0
        }
        if fresh {
            guard await run(["truncate", "-s", "\(Self.storageBytes(container))", img]),
                  await run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=\(uid):\(uid)", img]) else { return }
        }
        do {
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        } catch {
            logger.error("hosting: cannot create \(home): \(error.localizedDescription)")
            return
        }
        guard await run(["mount", "-o", "loop,noatime,nosuid,nodev", img, home]) else { return }
        if cmount_make_shared(home) != 0 { logger.warning("hosting: container \(uid): cannot make \(home) a shared mount; loopboxes will not reach the running container") }
        if fresh {
            createHome(uid: uid, name: container.name)
            logger.info("hosting: container \(uid): home is a \(Self.storageBytes(container) >> 20) MB ext4 image (\(img))")
        }
    }

    /// Storage alarms: a home that is its own image has its own usage (statvfs), checked against the container's
    /// `quota_threshold` (every 2 s; an alarm at most once per `alarm_freq`).
    private func checkQuotas() {
        guard useImages else { return }
        let now = Int64(Date().timeIntervalSince1970)
        let mounted = Self.mountpoints()
        var usage: [Int64: (used: Int64, total: Int64)] = [:]
        defer { state?.update { $0.hosting?.storage = usage } }
        for container in placed.withLock({ $0 }) {
            var st = statvfs()
            let path = home(container.uid)
            guard mounted.contains(Self.escapeMountPath(path)), statvfs(path, &st) == 0 else { continue }
            let total = Int64(st.f_blocks) * Int64(st.f_frsize)
            let used = (Int64(st.f_blocks) - Int64(st.f_bfree)) * Int64(st.f_frsize)
            usage[container.uid] = (used, total)
            let message = quota.withLock {
                $0.check(uid: container.uid, usedBytes: used, totalBytes: total, thresholdPercent: container.quotaThreshold ?? 90,
                         freqS: container.alarmFreq ?? 60, nowS: now)
            }
            if let message {
                logger.warning("\(message)")
                if let sink = alarmSink { Task { await sink.raise(uid: container.uid, level: 0, message: message) } }
            }
        }
    }

    /// Loopboxes of every placed container whose home image is mounted (each apply and every 2 s, so a deleted or
    /// resized image is noticed).
    private func syncLoopboxes() {
        guard useImages else { return }
        let mounted = Self.mountpoints()
        var homes: [Int64: String] = [:]
        for container in placed.withLock({ $0 }) where mounted.contains(Self.escapeMountPath(home(container.uid))) {
            homes[container.uid] = home(container.uid)
        }
        loopboxes.sync(homes: homes, loopboxes: wantedLoopboxes.withLock { $0 })
    }

    /// Crash loops (every 10 s): each running sub-Emperor's stats (its unix socket in the home, answered only if the
    /// peer really is the container's uid — the customer owns that path) list its throttled vassals.
    private func checkCrashLoops() {
        guard alarmSink != nil else { return }
        let now = Int64(Date().timeIntervalSince1970)
        let running = Set(emperor.vassalNames)
        for container in placed.withLock({ $0 }) where running.contains("\(container.uid)") {
            let expected = asRoot ? uid_t(container.uid) : getuid()
            guard let stats = Self.readStats(path: home(container.uid) + "/run/emperor.stats", peerUID: expected) else { continue }
            let messages = crashLoops.withLock {
                $0.check(uid: container.uid, throttled: CrashLoopAlarms.throttled(statsJSON: stats), freqS: container.alarmFreq ?? 60, nowS: now)
            }
            for message in messages {
                logger.warning("\(message)")
                if let sink = alarmSink { Task { await sink.raise(uid: container.uid, level: 0, message: message) } }
            }
        }
    }

    /// Reads a stats document from a unix stream socket (at most 1 MiB, 1 s), only from a peer running as `peerUID`.
    static func readStats(path: String, peerUID: uid_t) -> Data? {
        guard path.utf8.count < 108 else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { return nil }
        guard crio_peer_uid(fd) == Int(peerUID) else { return nil }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while data.count < 1 << 20 {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            data.append(contentsOf: buffer[0..<n])
        }
        return data.isEmpty ? nil : data
    }

    /// Watches the memory cgroup of every running container for OOM events (their cgroups exist once runc made them).
    private func syncOOMWatches() {
        guard let oom else { return }
        let wanted = Set(vassals.files.compactMap { Int64($0.name) })
        let watched = oom.watched
        for uid in watched.subtracting(wanted) { oom.unwatch(uid: uid) }
        for uid in wanted.subtracting(watched) {
            let cgroup = "/sys/fs/cgroup/memory/legion/\(nodeName)/\(uid)"
            if FileManager.default.fileExists(atPath: cgroup + "/memory.oom_control") { oom.watch(uid: uid, cgroup: cgroup) }
        }
    }

    /// Clean shutdown: every container has stopped, so their home images are unmounted (a restart mounts them again).
    private func unmountHomes() async {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: settings.containersDir)) ?? []
        for name in names.sorted() {
            let path = settings.containersDir + "/" + name
            guard Int64(name) != nil, Self.isMountpoint(path) else { continue }
            loopboxes.unmountAll(home: path)
            let result = await ProcessSupervisor.shared.run(SpawnSpec(executable: "umount", arguments: [path]), timeoutSeconds: 10, captureOutput: true)
            if result.status != 0 {
                logger.warning("hosting: cannot unmount \(path) at shutdown: \(result.output.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
        }
    }

    /// Whether `path` is a mount point (from /proc/self/mountinfo; octal escapes as the kernel writes them).
    static func isMountpoint(_ path: String) -> Bool { mountpoints().contains(escapeMountPath(path)) }

    /// Every mount point of this process's namespace, as /proc/self/mountinfo writes them (octal escapes).
    static func mountpoints() -> Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var out = Set<String>()
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5)
            if fields.count > 4 { out.insert(String(fields[4])) }
        }
        return out
    }

    static func escapeMountPath(_ path: String) -> String {
        path.replacingOccurrences(of: "\\", with: "\\134").replacingOccurrences(of: " ", with: "\\040")
            .replacingOccurrences(of: "\t", with: "\\011").replacingOccurrences(of: "\n", with: "\\012")
    }

    /// Writes the container's bundle (generated `/etc`, `config.json`) where it differs; a changed limit is applied
    /// to the running container at once with `runc update` (memory and memory+swap together, as runc needs).
    private func writeBundle(_ container: DesiredState.Container) async {
        let uid = container.uid
        let dir = bundle(uid)
        var paths = ContainerBundle.Paths(rootfs: settings.rootfsDir, bundle: dir, home: home(uid), legion: legionPath,
                                          libraryDirectories: libraryDirectories, cgroupParent: "/legion/\(nodeName)",
                                          subscribeDir: routes.http == nil && routes.cluster == nil && networker == nil ? nil : settings.subscribeDir,
                                          networkNamespace: networker == nil ? nil : ContainerNetwork.namespacePath(node: nodeName, uid: uid),
                                          distro: distroRoot(container))
        paths.userNamespace = settings.userNamespace
        let args = ContainerBundle.subEmperorArgs(legion: legionPath, home: home(uid), uwsgi: settings.uwsgiBinary,
                                                  logMaxBytes: settings.logMaxBytes, rescanS: Double(settings.subEmperorRescanMs) / 1000)
        let config = ContainerBundle.config(for: container, paths: paths, args: args, seccomp: seccomp)
        if settings.userNamespace {
            for point in ContainerBundle.mountpoints(of: config, isFile: { path in
                var isDirectory: ObjCBool = false
                return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && !isDirectory.boolValue
            }) where !FileManager.default.fileExists(atPath: point.path) {
                do {
                    if point.file {
                        try FileManager.default.createDirectory(atPath: (point.path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                        FileManager.default.createFile(atPath: point.path, contents: nil)
                    } else {
                        try FileManager.default.createDirectory(atPath: point.path, withIntermediateDirectories: true)
                    }
                } catch {
                    logger.error("hosting: container \(uid): cannot create the mountpoint \(point.path) (user namespaces need it made beforehand): \(error.localizedDescription)")
                }
            }
        }
        do {
            try FileManager.default.createDirectory(atPath: dir + "/etc", withIntermediateDirectories: true)
            for (name, text) in ContainerBundle.etc(for: container) {
                try writeIfChanged(dir + "/etc/" + name, Data(text.utf8))
            }
            for mountpoint in ContainerBundle.etcMountpoints {
                let path = dir + "/etc/" + mountpoint.path
                if mountpoint.directory {
                    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                } else if !FileManager.default.fileExists(atPath: path) {
                    FileManager.default.createFile(atPath: path, contents: nil)
                }
            }
            let json = try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys, .prettyPrinted])
            try writeIfChanged(dir + "/config.json", json)
            try writeIfChanged(dir + "/start.sh", Data(startScript(container).utf8))
            if networker != nil {
                guard let network = ContainerNetwork.setupScript(node: nodeName, uid: uid, ip: container.ip) else {
                    logger.error("hosting: container \(uid): address \(container.ip) is not in \(ContainerNetwork.network); it is not started")
                    return
                }
                try writeIfChanged(dir + "/network.sh", Data(network.utf8))
            }
        } catch {
            logger.error("hosting: cannot write the runc bundle of container \(uid) in \(dir): \(error.localizedDescription)")
            return
        }
        let limits = ContainerBundle.Limits.of(container)
        let previous = appliedLimits.withLock { state -> ContainerBundle.Limits? in
            defer { state[uid] = limits }
            return state[uid]
        }
        if let previous, previous != limits {
            let id = ContainerBundle.id(node: nodeName, uid: uid)
            let result = await ProcessSupervisor.shared.run(SpawnSpec(executable: settings.runcBinary, arguments: [
                "update", "--memory", "\(limits.memoryBytes)", "--memory-swap", "\(limits.memoryBytes)",
                "--pids-limit", "\(limits.pids)", "--cpu-share", "\(limits.cpuShares)", id,
            ]), timeoutSeconds: 10, captureOutput: true)
            if result.status == 0 {
                logger.notice("hosting: container \(uid): limits applied live (memory \(limits.memoryBytes >> 20) MB, pids \(limits.pids))")
            } else {
                logger.warning("hosting: container \(uid): runc update failed (\(result.output.trimmingCharacters(in: .whitespacesAndNewlines))); the new limits apply at its next start")
            }
        }
    }

    /// The container's distro root, if it has one and this node has it installed; otherwise nil (the host template),
    /// said once per container and distro.
    private func distroRoot(_ container: DesiredState.Container) -> String? {
        guard let path = container.distroPath, !path.isEmpty, !path.contains("/"), path != ".", path != ".." else { return nil }
        let root = settings.distrosDir + "/" + path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: root + "/usr/bin", isDirectory: &isDirectory), isDirectory.boolValue {
            missingDistros.withLock { _ = $0.remove("\(container.uid)/\(path)") }
            return root
        }
        if missingDistros.withLock({ $0.insert("\(container.uid)/\(path)").inserted }) {
            logger.error("hosting: container \(container.uid): distro \(container.distro ?? path) is not installed on this node (\(root)); it runs on the host template until it is: scripts/make-distro \(path) --dir \(settings.distrosDir)")
        }
        return nil
    }

    /// The container's start: delete a leftover of the same id, apply a storage size change offline, run.
    func startScript(_ container: DesiredState.Container) -> String {
        let uid = container.uid
        let id = ContainerBundle.id(node: nodeName, uid: uid)
        let runc = settings.runcBinary
        var lines = [
            "#!/bin/sh",
            "# Generated by legion for container \(uid); the Emperor's channel is fd 3 and passes to runc.",
            "\(runc) delete --force \(id) >/dev/null 2>&1",
        ]
        if useImages {
            lines += [
                "img='\(image(uid))'; home='\(home(uid))'; want=\(Self.storageBytes(container))",
                "have=$(stat -c %s \"$img\" 2>/dev/null || echo \"$want\")",
                "if [ \"$have\" -ne \"$want\" ]; then",
                "  umount -R \"$home\" && e2fsck -f -p \"$img\" >/dev/null 2>&1",
                "  if [ \"$want\" -gt \"$have\" ]; then",
                "    truncate -s \"$want\" \"$img\" && resize2fs \"$img\" >/dev/null 2>&1 && echo \"legion: container \(uid): storage grown to $want bytes\" >&2",
                "  elif resize2fs \"$img\" $((want / 1024))K >/dev/null 2>&1; then",
                "    truncate -s \"$want\" \"$img\" && echo \"legion: container \(uid): storage shrunk to $want bytes\" >&2",
                "  else",
                "    echo \"legion: container \(uid): cannot shrink storage to $want bytes: the data does not fit; keeping $have\" >&2",
                "  fi",
                "  mountpoint -q \"$home\" || mount -o loop,noatime,nosuid,nodev \"$img\" \"$home\"",
                "  mount --make-shared \"$home\"",
                "fi",
            ]
        }
        if networker != nil {
            lines.append("/bin/sh '\(bundle(uid))/network.sh' || { echo \"legion: container \(uid): cannot set up its network (above)\" >&2; exit 1; }")
        }
        lines.append("exec \(runc) run --preserve-fds 1 --bundle '\(bundle(uid))' \(id)")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Replaces the file atomically unless it already holds `data`; true when it was written.
    @discardableResult
    private func writeIfChanged(_ path: String, _ data: Data) throws -> Bool {
        if FileManager.default.contents(atPath: path) == data { return false }
        let temporary = path + ".legion-tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o644]) else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
        }
        guard rename(temporary, path) == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        return true
    }

    /// A container run by runc: its bundle's `start.sh` deletes any leftover of the same id (a node killed hard
    /// leaves its containers running), applies a storage change, then execs `runc run` in the foreground with the
    /// Emperor's channel passed as fd 3.
    static func runcLauncher(settings: HostingSettings, nodeName: String) -> @Sendable (EmperorCore.VassalFile) -> SpawnSpec {
        { file in
            let uid = Int64(file.name) ?? 0
            let bundle = settings.bundlesDir + "/\(uid)"
            var spec = SpawnSpec(executable: "/bin/sh", arguments: [bundle + "/start.sh"])
            spec.workingDirectory = bundle
            return spec
        }
    }

    /// Directories of the executable's shared libraries outside `/usr` (e.g. the Swift runtime in /opt), which
    /// the container needs bound to run it.
    static func libraryDirectories(of executable: String) -> [String] {
        let result = ProcessSupervisor.shared.runBlocking(SpawnSpec(executable: "ldd", arguments: [executable]), timeoutSeconds: 10, captureOutput: true)
        var dirs = Set<String>()
        for line in result.output.split(separator: "\n") {
            guard let arrow = line.range(of: "=> /") else { continue }
            let path = line[line.index(before: arrow.upperBound)...].split(separator: " ").first.map(String.init) ?? ""
            let dir = (path as NSString).deletingLastPathComponent
            if dir.isEmpty || dir.hasPrefix("/usr/") || dir.hasPrefix("/lib") { continue }
            dirs.insert(dir)
        }
        return dirs.sorted()
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
