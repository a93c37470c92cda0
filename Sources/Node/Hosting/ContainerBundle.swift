import Foundation
import Store

/// One container's OCI bundle for runc (`../shared/specs/containers.md`): the runtime spec (`config.json`) and the
/// generated `/etc`, as pure functions of the desired state and the node's paths. The container's first process
/// is its sub-Emperor, as the container's uid, in its own mount, pid, ipc and uts namespaces, with the store's
/// memory limit (no swap), a pids limit and a CPU weight; the root filesystem is a shared read-only template with
/// the host's `/usr`, and the home bound at `/containers/<uid>`, at `/usr/local` and at its host path (so socket
/// paths a vassal binds are the ones the routers connect to, as on uwsgi.it where both were `/containers/<uid>`).
public enum ContainerBundle {
    public struct Paths: Sendable, Equatable {
        /// The shared read-only root template (mountpoints and the merged-/usr symlinks only).
        public var rootfs: String
        /// This container's bundle directory (`config.json`, `etc/`).
        public var bundle: String
        /// The home on the host.
        public var home: String
        /// The legion executable (bound read-only at its own path) and the directories of its shared libraries
        /// outside `/usr` (the Swift runtime), bound read-only at their own paths.
        public var legion: String
        public var libraryDirectories: [String]
        /// The cgroup the node keeps its containers under (absolute: never nested in the node's own memcg).
        public var cgroupParent: String
        /// The node's unix subscription sockets (bound at their host path). With it the container gets a network
        /// namespace of its own (loopback only): it reaches nothing of the host's network, its vassals subscribe
        /// through these sockets and serve through unix sockets in the home.
        public var subscribeDir: String?
        /// A network namespace made by the node (`/run/netns/…`, `ContainerNetwork`): the container joins it instead
        /// of getting a loopback-only one.
        public var networkNamespace: String?
        /// The container's distro (a complete root filesystem, `scripts/make-distro`): the root instead of the
        /// template, with its own `/usr` and `/etc`; only the identity files of the generated `/etc` are bound over.
        public var distro: String?
        /// A user namespace: the container's uid maps to itself, every other uid (root included) to the unprivileged
        /// host range starting at `userNamespaceBase`.
        public var userNamespace: Bool = false
        public static let userNamespaceBase: Int64 = 1_000_000

        public init(rootfs: String, bundle: String, home: String, legion: String, libraryDirectories: [String], cgroupParent: String,
                    subscribeDir: String? = nil, networkNamespace: String? = nil, distro: String? = nil) {
            self.distro = distro
            self.subscribeDir = subscribeDir
            self.networkNamespace = networkNamespace
            self.rootfs = rootfs
            self.bundle = bundle
            self.home = home
            self.legion = legion
            self.libraryDirectories = libraryDirectories
            self.cgroupParent = cgroupParent
        }
    }

    public struct Limits: Sendable, Equatable {
        public var memoryBytes: Int64
        public var pids: Int64
        public var cpuShares: Int64

        /// From the store's container row: memory in MB (0 means the default 256 MB). The CPU weight follows the
        /// memory the customer pays for (the store has no CPU column, as uwsgi.it had none): 1024 shares per 256 MB,
        /// so under contention a 1 GB container gets four times the CPU of a 256 MB one; idle CPU is anyone's.
        public static func of(_ container: DesiredState.Container) -> Limits {
            let mb = container.memory > 0 ? container.memory : 256
            return Limits(memoryBytes: mb << 20, pids: 512, cpuShares: min(max(mb * 4, 2), 262_144))
        }
    }

    /// The runc container id (the node's name keeps two local clusters on one host apart).
    public static func id(node: String, uid: Int64) -> String { "legion-\(node)-\(uid)" }

    /// The sub-Emperor's command line inside the container.
    public static func subEmperorArgs(legion: String, home: String, uwsgi: String, logMaxBytes: Int, rescanS: Double) -> [String] {
        [legion, "emperor", home + "/vassals",
         "--confine-symlinks",
         "--owned-domains", home + "/etc/domains",
         "--vassals-set", "inject-before=\(home)/etc/shortcuts.ini",
         "--binary", uwsgi,
         "--log", home + "/logs/emperor.log",
         "--log-max-bytes", "\(logMaxBytes)",
         "--freq", "\(rescanS)",
         "--stats", home + "/run/emperor.stats",
         "--chain-reload-fifo", home + "/run/%n.fifo"]
    }

