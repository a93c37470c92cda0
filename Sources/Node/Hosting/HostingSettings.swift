import Foundation

/// `[hosting]`: the store's containers placed on this node become homes with a sub-Emperor each.
public struct HostingSettings: Sendable, Equatable {
    /// Where container homes live (`<containers_dir>/<uid>`); default `DATA_DIR/containers`.
    public var containersDir: String
    /// Where a removed container's home is moved (never silently deleted); default `DATA_DIR/containers-archive`.
    public var archiveDir: String
    /// The uWSGI binary customer vassals run.
    public var uwsgiBinary: String = "uwsgi"
    /// The legion executable that runs each container's sub-Emperor (default: this executable).
    public var legionBinary: String?
    /// Rotate a container's `logs/emperor.log` past this size.
    public var logMaxBytes: Int = 200 << 20
    /// The sub-Emperors' safety-net rescan period (inotify reacts at once).
    public var subEmperorRescanMs: Int64 = 3000

    public enum Runtime: String, Sendable, Equatable, CaseIterable {
        /// Each sub-Emperor is a plain process as the container's uid (no isolation beyond the uid).
        case process
        /// Each container is an OCI bundle run by runc (namespaces, memory/pids/CPU limits, read-only root);
        /// its sub-Emperor is the container's first process. Needs root and Debian's runc.
        case runc
    }

    public var runtime: Runtime = .process
    /// runc bundles (`<dir>/<uid>/config.json`, `etc/`) and the shared read-only root template.
    public var bundlesDir: String = ""
    public var rootfsDir: String = ""
    public var runcBinary: String = "runc"
    /// With runc, each home is an ext4 image of the container's storage size, loop-mounted (the byte limit holds;
    /// this kernel has no uid or project quotas). Images live here.
    public var imagesDir: String = ""
    public var homeImages: Bool = true
    /// Unix datagram subscription sockets for hosted vassals (`http`, `cluster`), as uwsgi.it's `/subscribe/…`;
    /// bound into runc containers, which have no network of their own. Default DATA_DIR/subscribe.
    public var subscribeDir: String = ""
    /// With runc: a seccomp profile in OCI form (`scripts/make-seccomp OUT.json` builds the hardened one).
    public var seccompProfile: String?

    public enum Network: String, Sendable, Equatable, CaseIterable {
        /// A network namespace with loopback only: vassals serve and subscribe through unix sockets.
        case none
        /// Also a veth with the container's store address (10.0.0.0 | id+2), routed by the node: outbound NAT,
        /// two-sided links (nftables, live), port mappings (DNAT); see `ContainerNetwork`.
        case routed
    }

    /// Each placed container's authorized ssh keys from the store, one file per uid (root-owned, 0644), for sshd's
    /// `AuthorizedKeysFile <dir>/%u` (packaging/ssh/sshd_legion.conf). Outside the homes: a customer cannot add keys
    /// by editing files. Default DATA_DIR/ssh-keys.
    public var sshKeysDir: String = ""
    /// With runc: the distros (`<dir>/<distros.path>`, root filesystems built by `scripts/make-distro`). A container
    /// with a distro runs on it; without one, on the shared template with the host's `/usr`. Default DATA_DIR/distros.
    public var distrosDir: String = ""
    /// With runc: each container also gets a user namespace (uwsgi.it had none). The customer's uid maps to itself (files
    /// in the home keep their owner on the host); every other uid inside, root included, maps to an unprivileged host
    /// range (1 000 000 + …), so even a root inside would be nobody outside. Off by default: nothing runs as root
    /// inside anyway, and with a routed network `/sys` has to be the host's, read-only (runc 1.1 cannot mount a new
    /// sysfs for a network namespace it did not create).
    public var userNamespace: Bool = false
    /// With runc: the containers' network (`ContainerNetwork`).
    public var network: Network = .none
    /// TCP ports of this node that containers may reach (its routers'); set from `[router]` by the runtime.
    public var openPorts: [Int] = []

    public init(containersDir: String, archiveDir: String) {
        self.containersDir = containersDir
        self.archiveDir = archiveDir
    }

    static func parse(_ section: ConfigTable, dataDir: String, baseDir: String) throws(NodeConfigError) -> Self {
        var table = section
        func path(_ text: String) -> String { text.hasPrefix("/") ? text : URL(fileURLWithPath: baseDir).appendingPathComponent(text).standardizedFileURL.path }
        var out = Self(containersDir: dataDir + "/containers", archiveDir: dataDir + "/containers-archive")
        out.bundlesDir = dataDir + "/bundles"
        out.rootfsDir = dataDir + "/rootfs"
        out.imagesDir = dataDir + "/images"
        out.subscribeDir = dataDir + "/subscribe"
        out.sshKeysDir = dataDir + "/ssh-keys"
        out.distrosDir = dataDir + "/distros"
        if let v = try table.string("runtime") {
            guard let r = Runtime(rawValue: v) else {
                throw .invalid(key: "hosting.runtime", problem: "'\(v)' is unknown; use \"process\" (plain processes as the container's uid) or \"runc\" (isolated containers, needs root and runc)")
            }
            out.runtime = r
        }
        if let v = try table.string("bundles_dir") { out.bundlesDir = path(v) }
        if let v = try table.string("rootfs_dir") { out.rootfsDir = path(v) }
        if let v = try table.string("runc") { out.runcBinary = v }
        if let v = try table.string("images_dir") { out.imagesDir = path(v) }
        if let v = try table.string("subscribe_dir") { out.subscribeDir = path(v) }
        if let v = try table.string("ssh_keys_dir") { out.sshKeysDir = path(v) }
        if let v = try table.string("distros_dir") { out.distrosDir = path(v) }
        if let v = try table.bool("home_images") { out.homeImages = v }
        if let v = try table.bool("user_namespace") { out.userNamespace = v }
        if let v = try table.string("seccomp") { out.seccompProfile = path(v) }
        if let v = try table.string("network") {
            guard let n = Network(rawValue: v) else {
                throw .invalid(key: "hosting.network", problem: "'\(v)' is unknown; use \"none\" (loopback only) or \"routed\" (an address per container, NAT, links, port mappings; needs nftables)")
            }
            out.network = n
        }
        if let v = try table.string("containers_dir") { out.containersDir = path(v) }
        if let v = try table.string("archive_dir") { out.archiveDir = path(v) }
        if let v = try table.string("uwsgi") { out.uwsgiBinary = v }
        if let v = try table.string("legion_binary") { out.legionBinary = path(v) }
        if let v = try table.int("log_max_bytes", range: 4096...(1 << 40)) { out.logMaxBytes = v }
        if let v = try table.int("sub_emperor_rescan_ms", range: 100...3_600_000) { out.subEmperorRescanMs = Int64(v) }
        try table.rejectUnknownKeys()
        return out
    }
}