    /// `config.json` (OCI runtime spec 1.0) as a JSON object.
    public static func config(for container: DesiredState.Container, paths: Paths, args: [String], seccomp: [String: Any]? = nil) -> [String: Any] {
        let uid = container.uid
        let limits = Limits.of(container)
        func bind(_ source: String, _ destination: String, readOnly: Bool) -> [String: Any] {
            ["destination": destination, "type": "bind", "source": source,
             "options": ["rbind", readOnly ? "ro" : "rw", "nosuid", "nodev"]]
        }
        var mounts: [[String: Any]] = [
            ["destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev", "hidepid=2"]],
            ["destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]],
            ["destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]],
            ["destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=\(limits.memoryBytes)"]],
            ["destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]],
            ["destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]],
        ]
        if paths.distro == nil {
            mounts += [
                bind("/usr", "/usr", readOnly: true),
                bind(paths.bundle + "/etc", "/etc", readOnly: true),
                bind("/etc/alternatives", "/etc/alternatives", readOnly: true),
                bind("/etc/ssl", "/etc/ssl", readOnly: true),
                bind("/etc/ld.so.cache", "/etc/ld.so.cache", readOnly: true),
            ]
        } else {
            for name in identityFiles { mounts.append(bind(paths.bundle + "/etc/" + name, "/etc/" + name, readOnly: true)) }
        }
        mounts += [
            ["destination": "/containers", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec", "mode=755", "size=16k"]],
            bind(paths.home, "/containers/\(uid)", readOnly: false),
            bind(paths.home, "/usr/local", readOnly: false),
            bind(paths.home + "/run", "/run", readOnly: false),
            bind(paths.home + "/tmp", "/tmp", readOnly: false),
            bind(paths.home + "/tmp", "/var/tmp", readOnly: false),
            bind(paths.home + "/logs", "/var/log", readOnly: false),
        ]
        if paths.home != "/containers/\(uid)" { mounts.append(bind(paths.home, paths.home, readOnly: false)) }
        for dir in paths.libraryDirectories { mounts.append(bind(dir, dir, readOnly: true)) }
        if let dir = paths.subscribeDir { mounts.append(bind(dir, dir, readOnly: false)) }
        mounts.append(bind(paths.legion, paths.legion, readOnly: true))
        let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        var linux: [String: Any] = [
            "cgroupsPath": "\(paths.cgroupParent)/\(uid)",
            "resources": [
                "devices": [["allow": false, "access": "rwm"]],
                "memory": ["limit": limits.memoryBytes, "swap": limits.memoryBytes, "swappiness": 0],
                "pids": ["limit": limits.pids],
                "cpu": ["shares": limits.cpuShares],
            ] as [String: Any],
            "namespaces": [["type": "pid"], ["type": "ipc"], ["type": "uts"], ["type": "mount"]]
                + (paths.networkNamespace.map { [["type": "network", "path": $0]] } ?? (paths.subscribeDir != nil ? [["type": "network"]] : [])),
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        ]
        if paths.userNamespace {
            // Root and the system uids inside → 1 000 000 + n outside; the customer keeps its own uid (its files, its
            // limits' accounting); uids above it → past the base range.
            let base = Paths.userNamespaceBase
            let mapping: [[String: Int64]] = [
                ["containerID": 0, "hostID": base, "size": uid],
                ["containerID": uid, "hostID": uid, "size": 1],
                ["containerID": uid + 1, "hostID": base + uid + 1, "size": 65536],
            ]
            linux["uidMappings"] = mapping
            linux["gidMappings"] = mapping
            linux["namespaces"] = (linux["namespaces"] as? [[String: String]] ?? []) + [["type": "user"]]
            if paths.networkNamespace != nil, let index = mounts.firstIndex(where: { ($0["destination"] as? String) == "/sys" }) {
                // A new sysfs cannot be mounted for a network namespace the new user namespace does not own.
                mounts[index] = ["destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]]
            }
        }
        if let seccomp { linux["seccomp"] = seccomp }
        return [
            "ociVersion": "1.0.2",
            "process": [
                "terminal": false,
                "user": ["uid": uid, "gid": uid],
                "args": args,
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=\(paths.home)", "USER=\(uid)", "LOGNAME=\(uid)", "LANG=C.UTF-8",
                        "UWSGI_EMPEROR_FD=3"],
                "cwd": paths.home,
                "capabilities": ["bounding": caps, "effective": caps, "permitted": caps],
                "rlimits": [["type": "RLIMIT_NOFILE", "hard": 16384, "soft": 16384]],
                "noNewPrivileges": true,
            ] as [String: Any],
            "root": ["path": paths.distro ?? paths.rootfs, "readonly": true],
            "hostname": container.name.isEmpty ? "c\(uid)" : hostname(container.name),
            "mounts": mounts,
            "linux": linux,
        ]
    }

    /// Mountpoints of `config` that must exist in its root before runc starts it: with a user namespace runc's init
    /// is an unprivileged root that cannot create them in a root-owned root filesystem. A destination below an earlier
    /// mount (`/tmp/…` under the home's `/tmp`, anything under `/containers`) is created inside that mount at start
    /// and is left out. Returns (path in the root, whether it is a file).
    public static func mountpoints(of config: [String: Any], isFile: (String) -> Bool) -> [(path: String, file: Bool)] {
        guard let root = (config["root"] as? [String: Any])?["path"] as? String, let mounts = config["mounts"] as? [[String: Any]] else { return [] }
        var earlier: [String] = []
        var out: [(String, Bool)] = []
        for mount in mounts {
            guard let destination = mount["destination"] as? String, destination.hasPrefix("/") else { continue }
            defer { earlier.append(destination) }
            if earlier.contains(where: { destination.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }) { continue }
            let file = (mount["type"] as? String) == "bind" && (mount["source"] as? String).map(isFile) == true
            out.append((root + destination, file))
        }
        return out
    }

    /// The generated `/etc` files bound over a distro's own (its `/etc` keeps the rest: alternatives, ssl, ld.so.cache…).
    public static let identityFiles = ["passwd", "group", "hostname", "hosts", "resolv.conf", "nsswitch.conf"]

    /// Mountpoints the generated `/etc` must hold (it is bound read-only, so runc cannot create them).
    public static let etcMountpoints: [(path: String, directory: Bool)] = [("alternatives", true), ("ssl", true), ("ld.so.cache", false)]

    /// The container's `/etc`: identity files only (everything else comes from the host read-only).
    public static func etc(for container: DesiredState.Container) -> [String: String] {
        let uid = container.uid
        let name = container.name.isEmpty ? "c\(uid)" : hostname(container.name)
        return [
            "passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\(uid):x:\(uid):\(uid)::/containers/\(uid):/bin/bash\n",
            "group": "root:x:0:\nnogroup:x:65534:\n\(uid):x:\(uid):\n",
            "hostname": name + "\n",
            "hosts": "127.0.0.1 localhost \(name)\n::1 localhost ip6-localhost ip6-loopback\n",
            "resolv.conf": (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? "nameserver 127.0.0.1\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        ]
    }

    /// A container name as a host name: letters, digits and '-', at most 63 bytes.
    static func hostname(_ name: String) -> String {
        let cleaned = String(name.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }.prefix(63))
        return cleaned.isEmpty ? "container" : cleaned
    }

    /// The shared root template: merged-/usr symlinks and the mountpoints (runc would otherwise create missing
    /// ones inside it).
    public static func prepareRootfs(_ rootfs: String) throws {
        let fm = FileManager.default
        for dir in ["usr", "proc", "dev", "sys", "tmp", "etc", "run", "var/log", "var/tmp", "var/spool", "containers", "root"] {
            try fm.createDirectory(atPath: rootfs + "/" + dir, withIntermediateDirectories: true)
        }
        for link in ["bin", "lib", "lib64", "sbin"] where (try? fm.destinationOfSymbolicLink(atPath: rootfs + "/" + link)) == nil {
            try fm.createSymbolicLink(atPath: rootfs + "/" + link, withDestinationPath: "usr/" + link)
        }
    }
}
